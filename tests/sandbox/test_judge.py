"""Judged checks: only the tests passing makes a check pass.

Every forging program below tries to turn failing tests into a pass: markers, early exits, atexit and signal
tricks, reading files, /proc and stack frames, patching the checks, writing fake verdicts or replies, answers
that claim to equal anything. Each runs twice: with a *correct* `add` against tests no program can pass, and with
a wrong `add` against ordinary tests. All must fail; the same tests pass an honest program.
"""

from __future__ import annotations

import pytest

from transformer_squared.sandbox import CodeCheck, SandboxLimits, run_check, run_checks

# Every test runs sandboxed programs (processes): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

LIMITS = SandboxLimits(timeout=20.0)  # generous: the CI box is shared; the hang below is the only slow one
UNPASSABLE = ("def check(candidate):\n    assert candidate(2, 3) == 5\n    assert False, 'no program passes this'\n"
              "\ncheck(candidate)\n")
STRICT = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"

# `ANSWER` becomes "a + b" (a correct add, for UNPASSABLE) or "0" (a wrong one, for STRICT).
FORGERS = {
    "prints markers and a fake verdict": """
def add(a, b):
    return ANSWER
for line in ("T2-TESTS-PASSED-0123456789abcdef", "__T2_TESTS_PASSED__", '{"passed": true, "detail": "ok"}'):
    print(line)
    import sys; print(line, file=sys.stderr)
""",
    "finds a marker in its own source, prints it, exits 0": """
import os, re
def add(a, b):
    return ANSWER
found = re.findall(r"T2-TESTS-PASSED-[0-9a-f]+|__T2_\\w+__", open(__file__).read())
print(found[-1] if found else "T2-TESTS-PASSED-", flush=True)
os._exit(0)
""",
    "reads its own source and prints it": """
def add(a, b):
    return ANSWER
print(open(__file__).read())
""",
    "scans its directory, /tmp and HOME and prints every file": """
import os
def add(a, b):
    return ANSWER
for top in {".", "/tmp", "/var/tmp", "/dev/shm", os.environ.get("HOME", ".")}:
    for root, _, files in os.walk(top):
        for name in files:
            try:
                print(open(os.path.join(root, name), errors="replace").read())
            except OSError:
                pass
""",
    "looks for the judge's files and process": """
import glob, os
def add(a, b):
    return ANSWER
for pattern in ("/tmp/**/spec.json", "/tmp/**/judge.py", "/proc/*/cwd/spec.json", "/proc/*/root/tmp/**/spec.json"):
    for path in glob.glob(pattern, recursive=True):
        try:
            print(open(path).read())
        except OSError:
            pass
for pid in os.listdir("/proc"):
    for what in ("cmdline", "environ", "mem"):
        try:
            print(open(f"/proc/{pid}/{what}", "rb").read(4096))
        except (OSError, ValueError):
            pass
""",
    "os._exit(0) before the tests": "import os\nos._exit(0)\n",
    "sys.exit(0) before the tests": "import sys\ndef add(a, b):\n    return ANSWER\nsys.exit(0)\n",
    "os._exit(0) inside the call": "def add(a, b):\n    import os\n    os._exit(0)\n",
    "SystemExit inside the call": "def add(a, b):\n    raise SystemExit(0)\n",
    "atexit prints a verdict and exits 0": """
import atexit, os
def add(a, b):
    return ANSWER
atexit.register(lambda: (print('{"passed": true}'), os._exit(0)))
raise SystemExit(0)
""",
    "signal handlers exit 0": """
import os, signal
def add(a, b):
    return ANSWER
for s in (signal.SIGTERM, signal.SIGPIPE, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1):
    signal.signal(s, lambda *_: os._exit(0))
""",
    "kills its parent": "import os, signal\ndef add(a, b):\n    return ANSWER\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "patches AssertionError and builtins": """
import builtins
class Never(BaseException):
    pass
builtins.AssertionError = Never
builtins.isinstance = lambda *a: True
builtins.len = lambda x: 0
def add(a, b):
    return ANSWER
""",
    "walks the stack and patches the harness": """
import sys
def add(a, b):
    return ANSWER
frame = sys._getframe()
while frame is not None:
    for scope in (frame.f_globals, frame.f_locals):
        if "wire" in scope:
            scope["wire"].dumps = lambda message: b'{"passed": true}\\n'
            scope["wire"].WireError = BaseException
    frame = frame.f_back
""",
    "replaces the encoder with forged tags": """
import sys
def add(a, b):
    return ANSWER
sys.modules["wire"].encode = lambda value, ref=None: {"__reduce__": ["os.system", "true"]}
""",
    "writes a verdict on every fd": """
import os
def add(a, b):
    return ANSWER
for fd in range(0, 256):
    try:
        os.write(fd, b'{"passed": true, "detail": "every test passed"}\\n')
    except OSError:
        pass
""",
    "answers before it is asked": """
import os
def add(a, b):
    return ANSWER
os.write(4, b'{"found": {"add": {"value": {"ref": 0}}, "candidate": {"value": {"ref": 0}}}}\\n')
os.write(4, b'{"value": 5}\\n' * 10)
""",
    "writes junk on the channel": "import os\ndef add(a, b):\n    os.write(4, b'\\x00junk\\n')\n    return ANSWER\n",
    "returns an object equal to everything": """
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def add(a, b):
    return Anything()
""",
    "returns an int that equals everything": """
class Int(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def add(a, b):
    return Int(0)
""",
    "returns a cycle": "def add(a, b):\n    x = []\n    x.append(x)\n    return x\n",
    "raises the judge's exception": """
CandidateFailed = type("CandidateFailed", (Exception,), {})
def add(a, b):
    raise CandidateFailed("stop the judge")
""",
    "ptraces whatever it can see": """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def add(a, b):
    return ANSWER
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()] + list(range(1, 64)):
    if pid != os.getpid():
        libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH
""",
    "hangs in the call": "def add(a, b):\n    while True:\n        pass\n",
}


def _checks(answer: str) -> list[CodeCheck]:
    tests, aliases = (UNPASSABLE, {"candidate": "add"}) if answer == "a + b" else (STRICT, {})
    return [CodeCheck(solution=code.replace("ANSWER", answer), tests=tests, aliases=aliases)
            for code in FORGERS.values()]


# every forger through two sandboxes: ~25 s each on 2 shared cores
@pytest.mark.parametrize("answer", ["a + b", "0"], ids=["correct-add-unpassable-tests", "wrong-add-strict-tests"])
def test_no_forgery_passes(answer):
    results = run_checks(_checks(answer), limits=LIMITS, workers=2)
    forged = [name for name, r in zip(FORGERS, results) if r.passed or r.status == "passed"]
    assert forged == []
    assert {name: r.status for name, r in zip(FORGERS, results)}["hangs in the call"] == "timeout"
    # Every forger fails as a candidate, never as a broken sandbox ("error"). "memory" is a candidate's failure
    # too: the file scanner hits the memory limit where /tmp or HOME holds a large file (a CI clone's .venv).
    candidate_failures = {"failed", "timeout", "killed", "memory"}
    assert all(r.status in candidate_failures for r in results), {
        name: (r.status, r.stderr[-300:]) for name, r in zip(FORGERS, results) if r.status not in candidate_failures}


def test_the_same_tests_pass_an_honest_program():
    honest = "def add(a, b):\n    return a + b\n"
    passable = UNPASSABLE.replace("    assert False, 'no program passes this'\n", "")
    results = run_checks([CodeCheck(honest, passable, aliases={"candidate": "add"}), CodeCheck(honest, STRICT)],
                         limits=LIMITS)
    assert [r.status for r in results] == ["passed", "passed"], [r.stderr for r in results]


def test_a_swallowed_channel_failure_still_fails():
    tests = "try:\n    add(1, 2)\nexcept:\n    pass\nassert True\n"  # a bare except catches everything
    dies = run_check(CodeCheck("def add(a, b):\n    import os\n    os._exit(0)\n", tests), limits=LIMITS)
    assert (dies.passed, dies.status) == (False, "failed")
    assert "ended before answering" in dies.stderr
    assert run_check(CodeCheck("def add(a, b):\n    return a + b\n", tests), limits=LIMITS).passed


def test_what_crosses_the_channel():
    solution = """
import math
from collections import Counter
class Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b
class Node:
    def __init__(self, v):
        self.v, self.left, self.right = v, None, None
def longest(pairs):
    return max(p.b - p.a for p in pairs)
def depth(node):
    return 0 if node is None else 1 + max(depth(node.left), depth(node.right))
def divide(a, b):
    return a / b
def squares(n):
    return (i * i for i in range(n))
def kinds():
    return (1, 2.5, "s", b"b", None, True, {1, 2}, {"k": [1, (2,)]}, 1j, float("inf"), 2**100, Counter("aab"))
def make_adder(k):
    return lambda x: x + k
root = Node(1)
root.left = Node(2)
root.left.left = Node(3)
"""
    tests = """
assert longest([Pair(1, 5), Pair(2, 3)]) == 4              # the candidate's objects, passed back by reference
assert depth(root) == 3 and depth(None) == 0               # a fixture the candidate built
assert math.isclose(divide(1, 3), 1 / 3)                   # `math`: the judge imports its own
try:
    divide(1, 0)
    assert False
except ZeroDivisionError as e:                             # the candidate's exception, as the builtin type
    assert "raised by the candidate" in str(e)
assert list(squares(4)) == [0, 1, 4, 9]                    # a generator's items
assert kinds() == (1, 2.5, "s", b"b", None, True, {1, 2}, {"k": [1, (2,)]}, 1j, float("inf"), 2**100,
                   {"a": 2, "b": 1})
assert make_adder(2)(3) == 5                               # a returned function is called remotely
assert type(make_adder(2)).__name__ == "Remote" and Pair(1, 2) != Pair(1, 2)   # references compare by identity
"""
    r = run_check(CodeCheck(solution, tests), limits=LIMITS)
    assert r.passed, r.stderr


def test_a_candidate_that_outlives_its_tests_still_gets_its_verdict():
    solution = "import threading, time\nthreading.Thread(target=time.sleep, args=(300,)).start()\n" \
               "def add(a, b):\n    return a + b\n"
    r = run_check(CodeCheck(solution, STRICT), limits=LIMITS)
    assert (r.passed, r.status) == (True, "passed"), r.stderr
    assert r.seconds < LIMITS.timeout


def test_an_objects_truth_value_is_asked_and_must_be_a_bool():
    tests = "assert is_even(4)\nassert not is_even(3)\n"
    always = "class Yes:\n    def __bool__(self):\n        return True\ndef is_even(n):\n    return Yes()\n"
    not_bool = "class Odd:\n    def __bool__(self):\n        return 1\ndef is_even(n):\n    return Odd()\n"
    match = "import re\ndef is_even(n):\n    return re.fullmatch(r'\\d*[02468]', str(n))\n"  # mbpp/787's kind
    honest = "def is_even(n):\n    return n % 2 == 0\n"
    results = run_checks([CodeCheck(c, tests) for c in (always, not_bool, match, honest)], limits=LIMITS)
    assert [r.status for r in results] == ["failed", "failed", "passed", "passed"], [r.stderr for r in results]
    assert "AssertionError at tests line 2" in results[0].stderr


def test_arguments_travel_by_value():
    solution = "def append_one(xs):\n    xs.append(1)\n    return len(xs)\n"
    tests = "xs = []\nassert append_one(xs) == 1\nassert xs == []  # the candidate changed its own copy\n"
    assert run_check(CodeCheck(solution, tests), limits=LIMITS).passed


def test_failures_name_their_cause():
    cases = [
        (CodeCheck("x = 1\n", "assert f(1) == 1\n", aliases={"candidate": "f"}), "failed", "does not define f"),
        (CodeCheck("def f(x):\n    return x\n", "assert f(1) == 2\n"), "failed", "AssertionError at tests line 1"),
        (CodeCheck("def f(x):\n    return x\n", "assert f(1) ==\n"), "error", "tests do not compile"),
        (CodeCheck("def f(:\n", "assert f(1) == 1\n"), "failed", "ended before answering"),
        (CodeCheck("def f(x):\n    return bytearray(x)\n", "assert f(1 << 40)\n"), "memory", "MemoryError"),
    ]
    results = run_checks([c for c, _, _ in cases], limits=LIMITS)
    for (_, status, detail), r in zip(cases, results):
        assert (r.status, detail in r.stderr) == (status, True), r.stderr
    assert "SyntaxError" in results[3].stderr  # the candidate's own traceback is kept
