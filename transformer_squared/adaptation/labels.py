"""Reading a domain label out of a pass-1 classification (prompt and classifier strategies, dispatch task).

The model is asked to answer inside \\boxed{}. Small models do not always comply, so extraction is lenient
about form and strict about meaning:

1. the *last* \\boxed{...} wins (a model that changes its mind, or repeats the format example first); a box cut
   off by the token budget (`\\boxed{math` at the very end) still counts;
2. without a box, a "Classification: X" / "category: X" line is read;
3. the candidate is normalised (case, quotes, `\\text{}`, punctuation, "category"/"question" filler) and mapped
   through synonyms ("mathematics" -> math, "programming" -> code, "logic" -> reasoning, "other" -> others);
4. anything else, or nothing at all, is `others`: the base weights answer (never a guessed expert).
"""

from __future__ import annotations

import re
from typing import Iterable

OTHERS = "others"

# Lower-case synonyms of the paper's domains; a custom domain matches its own name (and its plural/singular).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "math": ("math", "maths", "mathematics", "mathematical", "arithmetic", "algebra", "calculation", "numbers"),
    "code": ("code", "coding", "programming", "program", "python", "software", "computer science", "algorithm",
             "algorithms"),
    "reasoning": ("reasoning", "logic", "logical", "logical reasoning", "science", "common sense",
                  "commonsense", "critical thinking"),
    OTHERS: ("others", "other", "none", "unknown", "general", "misc", "miscellaneous", "n/a"),
}

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LINE = re.compile(r"(?:classification|category|label|domain)\s*(?:is)?\s*[:=]\s*\**\s*([^\n]+)", re.I)
_FILLER = re.compile(r"\b(?:category|categories|question|type|domain|task|the)\b", re.I)


def boxed_candidates(text: str) -> list[str]:
    """Contents of every \\boxed{...} in order (nested braces allowed; an unclosed final box runs to the end)."""
    out = []
    for m in _BOX.finditer(text):
        depth, start = 1, m.end()
        for j in range(start, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    out.append(text[start:j])
                    break
        else:
            out.append(text[start:])
    return out


def normalise(candidate: str) -> str:
    """'\\text{Mathematics}.' -> 'mathematics'; quotes, markdown, filler words and punctuation dropped."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|textit)\s*\{([^{}]*)\}", r"\1", candidate)
    s = s.replace("\\", " ").replace("_", " ")
    s = _FILLER.sub(" ", s)
    s = re.sub(r"[^a-z0-9/ ]+", " ", s.lower())
    return " ".join(s.split())


def canonical(candidate: str, domains: Iterable[str]) -> str | None:
    """The domain (or `others`) a candidate names, or None if it names none of them."""
    s = normalise(candidate)
    if not s:
        return None
    table = {d.lower(): d for d in domains}
    if s in table:
        return table[s]
    for d in list(table.values()) + [OTHERS]:
        names = {d.lower(), d.lower().rstrip("s"), d.lower() + "s", *SYNONYMS.get(d.lower(), ())}
        if s in names:
            return d
    # "math problem", "python code": a single known name among the words, and no other domain's name.
    words = set(s.split())
    hits = {d for d in list(table.values()) + [OTHERS]
            if words & {d.lower(), *(w for w in SYNONYMS.get(d.lower(), ()) if " " not in w)}}
    return hits.pop() if len(hits) == 1 else None


def extract_label(text: str, domains: Iterable[str]) -> str:
    """The domain a classification output names, or `others` (see the module docstring for the rules)."""
    domains = list(domains)
    boxes = boxed_candidates(text)
    if boxes:
        return canonical(boxes[-1], domains) or OTHERS
    lines = _LINE.findall(text)
    if lines:
        return canonical(lines[-1], domains) or OTHERS
    stripped = text.strip()
    if stripped and len(stripped.split()) <= 3:  # a bare "Math." reply
        return canonical(stripped, domains) or OTHERS
    return OTHERS
