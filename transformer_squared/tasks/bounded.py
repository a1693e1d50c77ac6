"""Hard time bounds for calls that may hang (sympy simplification), on the main thread or off it.

On the main thread, with no other interval timer or SIGALRM handler in place, an ITIMER_REAL alarm interrupts the
call (sympy is pure Python, so the handler runs between bytecodes). Anywhere else (a server thread, a rollout
worker, a test runner that owns SIGALRM) the call runs in a persistent helper process that is killed and restarted
when it overruns. The helper is a fresh `python -c ...` (not fork, which is unsafe in threaded processes; not
multiprocessing's spawn, which re-runs the caller's `__main__` script), started on first use.

Functions run in the helper must be importable module-level functions with picklable arguments and results.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
from typing import Any, Callable


class CallTimeout(Exception):
    """The bounded call ran past its time limit and was interrupted."""


def call_with_timeout(fn: Callable[..., Any], args: tuple = (), seconds: float = 2.0, *, isolate: bool = False) -> Any:
    """`fn(*args)`, interrupted after `seconds` with `CallTimeout`. Exceptions from `fn` propagate.

    `isolate=True` always uses the helper process: for work that may sit in C code no signal interrupts.
    """
    if not isolate and _can_use_alarm():
        return _with_alarm(fn, args, seconds)
    return _HELPER.call(fn, args, seconds)


def _can_use_alarm() -> bool:
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return False
    # Someone else owns the alarm (pytest-timeout, a caller's own timer): do not clobber it.
    return signal.getitimer(signal.ITIMER_REAL)[0] == 0 and signal.getsignal(signal.SIGALRM) in (
        signal.SIG_DFL, signal.SIG_IGN, None)


def _with_alarm(fn, args, seconds):
    def _raise(signum, frame):
        raise CallTimeout(f"{getattr(fn, '__name__', 'call')} ran past {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the helper process: length-prefixed pickles over its stdin/stdout

def _write(stream, obj) -> None:
    data = pickle.dumps(obj)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _read(stream):
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError
    (n,) = struct.unpack("<Q", header)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def _serve_stdio() -> None:
    """Helper main loop: answer each (fn, args) with ("ok", value) or ("err", exception)."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints from user functions must not corrupt the protocol
    inp = sys.stdin.buffer
    while True:
        try:
            fn, args = _read(inp)
        except EOFError:
            return
        try:
            reply = ("ok", fn(*args))
        except Exception as e:
            reply = ("err", e)
        try:
            _write(out, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            _write(out, ("err", RuntimeError(f"unpicklable result: {e}")))


def _warm_up() -> bool:
    # The helper exists mostly for the MATH grader (math-verify on sympy): pay its import before any timed call.
    import math_verify  # noqa: F401
    import sympy  # noqa: F401

    return True


class _Helper:
    """One helper process shared by all threads; calls are serialised by a lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _start(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from transformer_squared.tasks.bounded import _serve_stdio; _serve_stdio()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self._exchange(_warm_up, (), 120.0)

    def _exchange(self, fn, args, seconds):
        proc = self._proc
        try:
            _write(proc.stdin, (fn, args))
            ready, _, _ = select.select([proc.stdout], [], [], seconds)
            if not ready:
                self.close()  # the only way to stop a runaway call; the next call starts a fresh helper
                raise CallTimeout(f"{getattr(fn, '__name__', 'call')} ran past {seconds:g} s")
            return _read(proc.stdout)
        except (EOFError, BrokenPipeError, OSError) as e:
            self.close()
            raise RuntimeError(f"time-bound helper process died ({type(e).__name__})") from None

    def call(self, fn, args, seconds):
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            status, value = self._exchange(fn, args, seconds)
        if status == "err":
            raise value
        return value

    def close(self):
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass


_HELPER = _Helper()
atexit.register(_HELPER.close)
