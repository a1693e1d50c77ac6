"""An expert set: the directory of experts a self-adaptive model chooses from.

    DIR/<name>/expert.{json,safetensors}   one expert per domain (domain: meta["domain"], else <name>);
                                           DIR/<name>/expert/ (a `t2 train --out DIR/<name>` run) also works
    DIR/dispatch/                          optional classification expert (meta role "dispatch"), pass 1 of
                                           the classifier strategy
    DIR/router.{json,safetensors}          optional fitted router (router.py)

Sub-directories without an expert.json are ignored; experts whose meta role is "fewshot" (CEM outputs) are not
domain experts and are skipped. Each domain maps to the task its expert was trained on: meta["task"] if it names
one, else the paper's default (math -> gsm8k, code -> mbpp, reasoning -> arc-easy). The dispatch task and the
router draw their prompts from those tasks' *training* splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import T2Error
from ..experts import META, Expert, read_meta
from .labels import OTHERS
from .strategy import Choice

DEFAULT_DOMAIN_TASKS = {"math": "gsm8k", "code": "mbpp", "reasoning": "arc-easy"}
ROLE_DISPATCH, ROLE_FEWSHOT = "dispatch", "fewshot"


@dataclass(frozen=True)
class Entry:
    """One expert directory, read from its expert.json only (no tensors)."""

    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def role(self) -> str:
        if self.meta.get("role") in (ROLE_DISPATCH, ROLE_FEWSHOT):
            return self.meta["role"]
        trained_for = (self.name, self.meta.get("task"), self.meta.get("domain"))
        return ROLE_DISPATCH if ROLE_DISPATCH in trained_for else "task"

    @property
    def domain(self) -> str:
        return str(self.meta.get("domain") or self.name)


def scan(directory: str | Path) -> list[Entry]:
    """The expert sub-directories of `directory`, sorted by name (only expert.json is read)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise T2Error(f"{directory}: no such experts directory (expected DIR/<name>/expert.json per expert)")
    entries = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = sub.name
        if not (sub / META).is_file() and (sub / "expert" / META).is_file():
            sub = sub / "expert"  # a training run directory: its expert lives in expert/
        meta_path = sub / META
        if not meta_path.is_file():
            continue
        entries.append(Entry(name, sub, read_meta(meta_path)))  # checked: one-line errors on a bad file
    return entries


def task_entries(entries: list[Entry]) -> list[Entry]:
    """The domain experts among `entries`; two experts for one domain is an error."""
    out, seen = [], {}
    for e in entries:
        if e.role != "task":
            continue
        if e.domain == OTHERS:
            raise T2Error(f"{e.path}: 'others' is reserved for the base model; give the expert another domain")
        if e.domain in seen:
            raise T2Error(f"{e.path} and {seen[e.domain]} both serve domain {e.domain!r}; keep one per domain")
        seen[e.domain] = e.path
        out.append(e)
    return out


def domain_tasks(entries: list[Entry]) -> dict[str, str]:
    """domain -> the task its expert was trained on (meta["task"], else the paper's default)."""
    out = {}
    for e in task_entries(entries):
        task = e.meta.get("task") or DEFAULT_DOMAIN_TASKS.get(e.domain)
        if not task:
            raise T2Error(f"{e.path}: domain {e.domain!r} has no default training task; set \"task\" in its "
                          f"expert.json (e.g. custom:<file.jsonl>)")
        out[e.domain] = str(task)
    if not out:
        raise T2Error("no domain experts found (expected DIR/<name>/expert.json with a domain)")
    return out


@dataclass
class ExpertSet:
    """Domain experts (checked against one model), an optional dispatch expert, and their training tasks."""

    directory: Path | None
    experts: dict[str, Expert]  # domain -> expert
    names: dict[str, str]  # domain -> directory name (what results report)
    dispatch: Expert | None = None
    tasks: dict[str, str] = field(default_factory=dict)  # domain -> training task
    descriptions: dict[str, str] = field(default_factory=dict)  # domain -> meta["description"]

    @classmethod
    def load(cls, directory: str | Path, am=None, *, allow_transfer: bool = False) -> "ExpertSet":
        """Load every expert of `directory`, each checked against `am` (an AdaptedModel) when given."""
        entries = scan(directory)
        tasks = domain_tasks(entries)
        experts, names, descriptions, dispatch = {}, {}, {}, None
        for e in entries:
            if e.role == ROLE_FEWSHOT:
                continue
            expert = am.load_expert(e.path, allow_transfer=allow_transfer) if am is not None else Expert.load(e.path)
            expert.meta.setdefault("name", e.name)
            if e.role == ROLE_DISPATCH:
                dispatch = expert
                continue
            experts[e.domain], names[e.domain] = expert, e.name
            if e.meta.get("description"):
                descriptions[e.domain] = str(e.meta["description"])
        return cls(Path(directory), experts, names, dispatch, tasks, descriptions)

    @classmethod
    def from_experts(cls, experts: dict[str, Expert], *, dispatch: Expert | None = None,
                     tasks: dict[str, str] | None = None) -> "ExpertSet":
        """An in-memory set (tests, Python users): domain -> expert."""
        return cls(None, dict(experts), {d: d for d in experts}, dispatch,
                   dict(tasks or {d: DEFAULT_DOMAIN_TASKS.get(d, "") for d in experts}))

    @property
    def domains(self) -> list[str]:
        return sorted(self.experts)

    def choice(self, label: str, **detail) -> Choice:
        """The Choice for a pass-1 label: the domain's expert, or the base model for `others`/unknown."""
        if label in self.experts:
            return Choice(self.experts[label], self.names[label], label, None, dict(detail))
        return Choice.base(OTHERS, **detail)

    def true_label(self, domain: str) -> str:
        """The label a perfect dispatcher gives a task of `domain`: the domain if an expert serves it, else others."""
        return domain if domain in self.experts else OTHERS
