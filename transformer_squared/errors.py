"""User-facing errors.

A `T2Error` is something the user can fix (bad path, wrong expert for a model, malformed data, bad request).
The CLI prints its message on one line, without a traceback, and exits with status 2. Library code raises it
with a message that says what is wrong *and* what to do.
"""


class T2Error(Exception):
    """An error the user caused and can fix; its message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
