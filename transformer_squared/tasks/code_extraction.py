"""Code extraction: the program in a model's chat reply, for the code tasks (MBPP, HumanEval, custom `python`).

The rules, in order. Each is compared with the two reference harnesses: openai/human-eval, which does no extraction
(its check program is prompt + completion + tests, run with `exec`), and evalplus, whose `sanitize` takes the
longest run of lines that parses (`code_extract`), then keeps only imports, classes, functions and assignments
(those the entry point reaches when one is given).

1. Continuation. A reply whose first fence is an untagged ``` with code before it, started inside a block (the
   task prefilled "```python"): the code is the text before that fence, whatever follows. "Code" means it compiles as a
   module or as a function body and is not just a bare word ("Sure", "Solution" compile but are prose).
   human-eval expects exactly such a continuation; evalplus reaches the same text via its longest-run rule.
2. Fenced blocks. ```tag … ```; a last block never closed (the token budget cut the reply) runs to the end of the
   reply, tagged or not, so prose followed by an untagged fence that is never closed yields the code, not the
   prose. Among Python (python, py, python3, py3) and untagged blocks: the first that defines the entry point
   (`def`, `async def`, `class`, or a top-level assignment such as `f = lambda …`), else the first such block, else
   the first block of any tag. A closed block is taken as written (a syntax error in it is the model's); an
   unclosed one that does not compile is cut to its longest compiling prefix, so a line cut in half by the budget
   after a finished solution does not fail it. evalplus instead takes the longest compiling run of the whole
   reply, which likewise never joins two blocks (fence lines do not compile); human-eval would run the fence
   lines themselves and fail.
3. No fence (or only fences that open no block: no line break after them): the longest run of consecutive lines
   that compiles as a module or as a function body, by non-blank lines, the earliest of equals; bare-word lines
   ("Sure") neither start nor end a run. So prose before and after the code is dropped (evalplus's
   `code_extract` rule), and a function body written flush left is kept whole, guard clauses included: the task
   indents it (`humaneval.as_body`). Text in which nothing compiles is returned as is and fails in the sandbox
   with its own syntax error.
4. Finally a top-level `if __name__ == "__main__":` block is dropped, with its `else:` and everything indented
   under it. It is a script's entry point (reads stdin, prints demos); the sandbox runs the program as `__main__`
   with stdin at /dev/null, so it would fail (EOFError) or, if cut off, not compile. Under human-eval such a block
   never runs (`exec` in a fresh namespace, where `__name__` is "builtins"); evalplus's sanitizer drops it with
   every other top-level statement. Other top-level statements are kept, unlike evalplus: example calls and
   `print`s are harmless, and code such as `sys.setrecursionlimit(…)` or a table built by a loop is part of some
   correct solutions.
"""

from __future__ import annotations

import keyword
import re
import warnings

_FENCE = re.compile(r"```")
_BLOCK = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(```|\Z)", re.S)  # (tag, body, closing fence or "")
_PY_TAGS = {"python", "py", "python3", "py3", ""}
_MAIN_GUARD = re.compile(r"""if\s*\(?\s*(?:__name__\s*==\s*(['"])__main__\1|(['"])__main__\2\s*==\s*__name__)"""
                         r"""\s*\)?\s*:""")
_MAIN_CLAUSE_TAIL = re.compile(r"else\s*:|#")  # flush-left lines that still belong to a dropped main block
_BARE_WORD = re.compile(r"([A-Za-z_]\w*)[ \t]*")
# Each run tried costs two compiles (module and body); pruning makes ~2 tries per line typical. The cap bounds
# pathological replies (a CPU-bound reward must not stall RL), past it the best run found so far is used.
_MAX_TRIES = 600


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The program in a model's reply, by the rules of this module's docstring.

    Fenced blocks first: a reply that starts inside a block (its first fence is an untagged closing one) is the
    text before that fence; otherwise, among Python or untagged blocks, the first that defines `entry_point`,
    else the first Python block, else the first block of any kind (an unclosed last block runs to the end and is
    cut to its longest compiling prefix). No fence: the longest run of lines that compiles as a module or as a
    function body (prose dropped, a flush-left body kept whole). A top-level `if __name__ == "__main__":` block
    is always dropped.
    """
    return _drop_main_block(_select(text, entry_point))


def defines(code: str, name: str) -> bool:
    """Whether `code` defines `name`: `def`/`async def` (at any indentation, as before), a top-level `class`, or a
    top-level assignment (`name = lambda …`, `name: T = …`). A regular expression, not a parse, so that code cut
    off by the token budget still counts."""
    n = re.escape(name)
    pattern = rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{n}[ \t]*\(|^class[ \t]+{n}\b|^{n}[ \t]*(?::[^=\n]*)?=(?!=)"
    return re.search(pattern, code, re.M) is not None


def _select(text: str, entry_point: str | None) -> str:
    fences = [m.start() for m in _FENCE.finditer(text)]
    if not fences:
        return _longest_compiling_run(text.strip("\n"))
    before = text[:fences[0]].strip("\n")
    first_tag = re.match(r"```[ \t]*([\w+.-]*)", text[fences[0]:]).group(1)
    if not first_tag and _is_code(before):
        return before
    blocks = [(tag.lower(), body, bool(close)) for tag, body, close in _BLOCK.findall(text)]
    if not blocks:  # only inline fences: read the reply as unfenced (fence lines never compile)
        return _longest_compiling_run(text.strip("\n"))
    python = [(body, closed) for tag, body, closed in blocks if tag in _PY_TAGS]
    chosen = None
    if entry_point:
        chosen = next(((b, c) for b, c in python if defines(b, entry_point)), None)
    body, closed = chosen or (python[0] if python else blocks[0][1:])
    body = body.strip("\n")
    if not closed and _error_line(body) is not None:
        return _longest_compiling_run(body, anchored=True)
    return body


def _longest_compiling_run(code: str, anchored: bool = False) -> str:
    """The longest run of consecutive lines of `code` that compiles (module or function body), counted in
    non-blank lines, the earliest of equals; with `anchored`, only runs from the first code line (a prefix).
    `code` itself when no run compiles.

    Hand-written rather than evalplus's all-pairs search (O(n²) compiles: 1.6 s for 120 lines of prose here, too
    slow for an RL reward; this takes ~0.07 s): a syntax error on line e of a run is taken to mean that no run
    from the same start containing line e compiles (the parser reports where the text stops being valid, or the
    bracket or string left open there; where an error is reported early, a shorter run is found, never a wrong
    one), so the next end tried is just before it; starts that cannot beat the best run are skipped.
    """
    lines = code.splitlines()
    counts = [0]  # counts[k]: non-blank lines among lines[:k]
    for line in lines:
        counts.append(counts[-1] + bool(line.strip()))
    best, best_count, tries = None, 0, _MAX_TRIES
    for i, line in enumerate(lines):
        if counts[-1] - counts[i] <= best_count or tries <= 0:
            break
        if not line.strip() or _is_bare_word(line):
            continue
        j = len(lines)
        while counts[j] - counts[i] > best_count and tries > 0:
            tries -= 1
            e = _error_line("\n".join(lines[i:j]))
            if e is None:
                best, best_count = (i, j), counts[j] - counts[i]
                break
            j = min(j - 1, i + e - 1) if e > 0 else j - 1
        if anchored:
            break
    if best is None:
        return code
    i, j = best
    # A trailing flush-left bare word ("Done") compiles as an expression; dropping a whole top-level statement
    # leaves the rest compiling.
    while j > i + 1 and (not lines[j - 1].strip() or _is_bare_word(lines[j - 1])):
        j -= 1
    return "\n".join(lines[i:j])


def _drop_main_block(code: str) -> str:
    """`code` without its top-level `if __name__ == "__main__":` blocks (line-based, so a block cut off by the
    token budget, which does not compile, is dropped too)."""
    lines, kept, inside = code.splitlines(), [], False
    for line in lines:
        if _MAIN_GUARD.match(line):
            inside = True
            continue
        if inside and (not line.strip() or line[0].isspace() or _MAIN_CLAUSE_TAIL.match(line)):
            continue
        inside = False
        kept.append(line)
    return "\n".join(kept).rstrip("\n") if len(kept) < len(lines) else code


def _is_code(text: str) -> bool:
    """Compiles (module or function body) and is more than bare words: prose such as "Sure" compiles too."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return bool(lines) and not all(_is_bare_word(ln.strip()) for ln in lines) and _error_line(text) is None


def _is_bare_word(line: str) -> bool:
    m = _BARE_WORD.fullmatch(line)
    return m is not None and not keyword.iskeyword(m.group(1))  # `pass`, `return`, `break` are code


def _error_line(code: str) -> int | None:
    """None if `code` compiles as a module or as a function body (a body flush left or indented, as HumanEval
    replies often are); else the 1-based line of the later of the two errors, 0 if unknown."""
    as_module = _compile_error_line(code)
    if as_module is None:
        return None
    as_body = _compile_error_line("def _():\n" + "\n".join("    " + ln if ln.strip() else ln
                                                           for ln in code.splitlines()))
    if as_body is None:
        return None
    return max(as_module, as_body - 1, 0)


def _compile_error_line(code: str) -> int | None:
    try:
        # Compiling only parses and generates bytecode; nothing runs. Warnings (invalid escapes in the reply's
        # strings) are the model's, not the user's business. catch_warnings is not thread-safe, but at worst
        # another thread's warning is shown or hidden: no result depends on it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(code, "<reply>", "exec", dont_inherit=True)
        return None
    except SyntaxError as e:  # IndentationError included
        return e.lineno or 0
    except (ValueError, RecursionError, MemoryError):  # null bytes; pathological nesting
        return 0
