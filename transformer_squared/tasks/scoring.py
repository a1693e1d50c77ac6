"""Answer extraction and comparison: pure functions, shared by evaluation, RL rewards and `t2 score`.

Each fixes a bug of the reference code (SPEC §3):
- numbers: minus signs, "1,234", "$18.00", "18.", "3/4", "36/2." and "50%" are read correctly; explicit answer
  markers ("#### 18", \\boxed{18}, "the answer is 18") win over the last number in the text, an equation after a
  marker is read to its result ("the answer is 143 + 2 = 145" is 145), and integers compare exactly;
- choices: "the answer is (X)" and its variants, last explicit answer wins; a bare letter inside prose (the
  pronoun "I", the article "A") is never taken, and nothing is guessed when no answer is found;
- MATH: the last \\boxed{} (nested braces, \\fbox), compared by Hugging Face's `math-verify` (the grader of
  open-r1 and lighteval) in a helper process that is killed when it overruns its time bound;
- code: `extract_code`, re-exported from `code_extraction` (fenced blocks, prose, bodies, main blocks).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# ---------------------------------------------------------------------------------------------- numbers

# A number not glued to a word, a decimal point or a LaTeX command; "-" only as a sign directly before the digits
# (so "5-3" reads 5 and 3, and a "- " list bullet is not a sign); "$" allowed after the sign. A fraction's
# denominator may end a sentence ("36/2." is 36/2) but not run into a decimal ("1/2.5" is not 1/2).
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_.\\])(?P<neg>-(?=\$?\.?\d))?\$?\s?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?)(?!\d|\.\d))?")
_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:|=)|answer\s+would\s+be", re.I)
# An arithmetic run starting at a number: digits, operators, "=" and spaces, on one line; a period only inside a
# number, so a sentence's full stop ends it.
_ARITHMETIC = re.compile(r"(?:[\d \t,$%+\-*/×÷x()=]|\.(?=\d))*")
# Where a statement ends: a line break, or sentence punctuation followed by a space (not a decimal point).
_STATEMENT_END = re.compile(r"\n|[.!?]+(?=\s)")
_CORRECTION = re.compile(r"\b(?:wait|actually|correction|oops|sorry|mistakes?|mistaken|I mean)\b", re.I)
_NEGATED = re.compile(r"\b(?:not|instead\s+of)\s+-?\$?\s?[\d.,/]*\d", re.I)  # "18, not 20": 20 is not the answer


def _canonical(m: re.Match) -> str:
    s = ("-" if m.group("neg") else "") + m.group("num").replace(",", "")
    return s + "/" + m.group("den") if m.group("den") else s


def find_numbers(text: str) -> list[str]:
    """All numbers in `text`, in order, as canonical strings ("-1234", "18.00", "3/4"); "%" and "$" dropped."""
    return [_canonical(m) for m in _NUMBER.finditer(text.replace("\u2212", "-"))]  # also the Unicode minus


def parse_number(s: str | None) -> float | None:
    """The value of a canonical number string ("-1234", "0.5", "3/4"); None if it is not one."""
    if s is None:
        return None
    s = s.strip().replace(",", "")
    try:
        if "/" in s:
            num, den = s.split("/")
            return float(Fraction(num) / Fraction(den))
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: float | None, b: float | None, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Numeric equality: exact when either side is an integer, else within a small tolerance.

    An integer answer is right only as that integer (a relative 1e-6 would make 2879999 equal 2880000); other
    values keep the tolerance, so 18.00 == 18 and 0.1 + 0.2 == 0.3.
    """
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return False
    if float(a).is_integer() or float(b).is_integer():
        return a == b
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def last_number(text: str) -> str | None:
    """The last number in `text`, or None."""
    nums = find_numbers(text)
    return nums[-1] if nums else None


def _latex_to_plain(s: str) -> str:
    s = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", s)
    return re.sub(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}", r" \1 ", s).replace("\\!", "").replace("{,}", ",")


def _answer_after(text: str) -> str | None:
    """The answer a marker introduces: its first number, or, when an equation follows it, the equation's result.

    "143 + 2 = 145" is 145 (taking 143 scored the mirror case, gold 143, correct); the result is the last side of
    the equation that is a single number, so "145 = 143 + 2" is 145 too.
    """
    first = _NUMBER.search(text.replace("\u2212", "-"))
    if first is None:
        return None
    run = _ARITHMETIC.match(text, first.start()).group(0)
    if "=" in run:
        for side in reversed(run.split("=")):
            nums = find_numbers(side)
            if len(nums) == 1 and _NUMBER.fullmatch(side.strip(" \t,%")):
                return nums[0]
    return _canonical(first)


def _explicit_answer(text: str) -> tuple[str, int] | None:
    """(answer, where its marker starts) for the reply's explicit answer, or None when it has none."""
    if "####" in text:
        at = text.rfind("####")
        got = _answer_after(text[at + 4:])
        if got is not None:
            return got, at
    at = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    boxed = last_boxed(text) if at >= 0 else None
    if boxed is not None:
        nums = find_numbers(_latex_to_plain(boxed))
        if nums:  # the box holds the final value, after any working ("\boxed{143+2=145}")
            return nums[-1], at
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        at = phrases[-1].start()
        got = _answer_after(_latex_to_plain(text[phrases[-1].end():].split("\n", 1)[0]))
        if got is not None:
            return got, at
    return None


def _final_statement(text: str) -> tuple[str, int]:
    """The reply's last statement (line or sentence with content) and where it starts."""
    start = 0
    for m in _STATEMENT_END.finditer(text):
        if text[m.end():].strip():
            start = m.end()
    return text[start:], start


def _correction(statement: str) -> str | None:
    """The number a correcting statement ("Wait, it is 18, not 20.") settles on, or None if it corrects nothing."""
    if not _CORRECTION.search(statement):
        return None
    plain = _NEGATED.sub(" ", _latex_to_plain(statement))
    if "=" in plain:
        nums = find_numbers(plain.rsplit("=", 1)[1])
        if nums:
            return nums[0]
    return last_number(plain)


def extract_final_number(text: str) -> str | None:
    """The final numeric answer of a worked solution (GSM8K), as a canonical string, or None.

    Explicit markers win, in this order: the number after the last "####", the last \\boxed{}, the answer after
    the last "answer is"/"answer:" (an equation there is read to its result); otherwise the last number in the text.

    The rule for corrections: an explicit answer stands even when the reply goes on (a check, units, a restatement),
    except when the reply's *final statement* (its last sentence or line) comes after the marker and corrects it
    (it says "wait", "actually", "correction", "sorry", "oops", "mistake" or "I mean"); then that statement's number
    is the answer (its equation's result, never a number after "not"). A correction followed by anything else is
    not the final statement and changes nothing.
    """
    found = _explicit_answer(text)
    if found is None:
        return last_number(text)
    answer, marker = found
    statement, start = _final_statement(text)
    if start > marker:
        return _correction(statement) or answer
    return answer


# ---------------------------------------------------------------------------------------------- choices

LETTERS = "ABCDEFGHIJ"

_CHOICE_ANCHOR = re.compile(
    r"(?:answer|option|choice)\s*(?:is|would\s+be|should\s+be|must\s+be|will\s+be|:|=)|\\boxed\s*(?=\{)", re.I)
_CHOICE_AFTER = re.compile(
    r"[\s*_:]*(?:(?:option|choice|letter)\b)?[\s*_:]*"
    r"(?:\$?\s*\\boxed\s*)?\{?\s*(?:\\text(?:bf)?\{)?\s*"
    r"(?P<open>[(\[]?)\s*(?P<label>[A-Za-z])\s*(?P<close>[)\]]?)(?![A-Za-z0-9'])", re.I)


def extract_choice(text: str, labels: str | list[str] | tuple[str, ...] = "ABCD") -> str | None:
    """The option letter a model chose, or None: nothing is guessed.

    Explicit answers ("the answer is (B)", "Answer: **C**", "the correct option is D", "\\boxed{A}") are searched
    everywhere and the last one wins. Only when there is none, an output that is just a label ("(B)", "B."), a
    last line that is just a label, or a first line like "(B) oxygen" / "B) oxygen" counts. A bare lowercase
    letter ("the answer is a bit...") is never read as a label, and letters outside `labels` are ignored.
    """
    valid = set(labels)
    found = None
    for anchor in _CHOICE_ANCHOR.finditer(text):
        m = _CHOICE_AFTER.match(text, anchor.end())
        if not m:
            continue
        label = m.group("label")
        bracketed = bool(m.group("open") and m.group("close"))
        if not bracketed and label.islower():
            continue
        if label.upper() in valid:
            found = label.upper()
    if found:
        return found
    plain = text.replace("**", "").replace("__", "").strip()
    m = re.fullmatch(r"[(\[]?([A-Z])[)\]]?[.:]?", plain)
    if m and m.group(1) in valid:
        return m.group(1)
    lines = [ln.strip() for ln in plain.splitlines() if ln.strip()]
    if lines:
        m = re.fullmatch(r"[(\[]?([A-Z])[)\]]?\.?", lines[-1])
        if m and m.group(1) in valid:
            return m.group(1)
        option_line = re.compile(r"(?:[(\[]([A-Z])[)\]]|([A-Z])[.)])\s+\S")
        listed = {m.group(1) or m.group(2) for ln in lines if (m := option_line.match(ln))}
        m = option_line.match(lines[0])
        # A first line "(B) oxygen" is a choice; a reply that lists several options ("A. seed\nB. spore...")
        # only repeats the question, and reading its first line as the answer would be a guess.
        if m and (m.group(1) or m.group(2)) in valid and len(listed) == 1:
            return m.group(1) or m.group(2)
    return None


# ---------------------------------------------------------------------------------------------- MATH


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (nested braces allowed; also `\\boxed 5`), or None."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = idx + (6 if text.startswith("\\boxed", idx) else 5)
    rest = text[i:]
    if rest.lstrip().startswith("{"):
        i += len(rest) - len(rest.lstrip())
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1:j]
        return None  # cut off before the closing brace
    m = re.match(r" +([^\s$]+)", rest)  # "\boxed 5"
    return m.group(1) if m else None


def extract_math_answer(text: str) -> str | None:
    """The final answer of a MATH solution: the last \\boxed{}, else "final answer is $X$"; None if neither."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    found = re.findall(r"final answer is:?\s*(.+)", text, re.I)
    if not found:
        return None
    s = found[-1].strip()
    m = re.match(r"\$(.+?)\$", s)
    s = m.group(1) if m else re.split(r"\.\s|\.$", s)[0]
    return s.strip() or None


def math_equal(pred: str | None, gold: str | None, timeout: float = 5.0) -> bool:
    """Whether a MATH answer equals the gold answer, by `math-verify` (`verify_math`) under a hard time bound.

    Identical strings need no grader. Otherwise the comparison runs in the time-bound helper process of
    `tasks.bounded` (`isolate=True`), never in this one: math-verify's own timeouts use SIGALRM (main thread only,
    whole seconds, and they cancel a timer the caller set), and no signal can stop sympy's C-level big-integer
    work (`\\boxed{9^{9^{9^9}}}`, `1000000!`), so a runaway comparison is ended by killing the helper. That makes
    scoring safe from any thread (a server, a rollout worker). A comparison that runs past `timeout` seconds is
    scored wrong.
    """
    from .bounded import CallTimeout, call_with_timeout

    if pred is None or gold is None:
        return False
    pred, gold = pred.strip(), gold.strip()
    if not pred or not gold:
        return False
    if pred == gold:
        return True
    try:
        return bool(call_with_timeout(verify_math, (pred, gold), timeout, isolate=True))
    except (CallTimeout, RuntimeError):  # overran its bound, or the helper died (out of memory): not shown equal
        return False


def verify_math(pred: str, gold: str) -> bool:
    """math-verify's verdict on two LaTeX answers (unbounded: call it through `math_equal`).

    Both are parsed as the content of a \\boxed{} (math-verify's LaTeX extraction, which also reads plain numbers
    and fractions such as `14/3`) with its own timeouts off, as `math_equal` bounds the whole call; the gold answer
    goes first because `verify` is not symmetric (it simplifies `x = 5` in the prediction against a gold `5`).
    """
    import logging

    from math_verify import LatexExtractionConfig, parse, verify

    # With timeouts off, math-verify logs once per process that the caller must bound it: math_equal does.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    config = [LatexExtractionConfig(boxed_match_priority=0)]
    parsed_gold = parse(f"\\boxed{{{gold}}}", config, parsing_timeout=None)
    parsed_pred = parse(f"\\boxed{{{pred}}}", config, parsing_timeout=None)
    return bool(parsed_gold and parsed_pred and verify(parsed_gold, parsed_pred, timeout_seconds=None))


# ---------------------------------------------------------------------------------------------- code

# Code extraction lives in its own module; re-exported here, where the other extractors are.
from .code_extraction import extract_code  # noqa: E402,F401
