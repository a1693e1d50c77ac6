"""Data parallelism with torch.distributed, kept to the few collectives the recipe needs.

Launch with `torchrun --nproc_per_node N -m transformer_squared.cli.main train ...` (or `t2 train` under any
launcher that sets RANK / WORLD_SIZE / MASTER_ADDR): gloo on CPU, NCCL on GPU. Each rank rolls out (or reads)
its contiguous shard of the global batch; the losses are normalised by the *global* batch, so summing the
gradients over ranks (`all_reduce_grads`) gives exactly the single-process gradient. The trainable parameters
are few (SVF: Σ r; LoRA: r·(m+n) per matrix), so one flat all-reduce per step replaces DDP's bucketing and
hooks. Rank 0 writes every file; all ranks hold identical parameters, so they pick the same best step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from ..models import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank, the number of ranks, and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owned: bool = False  # this process group was created by `setup` (and is destroyed by `teardown`)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(spec: str) -> torch.device:
    """`auto` → cuda:LOCAL_RANK when CUDA is available, else cpu; otherwise the named device."""
    device = resolve_device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return device


def setup(device: str = "auto") -> Dist:
    """Join the process group when launched with WORLD_SIZE > 1 (or when one is already initialised)."""
    if dist.is_available() and dist.is_initialized():
        dev = pick_device(device)
        return Dist(dist.get_rank(), dist.get_world_size(), dev)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = pick_device(device)
    if world <= 1:
        return Dist(0, 1, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), dev, owned=True)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], d: Dist) -> list[T]:
    """This rank's contiguous share of `items` (sizes differ by at most one)."""
    n = len(items)
    lo, hi = d.rank * n // d.world, (d.rank + 1) * n // d.world
    return list(items[lo:hi])


def all_reduce_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over ranks (in place; returned for chaining)."""
    if d.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def sum_floats(values: Sequence[float], d: Dist) -> list[float]:
    """Sum a few Python numbers over ranks (float64 on the rank's device)."""
    if not d.active:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(d))
    return all_reduce_sum(t, d).tolist()


def all_reduce_grads(params: Sequence[torch.nn.Parameter], d: Dist) -> None:
    """Sum the gradients of `params` over ranks with one flat all-reduce (missing grads count as 0)."""
    if not d.active:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads]).to(_comm_device(d))
    all_reduce_sum(flat, d)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(device=p.device, dtype=p.dtype)
        offset += n


def gather_objects(obj: Any, d: Dist) -> list[Any]:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, d: Dist) -> Any:
    """Rank 0's `obj`, on every rank."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def _comm_device(d: Dist) -> torch.device:
    return d.device if dist.get_backend() == "nccl" else torch.device("cpu")
