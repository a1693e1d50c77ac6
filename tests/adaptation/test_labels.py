"""Label extraction from pass-1 classifications, and the classification prompt."""

import pytest

from transformer_squared.adaptation.labels import OTHERS, boxed_candidates, extract_label
from transformer_squared.adaptation.prompt import classification_prompt

DOMAINS = ["code", "math", "reasoning"]


@pytest.mark.parametrize("text, want", [
    ("Classification: \\boxed{math}", "math"),
    ("\\boxed{Math}", "math"),
    ("\\boxed{MATHEMATICS}.", "math"),
    ("\\boxed{\\text{mathematics}}", "math"),
    ("The question is about code. Classification: \\boxed{'code'}", "code"),
    ("\\boxed{programming}", "code"),
    ("\\boxed{Logical reasoning}", "reasoning"),
    ("Example: \\boxed{reasoning}\nClassification: \\boxed{code}", "code"),  # the last box wins
    ("\\boxed{other}", OTHERS),
    ("\\boxed{Others}", OTHERS),
    ("\\boxed{profit}", OTHERS),  # an unknown word is not guessed into a domain
    ("\\boxed{category}", OTHERS),
    ("\\boxed{math or code}", OTHERS),  # two domains named: ambiguous
    ("I think this is math \\boxed{}", OTHERS),  # an empty box is no answer
    ("Classification: \\boxed{reason", OTHERS),  # truncated mid-word: not a synonym
    ("Classification: \\boxed{math", "math"),  # box cut off by the budget after the label
    ("Classification: Math", "math"),
    ("category: python code", "code"),
    ("Math.", "math"),
    ("This question needs some thought about many things.", OTHERS),
    ("", OTHERS),
])
def test_extract_label(text, want):
    assert extract_label(text, DOMAINS) == want


def test_custom_domains_match_their_own_names_only():
    assert extract_label("\\boxed{Medical}", ["medical", "math"]) == "medical"
    assert extract_label("\\boxed{medicals}", ["medical"]) == "medical"
    assert extract_label("\\boxed{code}", ["medical", "math"]) == OTHERS  # no code expert loaded


def test_boxed_candidates_handle_nesting_and_order():
    assert boxed_candidates("\\boxed{a} x \\boxed{\\text{b}} \\boxed{c") == ["a", "\\text{b}", "c"]


def test_classification_prompt_is_the_reference_wording_for_the_paper_domains():
    text = classification_prompt(["reasoning", "math", "code"])
    assert text.startswith("# Analyze the given question and classify it into one of four categories: "
                           "'code', 'math', 'reasoning' or 'other'. Follow these guidelines:")
    assert "1. Code: Questions asking for programming solutions" in text
    assert "3. Reasoning: Questions requiring logical thinking" in text
    assert "4. Other: Questions not clearly fit into above categories." in text
    assert text.endswith("Classification: \\boxed{category}")


def test_classification_prompt_for_custom_domains():
    text = classification_prompt(["medical", "math"], {"medical": "Questions about health and medicine."})
    assert "one of three categories: 'math', 'medical' or 'other'" in text
    assert "2. Medical: Questions about health and medicine." in text
