"""MBPP and HumanEval: the judged checks they build, verified by running reference solutions through the sandbox.

HumanEval: all 164 canonical solutions must pass. MBPP: a fixed subset (every task with challenge tests or setup
code, plus every 10th task id) runs here; set T2_FULL_CODE_CHECK=1 to run all 974 + 427 (on the 2-core machine
here under a load average of 13: ~12 minutes for the 974; every one passed when this was written).
"""

import os
import textwrap

import pytest

from transformer_squared.tasks import get_task, score_many
from transformer_squared.tasks.code import SYSTEM
from transformer_squared.tasks.humaneval import as_body

FULL = os.environ.get("T2_FULL_CODE_CHECK") == "1"
TIMEOUT = 30.0  # generous: reference solutions must not fail because the test machine is busy


def _all(task, data):
    return [ex for split in task.splits for ex in task.load(split, data)]


def test_mbpp_split_sizes_and_ids(shared_data):
    full, sanitized = get_task("mbpp"), get_task("mbpp-sanitized")
    assert {s: len(full.load(s, shared_data)) for s in full.splits} == \
        {"train": 374, "valid": 90, "test": 500, "prompt": 10}
    assert {s: len(sanitized.load(s, shared_data)) for s in sanitized.splits} == \
        {"train": 120, "valid": 43, "test": 257, "prompt": 7}
    test = full.load("test", shared_data)
    assert test[0].id == "mbpp/11" and test[-1].id == "mbpp/510"
    assert full.domain == "code" and full.max_new_tokens == 512


def test_mbpp_prompt_is_the_papers(shared_data):
    task = get_task("mbpp")
    ex = task.load("test", shared_data)[0]
    system, user = task.messages(ex)
    assert system == {"role": "system", "content": SYSTEM}
    assert user["content"] == (f"{ex.prompt.strip()} Your code should satisfy the following assertion:\n"
                               f"```python\n{ex.tests[0]}\n```")
    assert task.response_prefix(ex) == "```python\n"


def test_mbpp_counts_challenge_tests(shared_data):
    ex = next(e for e in get_task("mbpp").load("test", shared_data) if e.id == "mbpp/11")
    assert len(ex.tests) == 5     # 3 base + 2 challenge asserts (the reference code ran only base tests)


@pytest.mark.slow  # every reference solution through two sandboxes: 20-30 s per task on 2 shared cores
@pytest.mark.parametrize("name", ["mbpp", "mbpp-sanitized"])
def test_mbpp_reference_solutions_pass(shared_data, name):
    task = get_task(name, timeout=TIMEOUT)
    examples = _all(task, shared_data)
    if not FULL:
        examples = [ex for ex in examples if ex.meta["task_id"] % 10 == 0 or ex.meta["setup"].strip()
                    or len(ex.tests) > 3]
    verdicts = score_many(task, examples, [task.sft_target(ex) for ex in examples], workers=2)
    failed = [(ex.id, v.detail) for ex, v in zip(examples, verdicts) if not v.correct]
    assert not failed


def test_checks_keep_the_tests_away_from_the_candidate(shared_data):
    mbpp = get_task("mbpp")
    ex = next(e for e in mbpp.load("test", shared_data) if e.id == "mbpp/367")  # setup code builds a tree
    check = mbpp.check(ex, "def is_tree_balanced(root):\n    return True\n")
    assert "root = Node(1)" in check.solution and not any(test in check.solution for test in ex.tests)
    assert check.tests == "\n".join(ex.tests) and check.aliases == {"is_tree_balanced": "is_tree_balanced"}
    humaneval = get_task("humaneval")
    hx = humaneval.load("test", shared_data)[0]
    check = humaneval.check(hx, "    return True\n")
    assert check.solution.startswith(hx.prompt) and hx.tests[0] not in check.solution
    assert check.judge_setup == hx.prompt and check.tests.endswith("check(candidate)\n")
    assert check.aliases == {"candidate": "has_close_elements", "has_close_elements": "has_close_elements"}


@pytest.mark.slow  # sandboxed programs (processes)
def test_mbpp_wrong_and_cheating_solutions_fail(shared_data):
    task = get_task("mbpp")
    examples = task.load("test", shared_data)[:2]
    ex = examples[0]
    outputs = [
        task.sft_target(examples[1]),                               # another task's solution
        "```python\ndef broken(:\n```",                             # syntax error
        "```python\nimport os\nos._exit(0)\n```",                   # exit 0 before the tests run
        "```python\nimport sys\nsys.exit(0)\n```",
        "```python\nwhile True:\n    pass\n```",                    # never returns
    ]
    fast = get_task("mbpp", timeout=2.0)
    verdicts = fast.score_many([ex] * len(outputs), outputs, workers=2)
    assert [v.correct for v in verdicts] == [False] * len(outputs)
    assert verdicts[-1].detail.startswith("timeout")
    assert task.score(ex, task.sft_target(ex)).correct


@pytest.mark.slow  # all 164 canonical solutions through two sandboxes each: ~35 s
def test_humaneval_all_canonical_solutions_pass(shared_data):
    task = get_task("humaneval", timeout=TIMEOUT)
    examples = task.load("test", shared_data)
    assert len(examples) == 164 and examples[0].id == "HumanEval/0"
    verdicts = score_many(task, examples, [task.sft_target(ex) for ex in examples], workers=2)
    assert [ex.id for ex, v in zip(examples, verdicts) if not v.correct] == []


@pytest.mark.slow  # sandboxed programs (processes)
def test_humaneval_reply_forms(shared_data):
    task = get_task("humaneval", timeout=TIMEOUT)
    examples = task.load("test", shared_data)
    ex = examples[0]                                   # has_close_elements: needs `List` from the prompt's import
    body = ex.solution[len("```python\n" + ex.prompt):-len("```")]   # the canonical body
    signature_and_body = ex.prompt[ex.prompt.index("def "):] + body    # no import line: the prompt supplies it
    prefix = task.response_prefix(ex)
    outputs = [
        f"Here you go:\n```python\n{signature_and_body}```\nIt compares all pairs.",   # full function, fenced
        body,                                                                          # body only, unfenced
        textwrap.dedent(body),                                                         # body, flush left
        prefix + "\n" + body + "```",                                                  # prefill + continuation
        "\n" + body + "```\nThis works because...",                                    # continuation alone
        "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```",  # wrong
        "```python\nimport os\nos._exit(0)\n```",                                      # cheat
    ]
    verdicts = task.score_many([ex] * len(outputs), outputs, workers=2)
    assert [v.correct for v in verdicts] == [True, True, True, True, True, False, False]
    # a helper function defined in the prompt is available to a full-function reply
    ex10 = next(e for e in examples if e.id == "HumanEval/10")
    assert "def is_palindrome" in ex10.prompt
    assert task.score(ex10, task.sft_target(ex10)).correct


def test_humaneval_prompt(shared_data):
    task = get_task("humaneval")
    ex = task.load("test", shared_data)[0]
    system, user = task.messages(ex)
    assert system["content"] == SYSTEM
    assert user["content"] == f"Write a solution to the following problem:\n```python\n{ex.prompt.strip()}\n```"


def test_as_body_indents_flush_left_code():
    assert as_body("x = 1\nreturn x") == "    x = 1\n    return x"
    assert as_body("    return 1") == "    return 1"
