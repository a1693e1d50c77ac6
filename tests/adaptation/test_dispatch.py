"""The dispatch task: balanced prompts from the experts' training splits, labels as answers, label rewards."""

import json
from collections import Counter

import pytest

from transformer_squared.errors import T2Error
from transformer_squared.tasks import get_task, list_tasks


@pytest.mark.slow  # reads three tasks' training splits: ~2 s
def test_balanced_seeded_and_drawn_from_training_splits_only(shared_data):
    task = get_task("dispatch", per_domain=6)
    train = task.load("train", shared_data)
    assert Counter(ex.answer for ex in train) == {"code": 6, "math": 6, "reasoning": 6}
    assert [ex.id for ex in train] == [ex.id for ex in task.load("train", shared_data)]
    assert [ex.id for ex in train] != [ex.id for ex in get_task("dispatch", per_domain=6, seed=1).load(
        "train", shared_data)]
    train_ids = {ex.meta["source_id"] for ex in train}
    for name in ("gsm8k", "mbpp", "arc-easy"):
        source = get_task(name)
        own = {ex.id for ex in source.load("train", shared_data)}
        held = {ex.id for s in source.splits if s != "train" for ex in source.load(s, shared_data)}
        mine = {ex.meta["source_id"] for ex in train if ex.meta["source_task"] == name}
        assert mine <= own and not mine & held
    for ex in train:
        assert ex.id == f"dispatch/{ex.answer}/{ex.meta['source_id']}"
    assert not train_ids & {ex.meta["source_id"] for ex in task.load("valid", shared_data)}
    assert "dispatch" not in list_tasks()  # a meta-task, not a benchmark


def test_prompt_is_the_domain_tasks_user_turn_and_reward_reads_the_label(shared_data):
    task = get_task("dispatch", per_domain=2)
    ex = next(e for e in task.load("test", shared_data) if e.answer == "reasoning")
    messages = task.messages(ex)
    assert messages[0]["role"] == "system" and "classify it into one of four categories" in messages[0]["content"]
    assert messages[1]["content"] == ex.prompt and "Options:\nA. " in ex.prompt  # the ARC user turn
    prefix = task.response_prefix(ex)
    assert prefix == "Classification: \\boxed{" and prefix + task.sft_target(ex) == ex.solution
    assert task.reward(ex, prefix + "reasoning}") == 1.0
    assert task.reward(ex, prefix + "Logic}") == 1.0
    assert task.reward(ex, prefix + "math}") == -1.0
    assert task.reward(ex, "I don't know") == -1.0
    plain = get_task("dispatch", per_domain=2, prefill=False)
    assert plain.response_prefix(ex) == "" and plain.sft_target(ex) == ex.solution


def _meta(**fields) -> str:
    """A minimal valid expert.json (experts.read_meta refuses one that names no model) with `fields`."""
    from transformer_squared.experts import FORMAT_VERSION

    return json.dumps({"format_version": FORMAT_VERSION, "base_model": {"fingerprint": "f" * 16},
                       "shapes": {"model.layers.0.mlp.up_proj": [8, 4]}, **fields})


def test_domains_from_an_expert_set(tmp_path, shared_data):
    layout = {"algebra": {"domain": "math"}, "coder/expert": {"domain": "code", "task": "mbpp-sanitized"},
              "router-clf": {"task": "dispatch", "domain": "dispatch"},
              "adapted": {"role": "fewshot", "domain": "math"}, "notes": None}
    for name, meta in layout.items():
        (tmp_path / name).mkdir(parents=True)
        if meta is not None:
            (tmp_path / name / "expert.json").write_text(_meta(**meta))
    from transformer_squared.adaptation.expert_set import scan

    roles = {e.name: (e.role, e.domain) for e in scan(tmp_path)}
    assert roles == {"algebra": ("task", "math"), "coder": ("task", "code"), "router-clf": ("dispatch", "dispatch"),
                     "adapted": ("fewshot", "math")}
    task = get_task("dispatch", experts=tmp_path, per_domain=3)
    assert task.domains == {"code": "mbpp-sanitized", "math": "gsm8k"}
    assert Counter(ex.meta["source_task"] for ex in task.load("train", shared_data)) == {
        "mbpp-sanitized": 3, "gsm8k": 3}
    custom = get_task("dispatch", domains={"math": "gsm8k", "science": "arc-challenge"})
    assert "'math', 'science' or 'other'" in custom.messages(task.load("train", shared_data)[0])[0]["content"]


def test_errors(tmp_path):
    with pytest.raises(T2Error, match="either experts=DIR or domains"):
        get_task("dispatch", experts=tmp_path, domains={"math": "gsm8k"})
    (tmp_path / "medical").mkdir()
    (tmp_path / "medical" / "expert.json").write_text(_meta(domain="medical"))
    with pytest.raises(T2Error, match="no default training task"):
        get_task("dispatch", experts=tmp_path)
    with pytest.raises(T2Error, match="no such experts directory"):
        get_task("dispatch", experts=tmp_path / "nope")
    with pytest.raises(T2Error, match="unknown task"):
        get_task("dispatch", domains={"math": "gsm9k"})


@pytest.mark.slow  # reads three tasks' training splits: ~1.5 s
def test_prompt_forms_plain_and_mixed(shared_data):
    """`form` writes prompts as the benchmark does, as a user would type them, or a seeded mix of both."""
    template = get_task("dispatch", per_domain=20).load("train", shared_data)
    plain = get_task("dispatch", per_domain=20, form="plain").load("train", shared_data)
    mixed = get_task("dispatch", per_domain=20, form="mixed").load("train", shared_data)
    assert [ex.id for ex in template] == [ex.id for ex in plain]  # same items, other wording
    assert {ex.meta["form"] for ex in template} == {"template"} and {ex.meta["form"] for ex in plain} == {"plain"}
    by_id = {ex.id: ex for ex in template}
    for ex in plain:
        if ex.answer == "reasoning":  # options inline, no "Options:" block, no answer-format instruction
            assert "Options:" not in ex.prompt and " or " in ex.prompt and ex.prompt.endswith("?")
        if ex.answer == "code":  # the MBPP description without its assertion
            assert "assert" not in ex.prompt and ex.prompt in by_id[ex.id].prompt
    forms = Counter(ex.meta["form"] for ex in mixed)
    assert forms["plain"] > 10 and forms["template"] > 10
    assert [ex.meta["form"] for ex in mixed] == [ex.meta["form"] for ex in get_task(
        "dispatch", per_domain=20, form="mixed").load("train", shared_data)]  # seeded
    with pytest.raises(T2Error, match="form must be one of"):
        get_task("dispatch", form="casual")


@pytest.mark.slow  # a fresh interpreter in a subprocess
def test_the_registry_reaches_the_dispatch_task_without_tasks_importing_adaptation():
    import subprocess
    import sys

    from transformer_squared.adaptation.dispatch import DispatchTask

    assert isinstance(get_task("dispatch", per_domain=2), DispatchTask)
    # In a fresh interpreter: importing tasks (and building a benchmark) must not pull in the layer above it.
    code = ("import sys, transformer_squared.tasks as t; t.get_task('gsm8k'); "
            "print(sorted(m for m in sys.modules if m.startswith('transformer_squared.adaptation')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
