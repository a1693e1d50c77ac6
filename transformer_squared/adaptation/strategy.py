"""What pass 1 decides (`Choice`) and the protocol every strategy follows (`Strategy`).

A strategy looks at a batch of conversations and returns, per conversation, which weights pass 2 answers with:
a domain expert, a mixture (few-shot α), or the base model (label `others`). Strategies must leave the model
with its base weights when they return (they may merge a dispatch expert while they run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from ..errors import T2Error
from ..experts import Expert
from .labels import OTHERS

Conversation = list[dict[str, str]]


@dataclass
class Choice:
    """Pass 1's verdict for one prompt.

    expert: the weights pass 2 uses (None: the base model); name: what reports call it ("base" for None);
    label: the domain pass 1 saw (a domain or `others`); alpha: the mixing weights of a mixed expert;
    detail: evidence (the raw classification text, or the router's similarities).
    """

    expert: Expert | None
    name: str
    label: str
    alpha: Any = None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def base(cls, label: str = OTHERS, **detail) -> "Choice":
        return cls(None, "base", label, None, dict(detail))


@runtime_checkable
class Strategy(Protocol):
    """Pass 1: `choose(conversations) -> one Choice per conversation`, base weights restored on return."""

    name: str

    def choose(self, conversations: Sequence[Conversation]) -> list[Choice]: ...


def user_text(conversation: Conversation | str) -> str:
    """The text pass 1 classifies: the last user message (a plain string is its own user message)."""
    if isinstance(conversation, str):
        return conversation
    for message in reversed(conversation):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    raise T2Error("a conversation needs at least one user message to classify")


def as_conversation(prompt: Conversation | str) -> Conversation:
    """A plain prompt becomes a one-turn conversation; conversations are checked and passed through."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(m, dict) and "role" in m for m in prompt):
        raise T2Error("a prompt is a string or a list of {'role', 'content'} messages")
    return list(prompt)
