"""Checkpoints survive a full disk (one line, the previous checkpoint intact) and a moved run directory."""

import errno
import os
import shutil

import pytest
import torch

from transformer_squared.errors import T2Error
from transformer_squared.training import TrainConfig, checkpoint, train

from .tinylm import tiny_lm, write_task


def test_full_disk_is_one_line_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoint"
    checkpoint.save(directory, {"step": 2, "z": torch.ones(4)}, {"step": 2})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # every atomic write fsyncs before its rename: the disk is full
    with pytest.raises(T2Error, match="No space left on device.*the previous checkpoint is intact") as info:
        checkpoint.save(directory, {"step": 4, "z": torch.zeros(4)}, {"step": 4})
    assert "\n" not in str(info.value) and "--resume" in str(info.value)
    monkeypatch.undo()
    state, info_ = checkpoint.load(directory)
    assert state["step"] == 2 and torch.equal(state["z"], torch.ones(4)) and info_["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no temporary left behind


def test_a_checkpoint_older_than_a_field_resumes_with_the_fields_earlier_behaviour(tmp_path):
    # The recipe a checkpoint of the Qwen MBPP run recorded (results/qwen/runs/mbpp-svf-rl-s0): written before
    # --baseline, --advantage-norm, --rollout-precision and --tis-cap existed; its rollouts were exact.
    now = TrainConfig(out="run", task="mbpp", steps=20, batch_size=8, lr=2e-3, schedule="constant",
                      samples_per_prompt=4, temperature=1.0, max_new_tokens=512, valid_limit=-1, test_limit=0,
                      checkpoint_every=1, rollout_precision="exact").resolved()
    saved = {k: v for k, v in now.recipe().items()
             if k not in ("baseline", "advantage_norm", "rollout_precision", "tis_cap")}
    checkpoint.check_same_recipe(saved, now.recipe(), tmp_path)  # the values those runs had: resumes
    auto = TrainConfig(**{**now.to_dict(), "rollout_precision": "auto"})
    with pytest.raises(T2Error, match="rollout_precision='exact'.*pass --rollout-precision exact to resume") as e:
        checkpoint.check_same_recipe(saved, auto.recipe(), tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(T2Error, match="advantage_norm"):  # a recorded field still has to match
        checkpoint.check_same_recipe(saved, TrainConfig(**{**now.to_dict(), "advantage_norm": "std"}).recipe(),
                                     tmp_path)
    sft = TrainConfig(**{**now.to_dict(), "objective": "sft", "samples_per_prompt": 1, "rollout_precision": "auto"})
    old_sft = {k: v for k, v in sft.recipe().items() if k not in ("baseline", "advantage_norm")}
    checkpoint.check_same_recipe(old_sft, sft.recipe(), tmp_path)  # no rollouts: their precision is not compared
    # A memory knob: the saved run's micro-batches (recorded by runs written before it became a runtime field)
    # never block a resume with smaller ones.
    small = TrainConfig(**{**now.to_dict(), "micro_batch_tokens": 1024})
    checkpoint.check_same_recipe({**saved, "micro_batch_tokens": 2048}, small.recipe(), tmp_path)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow  # two training runs: ~12 s on 2 shared cores
def test_a_moved_run_directory_resumes(tmp_path):
    task = write_task(tmp_path)

    def run(out, **kw):
        config = TrainConfig(**{**dict(out=str(out), task=f"custom:{task}", steps=4, batch_size=4, eval_every=2,
                                       valid_limit=3, test_limit=2, max_new_tokens=6, micro_batch_tokens=40,
                                       progress=False, method="svf", objective="sft", lr=0.05), **kw})
        return train(config, model=tiny_lm())

    stopped = run(tmp_path / "first", stop_after=3)  # checkpoint at step 2
    assert stopped.interrupted
    shutil.move(tmp_path / "first", tmp_path / "elsewhere" / "moved")
    resumed = run(tmp_path / "elsewhere" / "moved", resume=True)
    assert not resumed.interrupted and resumed.steps == 4
    assert resumed.expert == tmp_path / "elsewhere" / "moved" / "expert" and resumed.expert.is_dir()
    with pytest.raises(T2Error, match="lr"):  # what the run computes must still match
        run(tmp_path / "elsewhere" / "moved", resume=True, lr=0.5)
