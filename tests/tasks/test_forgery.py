"""Code tasks end to end: a reply that forges a pass fails, even against tests that assert False; the reference
solution passes the real tests. (The full catalogue of forging programs is in tests/sandbox/test_judge.py.)"""

from __future__ import annotations

import dataclasses

import pytest

from transformer_squared.tasks import get_task

# Every test runs sandboxed programs (processes): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

# Each reply carries a correct solution *and* a trick; against tests that assert False only a trick could pass.
TRICKS = [
    "import os, re\nprint(re.findall(r'T2-TESTS-PASSED-[0-9a-f]+', open(__file__).read())[-1:], flush=True)\n"
    "os._exit(0)\n",
    "import atexit, os\natexit.register(lambda: os._exit(0))\nprint('{\"passed\": true}')\nraise SystemExit(0)\n",
    "import builtins\nbuiltins.AssertionError = type('Never', (BaseException,), {})\n",
    "import os\nfor fd in range(256):\n    try:\n        os.write(fd, b'{\"passed\": true, \"detail\": \"\"}\\n')\n"
    "    except OSError:\n        pass\n",
]


def test_humaneval_tests_that_assert_false_are_never_passed(shared_data):
    task = get_task("humaneval", timeout=30)
    ex = task.load("test", shared_data)[0]
    never = dataclasses.replace(ex, tests=("def check(candidate):\n    candidate([1.0], 0.5)\n    assert False\n",))
    solution = task.sft_target(ex).removesuffix("```")
    replies = [f"{solution}\n{trick}```" for trick in TRICKS]
    verdicts = task.score_many([never] * len(replies), replies, workers=2)
    assert [v.correct for v in verdicts] == [False] * len(replies), [v.detail for v in verdicts]
    assert task.score(ex, task.sft_target(ex)).correct  # the real tests pass the same solution


def test_mbpp_tricks_with_a_wrong_solution_fail(shared_data):
    task = get_task("mbpp", timeout=30)
    ex = next(e for e in task.load("test", shared_data) if e.id == "mbpp/11")
    wrong = "def remove_Occ(s, ch):\n    return s\n"
    replies = [f"```python\n{wrong}{trick}```" for trick in TRICKS]
    verdicts = task.score_many([ex] * len(replies), replies, workers=2)
    assert [v.correct for v in verdicts] == [False] * len(replies), [v.detail for v in verdicts]
    assert task.score(ex, task.sft_target(ex)).correct
