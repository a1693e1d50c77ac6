"""TrainConfig: per-method defaults, one-line errors for inconsistent options, the CLI mirrors the fields."""

import dataclasses

import pytest

from transformer_squared.cli.main import build_parser
from transformer_squared.errors import T2Error
from transformer_squared.training import TrainConfig
from transformer_squared.training.loop import lr_lambda


def test_per_method_defaults_are_resolved():
    svf = TrainConfig(out="x").resolved(task_max_new_tokens=512)
    assert (svf.lr, svf.grad_clip, svf.max_new_tokens, svf.checkpoint_every) == (2e-3, 1e-3, 512, 10)
    lora = TrainConfig(out="x", method="lora", lr=1e-4).resolved(task_max_new_tokens=300)
    assert (lora.lr, lora.grad_clip, lora.max_new_tokens) == (1e-4, 1.0, 300)


def test_the_papers_recipe_is_the_default():
    c = TrainConfig(out="x")
    assert (c.method, c.objective, c.temperature, c.samples_per_prompt, c.kl_coef, c.wrong_reward) == \
        ("svf", "rl", 0.0, 1, 0.0, -1.0)


@pytest.mark.parametrize("bad, match", [
    (dict(method="full"), "--method"),
    (dict(steps=0), "--steps"),
    (dict(samples_per_prompt=4), "temperature"),
    (dict(lr=-1.0), "--lr"),
    (dict(out=""), "--out"),
    (dict(resume=True, overwrite=True), "contradict"),
    (dict(valid_limit=-5), "--valid-limit"),
    (dict(baseline="mean"), "--baseline"),
    (dict(advantage_norm="std", baseline="none", samples_per_prompt=4, temperature=1.0), "--advantage-norm"),
    (dict(advantage_norm="std"), "--advantage-norm"),  # G = 1: no group to scale by
    (dict(rollout_precision="fp8"), "--rollout-precision"),
    (dict(tis_cap=0.5), "--tis-cap"),
    (dict(tis_cap=float("inf")), "--tis-cap"),
])
def test_inconsistent_options_are_one_line_errors(bad, match):
    with pytest.raises(T2Error, match=match) as e:
        TrainConfig(**{"out": "x", **bad})
    assert "\n" not in str(e.value)


def test_baseline_and_advantage_norm_come_from_the_command_line():
    args = build_parser().parse_args(["train", "--out", "o", "--samples-per-prompt", "8", "--temperature", "1",
                                      "--baseline", "none"])
    assert (args.baseline, args.advantage_norm) == ("none", "none")
    args = build_parser().parse_args(["train", "--out", "o", "--advantage-norm", "std"])
    assert (args.baseline, args.advantage_norm) == ("loo", "std")
    assert TrainConfig(out="x").baseline == "loo"  # G = 1 (the default) gives the raw reward either way


def test_cosine_schedule_decays_from_full_lr_and_warmup_ramps():
    f = lr_lambda(TrainConfig(out="x", steps=4))
    assert [round(f(s), 4) for s in range(4)] == [1.0, 0.8536, 0.5, 0.1464]
    g = lr_lambda(TrainConfig(out="x", steps=10, warmup_steps=2, schedule="constant"))
    assert [g(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_cli_options_mirror_the_config_fields():
    args = build_parser().parse_args(["train", "--out", "o", "--kl-coef", "0.2", "--no-progress",
                                      "--samples-per-prompt", "4", "--temperature", "0.7"])
    fields = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)}
    assert fields <= set(vars(args))
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    assert (config.kl_coef, config.progress, config.samples_per_prompt, config.temperature) == (0.2, False, 4, 0.7)


def test_dispatch_form_reaches_the_dispatch_task_and_nothing_else(tmp_path, shared_data):
    from transformer_squared.training import train
    from transformer_squared.training.loop import _task_options

    config = TrainConfig(out=str(tmp_path / "run"), task="dispatch", dispatch_form="mixed", data_dir=str(shared_data))
    assert _task_options(config) == {"form": "mixed"}
    assert _task_options(TrainConfig(out="x", task="dispatch")) == {}  # the template default: the paper's prompts
    with pytest.raises(T2Error, match="--dispatch-form is for --task dispatch"):
        train(TrainConfig(out=str(tmp_path / "run2"), task="arc-easy", dispatch_form="plain"))
    assert not (tmp_path / "run2").exists()  # refused before anything is written or loaded


def test_rollout_precision_comes_from_the_command_line_and_is_part_of_an_rl_recipe_only():
    args = build_parser().parse_args(["train", "--out", "o", "--rollout-precision", "int8", "--tis-cap", "3"])
    assert (args.rollout_precision, args.tis_cap) == ("int8", 3.0)
    assert (TrainConfig(out="x").rollout_precision, TrainConfig(out="x").tis_cap) == ("auto", 2.0)
    assert {"rollout_precision", "tis_cap"} <= set(TrainConfig(out="x").recipe())
    # next-token training has no rollouts: their precision does not change what it computes
    assert not {"rollout_precision", "tis_cap"} & set(TrainConfig(out="x", objective="sft").recipe())
