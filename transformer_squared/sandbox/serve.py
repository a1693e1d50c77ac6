"""The candidate's side of a judged check: run the untrusted program as `__main__`, then answer the judge.

Runs in the candidate's sandbox as `python -I -S -B -X utf8 serve.py SITE_PACKAGES...`, beside `main.py` (the
program) and `wire.py`. Nothing here is trusted: the program shares this process and may replace any of it. All
it can ever do is write bytes on fd 4, and the judge reads those as data only (`wire.decode`), so the worst it
can do is answer wrongly.

Requests (fd 3) and replies (fd 4), one JSON line each:
    {"op": "resolve", "names": [...]} -> {"found": {name: {"value": v} | {"module": "math"}}}
    {"op": "call", "ref": n, "args": [v...], "kwargs": {k: v}} -> {"value": v} | {"raised": [type name, message]}
    {"op": "bool", "ref": n} -> {"value": true | false} | {"raised": [...]}
A value `v` is `wire.encode`d; objects that are not data go out as references (`{"ref": n}`) into `refs`.
"""

import builtins
import os
import sys
import traceback
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.extend(sys.argv[1:])  # site-packages: the host starts us with -S (see host._run_check)
import wire  # noqa: E402  (beside this file, not installed)

REQUESTS, REPLIES = 3, 4


def main() -> None:
    requests = os.fdopen(REQUESTS, "rb")
    replies = os.fdopen(REPLIES, "wb")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    module = types.ModuleType("__main__")  # the program runs as a script would: its own __main__
    module.__file__, module.__builtins__ = path, builtins
    sys.modules["__main__"], sys.argv = module, [path]
    try:
        exec(compile(source, path, "exec"), module.__dict__)
    except BaseException:  # SystemExit included: a program that exits before the tests has no answers
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    serve(module.__dict__, requests, replies)


def serve(namespace: dict, requests, replies) -> None:
    """Answer requests until the judge closes the channel."""
    refs: list = []
    ref_of: dict[int, int] = {}

    def ref(obj) -> int:  # keeps `obj` alive, so its id() stays its own
        n = ref_of.get(id(obj))
        if n is None:
            n = ref_of[id(obj)] = len(refs)
            refs.append(obj)
        return n

    def deref(n: int):
        if not 0 <= n < len(refs):
            raise wire.WireError(f"no object #{n}")
        return refs[n]

    def encoded(value) -> dict:
        try:
            return {"value": wire.encode(value, ref)}
        except (TypeError, ValueError, RecursionError) as e:
            return {"raised": ["TypeError", f"the result cannot be sent to the judge: {e}"]}

    for line in requests:
        message = wire.loads(line)
        if message.get("op") == "resolve":
            found = {}
            for name in message["names"]:
                if name in namespace:
                    value = namespace[name]
                    if isinstance(value, types.ModuleType):
                        found[name] = {"module": value.__name__}
                    else:
                        found[name] = encoded(value)
            reply = {"found": found}
        elif message.get("op") == "bool":
            try:
                reply = {"value": bool(deref(message["ref"]))}
            except Exception as e:
                reply = {"raised": [type(e).__name__, str(e)[:1000]]}
        else:
            fn = deref(message["ref"])
            args = [wire.decode(a, deref) for a in message["args"]]
            kwargs = {k: wire.decode(v, deref) for k, v in message["kwargs"].items()}
            try:
                reply = encoded(fn(*args, **kwargs))
            except Exception as e:  # the judge re-raises it (as the builtin type of that name, if there is one)
                reply = {"raised": [type(e).__name__, str(e)[:1000]]}
        sys.stdout.flush()
        replies.write(wire.dumps(reply))
        replies.flush()


if __name__ == "__main__":
    main()
