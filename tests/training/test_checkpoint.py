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
