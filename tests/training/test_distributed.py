"""Two data-parallel processes (gloo) make the same update as one process with the same global batch."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from transformer_squared.experts import Expert
from transformer_squared.training import TrainConfig, train

from .tinylm import tiny_lm, write_task

CASES = {
    # greedy rollouts: each rank generates and scores its half of the prompts; sharded validation
    # (trained steps only: a base-model win at step 0 would ship z = 1, and equal z = 1 would prove nothing);
    # exact rollouts: an int8 product quantises its whole batch with one activation range, so a rank rolling out
    # half the prompts gets slightly different log-probs, hence importance weights, than one rolling out all
    "svf-rl": dict(method="svf", objective="rl", lr=0.05, kl_coef=0.1, eval_every=2, valid_limit=3, test_limit=3,
                   select_base=False, rollout_precision="exact"),
    # next-token loss normalised by the global token count; no dropout, so both runs draw the same masks
    "lora-sft": dict(method="lora", objective="sft", lr=0.01, lora_dropout=0.0, valid_limit=0, test_limit=0),
}


def config(tmp, name, world):
    return TrainConfig(out=str(tmp / f"{name}-{world}"), task=f"custom:{tmp / 'sums.jsonl'}", steps=2,
                       batch_size=4, max_new_tokens=6, micro_batch_tokens=40, progress=False, **CASES[name])


def worker(rank, world, tmp):
    torch.set_num_threads(1)  # as torchrun does: two ranks share the two cores
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'rendezvous'}", rank=rank, world_size=world)
    try:
        for name in CASES:
            train(config(tmp, name, world), model=tiny_lm())
    finally:
        dist.destroy_process_group()


def tensors(out, method):
    if method == "svf":
        return Expert.load(out / "expert").z
    return load_file(str(out / "expert" / "adapter_model.safetensors"))


def rows(out):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two torchrun-style processes: ~40 s on the shared 2-core machine
def test_two_processes_make_the_single_process_update(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))
    write_task(tmp_path)
    for name in CASES:
        train(config(tmp_path, name, 1), model=tiny_lm())
    mp.spawn(worker, args=(2, tmp_path), nprocs=2, join=True)

    for name, case in CASES.items():
        one, two = tmp_path / f"{name}-1", tmp_path / f"{name}-2"
        r1, r2 = rows(one), rows(two)
        assert len(r1) == len(r2) == 2
        for a, b in zip(r1, r2):
            assert a.keys() == b.keys() and b.pop("answers", None) == a.pop("answers", None)  # the same samples
            assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
        a, b = tensors(one, case["method"]), tensors(two, case["method"])
        moved = max((t - (1 if case["method"] == "svf" else 0)).abs().max().item() for t in a.values())
        assert moved > 1e-4, "training changed nothing, so equality would prove nothing"
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
        if case["method"] == "svf":
            m1, m2 = Expert.load(one / "expert").meta, Expert.load(two / "expert").meta
            assert m2["training"]["world_size"] == 2
            assert m1["metrics"]["valid"] == m2["metrics"]["valid"] and m1["metrics"]["test"] == m2["metrics"]["test"]
