"""Code extraction from chat replies (tasks/code_extraction.py): the forms models write, issue #13 item 5's cases,
and the replies as scored end to end through HumanEval and MBPP in the sandbox."""

import textwrap

import pytest

from transformer_squared.tasks.base import Example
from transformer_squared.tasks.code_extraction import defines, extract_code
from transformer_squared.tasks.humaneval import HumanEval
from transformer_squared.tasks.mbpp import MBPP

# A HumanEval-shaped problem whose right body starts with guard lines, not an assignment.
PROMPT = 'def intersperse(numbers, delimiter):\n    """Insert `delimiter` between consecutive elements."""\n'
BODY = ("if not numbers:\n"
        "    return []\n"
        "result = []\n"
        "for n in numbers[:-1]:\n"
        "    result.extend([n, delimiter])\n"
        "result.append(numbers[-1])\n"
        "return result")
CHECK = ("def check(candidate):\n"
         "    assert candidate([], 7) == []\n"
         "    assert candidate([5, 6, 3, 2], 8) == [5, 8, 6, 8, 3, 8, 2]\n")
HUMANEVAL = Example(id="HumanEval/x", prompt=PROMPT, tests=(CHECK,), meta={"entry_point": "intersperse"})
MAIN_READING_STDIN = 'if __name__ == "__main__":\n    n = int(input())\n    print(add(n, n))\n'


# ------------------------------------------------------------------------------------ today's behaviour kept


def test_prefers_block_defining_entry_point():
    text = ("Here is an example:\n```python\nprint(add(1, 2))\n```\nand the solution:\n"
            "```python\ndef add(a, b):\n    return a + b\n```\n")
    assert extract_code(text, "add") == "def add(a, b):\n    return a + b"
    assert extract_code(text) == "print(add(1, 2))"     # without an entry point: the first Python block


def test_forms():
    assert extract_code("```py\nx = 1\n```") == "x = 1"
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"   # cut off, unclosed
    # a prefilled reply ("```python" was in the prompt) ends at its first, untagged fence
    assert extract_code("    return a + b\n```\n\nThis adds.\n```python\nprint(1)\n```") == "    return a + b"
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1"
    # unfenced prose before the code is dropped when the whole text does not parse
    assert extract_code("Sure! Here it is:\ndef f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("```text\nhello\n```") == "hello"                      # no Python block: the first block
    assert extract_code("```js\nlet x\n```\n```python\nx = 1\n```") == "x = 1"   # a Python block over others


def test_closed_block_with_syntax_error_is_taken_as_written():
    # The model's own error must fail in the sandbox, not be repaired into something else.
    assert extract_code("```python\ndef f(:\n    return 1\n```") == "def f(:\n    return 1"


def test_text_without_code_is_returned_as_is():
    assert extract_code("I cannot help with that.") == "I cannot help with that."
    prose = "\n".join(f"Line {i} of an explanation, with words: and (parens)." for i in range(300))
    assert extract_code(prose) == prose


# ------------------------------------------------------------------------------------ issue #13 item 5


def test_flush_left_body_keeps_its_guard_lines():
    # Before: the lines before the first assignment were dropped, so `intersperse([], 7)` crashed.
    assert extract_code(BODY, "intersperse") == BODY
    assert extract_code(textwrap.indent(BODY, "    "), "intersperse") == textwrap.indent(BODY, "    ")
    # ...and with prose around it, the prose goes and the guard lines stay
    reply = f"Here is the body:\n{BODY}\nThis handles the empty list first."
    assert extract_code(reply, "intersperse") == BODY


def test_prose_then_untagged_fence_never_closed():
    # A truncated reply: before, the prose before the fence was taken as the program.
    code = "def f(x):\n    return x + 1"
    assert extract_code(f"Here is the solution:\n```\n{code}", "f") == code
    assert extract_code(f"Sure:\n```\n{code}\n```\nUsage:\n```\nprint(f(1))", "f") == code
    # cut mid-line after a finished function: the unfinished demo line is dropped
    assert extract_code(f"Here it is:\n```\n{code}\n\nprint(f(", "f") == code


def test_entry_point_defined_by_assignment():
    reply = "Example:\n```python\nprint(f(1))\n```\nSolution:\n```python\nf = lambda x: x + 1\n```"
    assert extract_code(reply, "f") == "f = lambda x: x + 1"
    assert defines("f = lambda x: x + 1", "f")
    assert defines("f: Callable = lambda x: x", "f")
    assert defines("import math\n\nasync def f(x):\n    return x", "f")
    assert defines("class f:\n    pass", "f")
    assert not defines("f == g", "f")
    assert not defines("def g(x):\n    f = 1\n    return f", "f")   # a local, not a definition
    assert not defines("ff = lambda x: x", "f")


@pytest.mark.parametrize("guard", [
    'if __name__ == "__main__":',
    "if __name__ == '__main__':",
    "if '__main__' == __name__:",
    'if (__name__ == "__main__"):',
])
def test_main_block_is_dropped(guard):
    solution = "def add(a, b):\n    return a + b"
    reply = f"```python\n{solution}\n\n{guard}\n    n = int(input())\n\n    print(add(n, n))\nelse:\n    pass\n```"
    assert extract_code(reply, "add") == solution
    # code after the block stays; a block cut off by the token budget goes too
    assert extract_code(f"{solution}\n\n{guard}\n    main()\n\nX = 1\n") == f"{solution}\n\nX = 1"
    assert extract_code(f"```python\n{solution}\n\n{guard}\n    print(add(int(input()), ", "add") == solution
    assert extract_code(f'{solution}\n\n{guard} print(add(1, 2))') == solution        # one-line form


def test_main_guard_inside_a_function_is_kept():
    code = 'def f():\n    if __name__ == "__main__":\n        return 1\n    return 2'
    assert extract_code(code) == code


def test_bare_words_are_not_code():
    # "Sure" compiles (a name); taken as code it would raise NameError before the tests
    assert extract_code("Sure\n\ndef f():\n    return 1\n\nDone", "f") == "def f():\n    return 1"
    assert extract_code("Solution\n```\ndef f():\n    return 1\n```", "f") == "def f():\n    return 1"
    assert extract_code("```python\ndef f():\n    pass\n```") == "def f():\n    pass"   # keywords are code


def test_invalid_escapes_in_replies_warn_nothing(recwarn):
    extract_code('Here:\nx = "\\d"\ny = 1')
    assert not [w for w in recwarn if issubclass(w.category, (SyntaxWarning, DeprecationWarning))]


# ------------------------------------------------------------------------------------ scored end to end


@pytest.mark.slow  # sandboxed programs (processes)
def test_humaneval_scores_the_issue_cases():
    task = HumanEval(timeout=20.0)
    replies = [
        BODY,                                                           # body, flush left
        f"Here is the body:\n{BODY}\nIt handles [] first.",             # ...between prose
        f"Here is the solution:\n```\n{PROMPT}{textwrap.indent(BODY, '    ')}",   # untagged fence, never closed
        ("```python\nintersperse = lambda numbers, delimiter: "        # entry point as an assignment
         "[x for n in numbers for x in (n, delimiter)][:-1]\n```"),
        # a program with a main block that reads stdin (stdin is empty in the sandbox: input() would raise)
        f"```python\n{PROMPT}{textwrap.indent(BODY, '    ')}\n\n"
        'if __name__ == "__main__":\n    print(intersperse(input().split(), ","))\n```',
        BODY.replace("if not numbers:\n    return []\n", ""),              # wrong: no guard, fails on []
        "```python\nintersperse = lambda numbers, delimiter: numbers\n```",  # wrong
    ]
    verdicts = task.score_many([HUMANEVAL] * len(replies), replies, workers=2)
    assert [v.correct for v in verdicts] == [True] * 5 + [False] * 2, [v.detail for v in verdicts]


@pytest.mark.slow  # a sandboxed program (a process)
def test_mbpp_program_with_main_block_reading_stdin_passes():
    example = Example(id="mbpp/x", prompt="Add two numbers.", tests=("assert add(1, 2) == 3",),
                      meta={"task_id": 0, "setup": "", "entry_point": "add"})
    reply = f"```python\ndef add(a, b):\n    return a + b\n\n{MAIN_READING_STDIN}```"
    assert MBPP(timeout=20.0).score(example, reply).correct


def test_still_importable_from_scoring():
    from transformer_squared.tasks import scoring

    assert scoring.extract_code is extract_code
