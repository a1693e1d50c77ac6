"""Answer extraction and comparison (tasks/scoring.py): the reference code's bugs (SPEC §3) and tricky answers."""

import pytest

from transformer_squared.tasks.scoring import (
    extract_choice,
    extract_code,
    extract_final_number,
    extract_math_answer,
    find_numbers,
    last_boxed,
    math_equal,
    normalize_math,
    numbers_equal,
    parse_number,
)

# ------------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize("text, expected", [
    ("The answer is -5.", "-5"),                       # the reference regex dropped the minus sign
    ("x = -12 degrees", "-12"),
    ("\u22127", "-7"),                                  # Unicode minus
    ("She has 1,234 apples.", "1234"),                  # the reference broke on thousands separators
    ("Total: 1,234,567.50", "1234567.50"),
    ("It costs $18.00.", "18.00"),
    ("It costs -$18.", "-18"),
    ("so 18.", "18"),
    ("3/4 of the cake", "3/4"),
    ("a 50% discount", "50"),
    ("5-3", "3"),                                       # binary minus is not a sign
    ("- 5 apples", "5"),                                # a list bullet is not a sign
    ("pages 10-20", "20"),
    ("abc123", None),                                   # digits glued to a word are not a number
    ("no digits here", None),
    ("value .5", ".5"),
])
def test_last_number(text, expected):
    nums = find_numbers(text)
    assert (nums[-1] if nums else None) == expected


@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("#### -3", "-3"),
    ("So the total is \\boxed{18} dollars for 3 days.", "18"),
    ("\\boxed{\\$1,234.50}", "1234.50"),
    ("\\boxed{\\frac{3}{4}}", "3/4"),
    ("The answer is 18 dollars for 3 days.", "18"),     # explicit answer beats the last number
    ("The answer is: $18.00\nCheck: 6 * 3 = 18", "18.00"),
    ("First 6, then 12, finally 18", "18"),
    ("I am not sure.", None),
])
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_numbers_equal_tolerance_and_forms():
    assert numbers_equal(parse_number("18.00"), parse_number("18"))
    assert numbers_equal(parse_number("3/4"), parse_number("0.75"))
    assert numbers_equal(parse_number("-1234"), -1234.0)
    assert numbers_equal(0.1 + 0.2, 0.3)
    assert not numbers_equal(parse_number("18.01"), 18.0)
    assert not numbers_equal(parse_number("-18"), 18.0)
    assert not numbers_equal(None, 1.0)
    assert parse_number("1/0") is None and parse_number("abc") is None


# ------------------------------------------------------------------------------------------------ choices


@pytest.mark.parametrize("text, expected", [
    ("I think the answer is (B).", "B"),                # the pronoun "I" is never an answer
    ("The answer is (C)", "C"),
    ("the answer is D.", "D"),
    ("Answer: B", "B"),
    ("**Answer:** (A)", "A"),
    ("The correct answer is **C**.", "C"),
    ("The correct option is D because it is warm.", "D"),
    ("Therefore, the final answer is $\\boxed{A}$.", "A"),
    ("The answer is (A). Wait, no: the answer is (C).", "C"),   # last explicit answer wins
    ("the answer is (b)", "B"),                          # lowercase inside brackets is a label
    ("(D)", "D"),
    ("B", "B"),
    ("**C**", "C"),
    ("Let me think.\nPlants need light.\n(B)", "B"),     # a last line that is only a label
    ("(B) oxygen\nbecause animals breathe it", "B"),    # a first line that starts with a label
    ("A. seed\nB. spore\nC. pollen\nD. immature flower\nThe correct answer is:", None),  # a listing, no choice
    ("A. seed\nB. spore", None),
    ("The answer is a bit unclear.", None),              # the article "a" is not a label
    ("I am not sure which one it is.", None),            # nothing found: no guess (the reference picked A)
    ("A plant needs water and light.", None),
    ("The answer is (E).", None),                        # not one of the four options
    ("answer: I", None),
    ("", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, "ABCD") == expected


def test_extract_choice_respects_number_of_options():
    assert extract_choice("The answer is (E).", "ABCDE") == "E"
    assert extract_choice("The answer is (D).", "ABC") is None


# ------------------------------------------------------------------------------------------------ MATH


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{\\sqrt{2}}}.", "\\frac{1}{\\sqrt{2}}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\fbox{7}", "7"),
    ("\\boxed 5$", "5"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{\\frac{1}{2", None),                      # cut off before the closing brace
    ("no box", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_extract_math_answer_fallback_is_explicit_only():
    assert extract_math_answer("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.") == \
        "\\frac{3}{4}"
    assert extract_math_answer("It is probably 3.") is None


@pytest.mark.parametrize("raw, expected", [
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\tfrac12", "\\frac{1}{2}"),
    ("\\frac1{2}", "\\frac{1}{2}"),
    ("\\sqrt3", "\\sqrt{3}"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("10\\!000", "10000"),
    ("1,000", "1000"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("5\\text{ cm}", "5"),
    ("5\\text{ cm}^2", "5"),
    ("\\text{Devon}", "Devon"),
    ("50\\%", "50"),
    ("\\$18.50", "18.50"),
    ("x = 5", "5"),
    ("k=\\frac{1}{3}", "\\frac{1}{3}"),
    ("x \\in [1, 2]", "[1,2]"),
    ("3/4", "\\frac{3}{4}"),
    (".5", "0.5"),
    ("7.", "7"),
    ("1011_{2}", "1011_2"),
])
def test_normalize_math(raw, expected):
    assert normalize_math(raw) == expected


@pytest.mark.parametrize("pred, gold", [
    ("\\frac{1}{2}", "0.5"),                            # the example: \boxed{\frac{1}{2}} vs 0.5
    ("0.5", "\\frac12"),
    ("\\dfrac{3}{4}", "3/4"),
    ("-\\frac{1}{2}", "-0.5"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("\\pi/2", "\\frac{\\pi}{2}"),
    ("(x+1)^2", "x^2+2x+1"),
    ("2x", "x \\cdot 2"),
    ("6", "3 \\times 2"),
    ("10\\text{ cm}", "10"),
    ("90^\\circ", "90"),
    ("(1, 2)", "\\left(1,2\\right)"),
    ("(\\frac{1}{2}, 3)", "(0.5, 3)"),
    ("[2, \\infty)", "[2,\\infty)"),
    ("1, 2, 3", "3,2,1"),                                # unordered list of solutions
    ("\\{1, 2\\}", "\\{2,1\\}"),
    ("\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\ -2\\end{pmatrix}"),
    ("4x - 5y = -50", "-4x+5y=50"),                      # the same line
    ("1011_2", "1011_{2}"),
    ("\\text{(C)}", "(C)"),
    ("2^{2005}", "2 \\cdot 2^{2004}"),
    ("\\sin^2 x + \\cos^2 x", "1"),
    ("5!", "120"),
    ("|-3|", "3"),
])
def test_math_equal_true(pred, gold):
    assert math_equal(pred, gold), (pred, gold)


@pytest.mark.parametrize("pred, gold", [
    ("\\frac{1}{3}", "0.33"),
    ("(1, 2)", "(2, 1)"),                                # ordered pairs are ordered
    ("(1, 2)", "[1, 2]"),                                # bracket types matter for intervals
    ("[2, \\infty)", "(2,\\infty)"),
    ("1, 2", "1, 2, 3"),
    ("2x", "2y"),
    ("4x-5y=-50", "4x-5y=50"),
    ("\\sqrt{2}", "1.41"),
    ("", "1"),
    (None, "1"),
    ("10^{10^{10}}", "10^{10^{10}}+1"),                  # refused quickly (too big), never hangs
])
def test_math_equal_false(pred, gold):
    assert not math_equal(pred, gold)


# ------------------------------------------------------------------------------------------------ code


def test_extract_code_prefers_block_defining_entry_point():
    text = ("Here is an example:\n```python\nprint(add(1, 2))\n```\nand the solution:\n"
            "```python\ndef add(a, b):\n    return a + b\n```\n")
    assert extract_code(text, "add") == "def add(a, b):\n    return a + b"
    assert extract_code(text) == "print(add(1, 2))"     # without an entry point: the first Python block


def test_extract_code_forms():
    assert extract_code("```py\nx = 1\n```") == "x = 1"
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"   # cut off, unclosed
    # a prefilled reply ("```python" was in the prompt) ends at its first, untagged fence
    assert extract_code("    return a + b\n```\n\nThis adds.\n```python\nprint(1)\n```") == "    return a + b"
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1"
    # unfenced prose before the code is dropped when the whole text does not parse
    assert extract_code("Sure! Here it is:\ndef f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("```text\nhello\n```") == "hello"
