"""The judge of a judged check: runs the task's trusted tests against a candidate it reaches only through data.

Runs in its own sandbox as `python -I -S -B -X utf8 judge.py SITE_PACKAGES...`, beside `spec.json` ({"setup",
"tests", "aliases"}) and `wire.py`. Channel: replies from the candidate on fd 3, requests to it on fd 4; the
verdict, one JSON line {"passed", "detail", "error"?, "candidate_error"?}, on fd 5, which only this process holds.

The tests run here, in a namespace of their own: `setup` (trusted: imports, a HumanEval prompt's helpers), then
every name the tests need that is neither theirs nor a builtin, fetched from the candidate's globals: data by
value, a standard-library module by importing it here, anything else as a `Remote` that can only be called
(a request to the candidate) or passed back. So the asserts compare plain data with builtin operations: no
candidate object, method or code is ever evaluated in this process.

A broken channel (the candidate exited, crashed, hung up, sent something that is not data) raises
`CandidateFailed`, a BaseException that a test's `except Exception` cannot swallow, and is remembered: once
broken, the check has failed whatever the tests do afterwards.
"""

import ast
import builtins
import importlib
import json
import linecache
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.extend(sys.argv[1:])  # site-packages: the host starts us with -S (see host._run_check)
import wire  # noqa: E402  (beside this file, not installed)

FROM_CANDIDATE, TO_CANDIDATE, VERDICT = 3, 4, 5
TESTS_FILE = "<tests>"


class CandidateFailed(BaseException):
    """The candidate broke the channel: no answer, a malformed answer, or one that is not data."""


class Channel:
    """Requests to the candidate and its replies; the first failure is kept in `broken`."""

    def __init__(self):
        self.replies = os.fdopen(FROM_CANDIDATE, "rb")
        self.broken: str | None = None
        self.candidate_error: str | None = None  # the last exception type the candidate raised
        self._remotes: dict[int, Remote] = {}

    def fail(self, why: str):
        if self.broken is None:
            self.broken = why
        raise CandidateFailed(self.broken)

    def ask(self, message: dict) -> dict:
        if self.broken is not None:
            raise CandidateFailed(self.broken)
        data = wire.dumps(message)
        try:
            while data:
                data = data[os.write(TO_CANDIDATE, data):]
            line = self.replies.readline(wire.MAX_MESSAGE + 1)
        except OSError as e:  # EPIPE: its end of the channel is closed, it has exited or closed it
            self.fail(f"the candidate program ended before answering ({e.strerror or e})")
        if not line.endswith(b"\n"):
            self.fail("the candidate program ended before answering" if not line else
                      "the candidate's answer was cut off or too long")
        try:
            return wire.loads(line)
        except wire.WireError as e:
            self.fail(f"the candidate answered something that is not a message: {e}")

    def remote(self, n: int) -> "Remote":
        if n not in self._remotes:
            self._remotes[n] = Remote(self, n)
        return self._remotes[n]

    def value(self, reply: dict):
        """The value in a reply, or the exception it reports, raised here."""
        if set(reply) == {"value"}:
            try:
                return wire.decode(reply["value"], self.remote)
            except wire.WireError as e:
                self.fail(f"the candidate answered with something that is not data: {e}")
        raised = reply.get("raised")
        if set(reply) == {"raised"} and isinstance(raised, list) and len(raised) == 2 \
                and all(isinstance(x, str) for x in raised):
            name, message = raised
            self.candidate_error = name
            raise _exception_type(name)(f"{message} ({name} raised by the candidate)")
        self.fail(f"the candidate answered a malformed reply: {str(reply)[:200]}")


class Remote:
    """One of the candidate's objects: calling it asks the candidate; nothing else about it is reachable."""

    __slots__ = ("_channel", "_ref")

    def __init__(self, channel: Channel, ref: int):
        self._channel, self._ref = channel, ref

    def __call__(self, *args, **kwargs):
        def ref(obj) -> int:
            if type(obj) is Remote:
                return obj._ref
            raise TypeError(f"a {type(obj).__name__} object is not data and cannot be passed to the candidate")

        message = {"op": "call", "ref": self._ref, "args": [wire.encode(a, ref) for a in args],
                   "kwargs": {str(k): wire.encode(v, ref) for k, v in kwargs.items()}}
        return self._channel.value(self._channel.ask(message))

    def __bool__(self) -> bool:
        # `assert text_match(s)` over a regex match object (mbpp/787) asks the object's truth value. The candidate
        # computes it, but the answer must be a real bool: that gives the candidate no power a plain `return True`
        # lacks, and what the test checks is exactly this truth value.
        value = self._channel.value(self._channel.ask({"op": "bool", "ref": self._ref}))
        if type(value) is not bool:
            self._channel.fail(f"the candidate answered a truth value that is not a bool: {str(value)[:100]}")
        return value

    def __repr__(self) -> str:
        return f"<candidate object #{self._ref}>"


def _exception_type(name: str) -> type:
    """The builtin exception of that name (so a test's `except ValueError` works), else RuntimeError."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return RuntimeError


def free_names(tree: ast.AST) -> set[str]:
    """Names the tests read but never bind anywhere (assignments, defs, imports, parameters): the candidate's."""
    loads, binds = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else binds).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            binds.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            binds.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            binds.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            binds.add(node.name)
    return loads - binds


def bind_candidate_names(channel: Channel, namespace: dict, tree: ast.AST, aliases: dict) -> str | None:
    """Fetch what the tests need from the candidate into `namespace`; returns a failure message or None."""
    free = free_names(tree) - set(namespace) - set(dir(builtins))
    wanted = sorted(free | set(aliases.values()))
    reply = channel.ask({"op": "resolve", "names": wanted})
    found = reply.get("found")
    if set(reply) != {"found"} or not isinstance(found, dict):
        channel.fail(f"the candidate answered a malformed reply: {str(reply)[:200]}")
    values = {}
    for name in wanted:
        entry = found.get(name)
        if entry is None:
            continue
        if isinstance(entry, dict) and set(entry) == {"module"}:
            # Only a standard-library module of that very name, imported here: the tests get the real one.
            if entry["module"] == name and name in sys.stdlib_module_names:
                values[name] = importlib.import_module(name)
            continue
        if not isinstance(entry, dict):
            channel.fail(f"the candidate answered a malformed reply: {str(entry)[:200]}")
        values[name] = channel.value(entry)
    for judge_name, candidate_name in aliases.items():
        if candidate_name not in values:
            return f"the program does not define {candidate_name}"
        namespace[judge_name] = values[candidate_name]
    namespace.update({name: value for name, value in values.items() if name in free})
    return None


def _where(exc: BaseException) -> str:
    """" at tests line N: <source>" for the innermost frame of the tests that the exception went through."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == TESTS_FILE]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at tests line {frame.lineno}" + (f": {frame.line.strip()[:300]}" if frame.line else "")


def judge(spec: dict, channel: Channel) -> dict:
    """Run the tests; the verdict as a dict."""
    try:
        setup = compile(spec["setup"], "<judge setup>", "exec")
        tree = ast.parse(spec["tests"], TESTS_FILE)
        tests = compile(tree, TESTS_FILE, "exec")
    except SyntaxError as e:
        return {"passed": False, "error": True, "detail": f"the task's tests do not compile: {e}"}
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(setup, namespace)
    except Exception as e:
        return {"passed": False, "error": True, "detail": f"the task's setup failed: {type(e).__name__}: {e}"}
    try:
        missing = bind_candidate_names(channel, namespace, tree, spec["aliases"])
        if missing:
            return {"passed": False, "detail": missing}
        # Line numbers in tracebacks point into the tests: register their text for `traceback`.
        linecache.cache[TESTS_FILE] = (len(spec["tests"]), None, spec["tests"].splitlines(True), TESTS_FILE)
        exec(tests, namespace)
    except CandidateFailed as e:
        return {"passed": False, "detail": str(e)}
    except BaseException as e:  # an assert that failed, an exception the candidate raised, a SystemExit ...
        traceback.print_exc()
        if channel.broken is not None:
            return {"passed": False, "detail": channel.broken}
        message = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return {"passed": False, "detail": f"{type(e).__name__}{_where(e)}" + (f" ({message})" if message else "")}
    if channel.broken is not None:  # a test swallowed the failure with a bare except
        return {"passed": False, "detail": channel.broken}
    return {"passed": True, "detail": "every test passed"}


def main() -> None:
    import ctypes

    # Not dumpable: no process of the same uid may ptrace this one or open its /proc files (memory, fds). It
    # matters only where the sandbox could not give the candidate another uid and pid namespace.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "spec.json"), encoding="utf-8") as f:
        spec = json.load(f)
    channel = Channel()
    try:
        verdict = judge(spec, channel)
    except MemoryError:
        verdict = {"passed": False, "detail": "the judge ran out of memory on the candidate's answers"}
    verdict["candidate_error"] = channel.candidate_error
    os.close(TO_CANDIDATE)  # the candidate sees EOF and exits
    data = json.dumps(verdict).encode() + b"\n"
    while data:
        data = data[os.write(VERDICT, data):]
    sys.stdout.flush()
    os._exit(0)  # no interpreter shutdown: nothing the tests left behind (threads, atexit, __del__) runs after


if __name__ == "__main__":
    main()
