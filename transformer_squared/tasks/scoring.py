"""Answer extraction and comparison: pure functions, shared by evaluation, RL rewards and `t2 score`.

Each fixes a bug of the reference code (SPEC §3):
- numbers: minus signs, "1,234", "$18.00", "18.", "3/4" and "50%" are read correctly; explicit answer markers
  ("#### 18", \\boxed{18}, "the answer is 18") win over the last number in the text;
- choices: "the answer is (X)" and its variants, last explicit answer wins; a bare letter inside prose (the
  pronoun "I", the article "A") is never taken, and nothing is guessed when no answer is found;
- MATH: the last \\boxed{} (nested braces, \\fbox), normalised, then compared as strings, numbers, tuples/intervals
  element-wise, and finally by sympy equivalence under a hard time bound;
- code: the ```python block that defines the entry point, else the first code block, else the whole text.
"""

from __future__ import annotations

import math
import re
import time
from fractions import Fraction

# ---------------------------------------------------------------------------------------------- numbers

# A number not glued to a word, a decimal point or a LaTeX command; "-" only as a sign directly before the digits
# (so "5-3" reads 5 and 3, and a "- " list bullet is not a sign); "$" allowed after the sign.
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_.\\])(?P<neg>-(?=\$?\.?\d))?\$?\s?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?)(?![\d.]))?")
_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:|=)|answer\s+would\s+be", re.I)


def find_numbers(text: str) -> list[str]:
    """All numbers in `text`, in order, as canonical strings ("-1234", "18.00", "3/4"); "%" and "$" dropped."""
    text = text.replace("\u2212", "-")  # the Unicode minus sign
    out = []
    for m in _NUMBER.finditer(text):
        s = ("-" if m.group("neg") else "") + m.group("num").replace(",", "")
        if m.group("den"):
            s += "/" + m.group("den")
        out.append(s)
    return out


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
    """Numeric equality with a small tolerance (so 18.00 == 18 and 0.1 + 0.2 == 0.3)."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return False
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def last_number(text: str) -> str | None:
    """The last number in `text`, or None."""
    nums = find_numbers(text)
    return nums[-1] if nums else None


def _latex_to_plain(s: str) -> str:
    s = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", s)
    return re.sub(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}", r" \1 ", s).replace("\\!", "").replace("{,}", ",")


def extract_final_number(text: str) -> str | None:
    """The final numeric answer of a worked solution (GSM8K), as a canonical string, or None.

    Explicit markers win, in this order: the number after the last "####", the last \\boxed{}, the first number
    after the last "answer is"/"answer:"; otherwise the last number in the text.
    """
    if "####" in text:
        nums = find_numbers(text.rsplit("####", 1)[1])
        if nums:
            return nums[0]
    boxed = last_boxed(text)
    if boxed is not None:
        nums = find_numbers(_latex_to_plain(boxed))
        if nums:
            return nums[-1]
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        line = text[phrases[-1].end():].split("\n", 1)[0]
        nums = find_numbers(_latex_to_plain(line))
        if nums:
            return nums[0]
    return last_number(text)


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


_UNIT = r"\\(?:text|textbf|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d\}?)?"


def normalize_math(s: str) -> str:
    """Canonical form of a MATH answer for string comparison.

    Drops $, spacing commands (\\! \\, \\;), \\left/\\right, degrees, \\%, trailing units (`\\text{ cm}^2`) and a
    trailing period; maps dfrac/tfrac to frac, `\\frac12` to `\\frac{1}{2}`, `\\sqrt3` to `\\sqrt{3}`, `.5` to `0.5`,
    `1,000` to `1000`, `3/4` to `\\frac{3}{4}`; strips `x =` / `x \\in` before a short name; removes spaces.
    """
    s = s.strip().replace("\n", " ")
    s = re.sub(r"\\\\|\\[,;:! ]", lambda m: m.group(0) if m.group(0) == "\\\\" else "", s)  # keep \\ rows
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)[lr]?(?![a-zA-Z])", "", s)
    s = s.replace("\\displaystyle", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s).replace("°", "").replace("\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.strip()
    while True:  # trailing units, possibly several ("5\text{ m}\text{ long}")
        t = re.sub(rf"(?<=\S)\s*{_UNIT}\s*\.?$", "", s)
        if t == s:
            break
        s = t
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}", r"\1", s)
    s = s.replace(" ", "").rstrip(".")
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if re.fullmatch(r"[a-zA-Z](?:_\{?\w+\}?)?|\\[a-zA-Z]+", lhs):
            s = rhs
    s = re.sub(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)\\in", "", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)  # number bases: 1011_{2} == 1011_2
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    return s


def math_equal(pred: str | None, gold: str | None, timeout: float = 3.0) -> bool:
    """Whether two MATH answers are equivalent: normalised strings, then numbers, then structure, then sympy.

    Tuples and intervals compare element-wise in order (bracket types must match); bare comma lists and sets
    compare as multisets; all sympy work for one comparison shares a hard budget of `timeout` seconds (see
    `tasks.bounded`), so a long list of hard elements cannot multiply it.
    """
    if pred is None or gold is None:
        return False
    a, b = normalize_math(pred), normalize_math(gold)
    if not a or not b:
        return False
    return a == b or _structure_equal(a, b, time.monotonic() + timeout)


def _split_top(s: str, sep: str = ",") -> list[str]:
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _structure(s: str) -> tuple[str, list[str]]:
    """(kind, parts): kind "scalar", "list"/"set" (unordered), "matrix", "union" or a bracket pair like "(]"."""
    if "\\cup" in s and len(_split_top(s, "\\cup")) > 1:
        return "union", _split_top(s, "\\cup")
    m = re.fullmatch(r"\\begin\{[pbv]?matrix\}(.*)\\end\{[pbv]?matrix\}", s)
    if m:
        rows = [r.split("&") for r in m.group(1).split("\\\\") if r]
        return f"matrix{[len(r) for r in rows]}", [x for r in rows for x in r]
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", _split_top(s[2:-2])
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _encloses(s):
        inner = _split_top(s[1:-1])
        if len(inner) > 1:
            return s[0] + s[-1], inner
    parts = _split_top(s)
    return ("list", parts) if len(parts) > 1 else ("scalar", [s])


def _encloses(s: str) -> bool:
    depth = 0
    for i, c in enumerate(s):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and i < len(s) - 1:
            return False
    return True


def _structure_equal(a: str, b: str, deadline: float) -> bool:
    ka, pa = _structure(a)
    kb, pb = _structure(b)
    if ka == "scalar" and kb == "scalar":
        return _scalar_equal(a, b, deadline)
    if ka != kb or len(pa) != len(pb):
        return False
    if ka in ("list", "set"):
        remaining = list(pb)
        for x in pa:
            hit = next((i for i, y in enumerate(remaining) if x == y or _structure_equal(x, y, deadline)), None)
            if hit is None:
                return False
            remaining.pop(hit)
        return True
    return all(x == y or _structure_equal(x, y, deadline) for x, y in zip(pa, pb))


def _plain_value(s: str) -> float | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    if m:
        v = parse_number(f"{m.group(2)}/{m.group(3)}")
        return -v if (v is not None and m.group(1)) else v
    if re.fullmatch(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?", s):
        return parse_number(s)
    return None


def _scalar_equal(a: str, b: str, deadline: float) -> bool:
    if a == b:
        return True
    va, vb = _plain_value(a), _plain_value(b)
    if va is not None and vb is not None:
        return numbers_equal(va, vb)
    if re.fullmatch(r"[A-Za-z ]+", a) and re.fullmatch(r"[A-Za-z ]+", b):
        return a.lower() == b.lower()
    from .bounded import CallTimeout, call_with_timeout
    from .latex import LatexError

    remaining = deadline - time.monotonic()
    if remaining <= 0.01:
        return False
    try:
        return bool(call_with_timeout(sympy_equal, (a, b), remaining))
    except (CallTimeout, LatexError, RuntimeError):
        return False
    except Exception:  # sympy raises assorted errors (TypeError, ValueError, ...) on odd input: not equal
        return False


def sympy_equal(a: str, b: str) -> bool:
    """Whether two LaTeX expressions are mathematically equal (unbounded: call via `call_with_timeout`)."""
    import sympy

    from .latex import parse_latex

    if a.count("=") == 1 and b.count("=") == 1:
        # Equations (a line, a plane): equal when one side-difference is a nonzero constant times the other.
        (la, ra), (lb, rb) = a.split("="), b.split("=")
        da, db = parse_latex(la) - parse_latex(ra), parse_latex(lb) - parse_latex(rb)
        if da == 0 or db == 0:
            return False
        ratio = sympy.simplify(da / db)
        return bool(ratio.is_number and ratio != 0 and ratio.is_finite)
    x, y = parse_latex(a), parse_latex(b)
    if x == y:
        return True
    diff = x - y
    if diff == 0:
        return True
    if not diff.free_symbols:
        try:
            vx, vy = complex(sympy.N(x, 30)), complex(sympy.N(y, 30))
        except (TypeError, ValueError):
            return False
        return numbers_equal(vx.real, vy.real) and numbers_equal(vx.imag, vy.imag)
    return sympy.simplify(diff) == 0


# ---------------------------------------------------------------------------------------------- code

_FENCE = re.compile(r"```")
_BLOCK = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PY_TAGS = {"python", "py", "python3", "py3", ""}


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The program in a model's reply.

    Fenced blocks first: among Python (or untagged) blocks, the first that defines `entry_point`, else the first
    Python block, else the first block of any kind; an unclosed last block (cut off by the token budget) counts.
    A reply that *starts* inside a block (the paper prefilled "```python") ends at its first, untagged fence: the
    code is the text before it. No fence at all: the whole text.
    """
    fences = [m.start() for m in _FENCE.finditer(text)]
    if not fences:
        return _drop_leading_prose(text.strip("\n"))
    first_tag = re.match(r"```[ \t]*([\w+.-]*)", text[fences[0]:]).group(1)
    if len(fences) % 2 == 1 and not first_tag and text[:fences[0]].strip():
        return text[:fences[0]].strip("\n")
    blocks = [(tag.lower(), body) for tag, body in _BLOCK.findall(text)]
    python = [body for tag, body in blocks if tag in _PY_TAGS]
    if entry_point:
        pattern = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.M)
        for body in python:
            if pattern.search(body):
                return body.strip("\n")
    if python:
        return python[0].strip("\n")
    return blocks[0][1].strip("\n") if blocks else text.strip("\n")


def _drop_leading_prose(code: str) -> str:
    """Unfenced reply: if it does not parse, drop lines before the first one that starts Python code."""
    if _compiles(code):
        return code
    lines = code.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"(?:def|class|import|from|async\s+def|@)\b|[A-Za-z_]\w*\s*=", line):
            rest = "\n".join(lines[i:])
            return rest if _compiles(rest) or i > 0 else code
    return code


def _compiles(code: str) -> bool:
    try:
        compile(code, "<reply>", "exec")  # parses only; nothing runs
        return True
    except Exception:  # SyntaxError, and RecursionError/MemoryError on pathological input
        return False
