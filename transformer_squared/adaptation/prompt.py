"""Prompt-based adaptation (SPEC §4): the model itself classifies each prompt into the experts' domains.

Pass 1 asks the model (base weights; the classifier strategy merges a dispatch expert instead) to classify the
last user message into the loaded experts' domains plus "other", answering inside \\boxed{}. The label picks
the expert; "others" (or an unreadable answer) means the base weights.

The system prompt is the reference code's wording: SakanaAI/self-adaptive-llms, `utils.py` (`classify_samples`,
CLASSIFICATION_PROMPT) and `tasks/cls.py` (`ClsTask.system_msg`), read through the code search index; the
question is the user turn, as there. Only facts were taken, no code.

Departures from the reference (numbered):
1. The categories are the loaded experts' domains (sorted), not a fixed list; for exactly {code, math,
   reasoning} the text is the reference's, with its indentation removed. Unknown domains get a generic line
   (or the expert's `meta["description"]`).
2. "others" restores the base weights; the reference code kept whatever expert had been loaded last.
3. Label extraction is lenient (`labels.py`: last box wins, synonyms, truncated box), the reference took the
   first `\\boxed{...}` and an exact match.
4. `prefill` starts the reply with "Classification: \\boxed{" so the model only has to name the category. Off
   by default for the prompt strategy (the paper's setting), on for the classifier (its dispatch expert is
   trained with that prefix, adaptation/dispatch.py). Measured on SmolLM2-135M-Instruct, 18 test prompts of the
   six tasks: unprefilled, 0/18 replies contain a box (the model answers the question instead); prefilled,
   2/18 correct labels, the rest mostly words lifted from the prompt (-> others). `max_new_tokens` bounds
   pass 1 (the reference allowed 1024).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..errors import T2Error
from ..generation import SamplingParams, chat_prompt_ids
from .labels import extract_label
from .strategy import Choice, Conversation, user_text

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

# The reference's guideline for each of its domains (verbatim, trailing space removed).
DESCRIPTIONS = {
    "code": "Questions asking for programming solutions, functions, algorithms. Often includes specific "
            "programming terms, language syntax, or data structures.",
    "math": "Questions involving mathematical calculations, formulas, statistics. Often includes numbers, "
            "equations, or mathematical operations.",
    "reasoning": "Questions requiring logical thinking, application of scientific knowledge, or critical analysis "
                 "of information. Often presents statements that need evaluation based on general understanding.",
}
OTHER_DESCRIPTION = "Questions not clearly fit into above categories."
PREFILL = "Classification: \\boxed{"


def classification_prompt(domains: Sequence[str], descriptions: Mapping[str, str] | None = None) -> str:
    """The system message asking for one of `domains` or 'other' inside \\boxed{} (reference wording)."""
    if not domains:
        raise T2Error("prompt-based adaptation needs at least one expert domain")
    domains = sorted(domains)
    descriptions = {**DESCRIPTIONS, **(descriptions or {})}
    quoted = [f"'{d}'" for d in domains] + ["'other'"]
    n = len(quoted)
    count = _NUMBERS[n] if n < len(_NUMBERS) else str(n)
    lines = [f"# Analyze the given question and classify it into one of {count} categories: "
             f"{', '.join(quoted[:-1])} or {quoted[-1]}. Follow these guidelines:", ""]
    for i, d in enumerate(domains, 1):
        lines.append(f"{i}. {d.capitalize()}: {descriptions.get(d, f'Questions about {d}.')}")
    lines += [f"{n}. Other: {OTHER_DESCRIPTION}", "", "Instructions:",
              "- Consider the primary focus, skills, and knowledge required to answer the question.",
              "- If a question spans multiple categories, choose the most dominant one.",
              f"- Provide your final classification within \\boxed{{}} notation. Example: \\boxed{{{domains[-1]}}}",
              "", "Format your response as follows:", "Classification: \\boxed{category}"]
    return "\n".join(lines)


def classification_messages(text: str, domains: Sequence[str],
                            descriptions: Mapping[str, str] | None = None) -> Conversation:
    """System: the classification prompt; user: the text to classify."""
    return [{"role": "system", "content": classification_prompt(domains, descriptions)},
            {"role": "user", "content": text}]


@dataclass(frozen=True)
class PromptConfig:
    """How pass 1 asks the model for a label."""

    max_new_tokens: int = field(default=64, metadata={"help": "pass-1 budget (the label comes first if asked)"})
    prefill: bool | None = field(default=None, metadata={"help": "start the reply with 'Classification: \\boxed{' "
                                                                 "(None: the strategy's default)"})

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise T2Error(f"pass-1 max_new_tokens must be at least 1, got {self.max_new_tokens}")


class PromptStrategy:
    """Pass 1 = the model classifies the prompt (base weights, or `pass1_expert` merged: the classifier)."""

    name = "prompt"
    default_prefill = False

    def __init__(self, runtime, config: PromptConfig = PromptConfig(), *, pass1_expert=None):
        self.rt = runtime  # runtime.Runtime: model, tokenizer, engine, weight cache, expert set
        self.config = config
        self.pass1_expert = pass1_expert

    def choose(self, conversations: Sequence[Conversation]) -> list[Choice]:
        if self.rt.tokenizer is None:
            raise T2Error("prompt-based adaptation needs the model's tokenizer (chat template)")
        experts = self.rt.experts
        domains = experts.domains
        prefill = self.default_prefill if self.config.prefill is None else self.config.prefill
        prefix = PREFILL if prefill else ""
        prefix_ids = self.rt.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        ids = [chat_prompt_ids(self.rt.tokenizer, classification_messages(user_text(c), domains,
                                                                          experts.descriptions)) + prefix_ids
               for c in conversations]
        params = SamplingParams(max_new_tokens=self.config.max_new_tokens)
        try:
            self.rt.cache.activate(self.pass1_expert)
            outs = self.rt.engine.generate(ids, params)
        finally:
            self.rt.cache.activate(None)
        choices = []
        for out in outs:
            text = prefix + out.text
            label = extract_label(text, domains)
            choices.append(experts.choice(label, classification=text))
        return choices

