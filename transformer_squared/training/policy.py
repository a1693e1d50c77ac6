"""The trainable-policy interface the training loop sees, and its SVF implementation.

A policy owns a model whose weights it can present in three ways:

- `generating()`: the current policy at full inference speed (adapter merged), no grad, for rollouts and eval;
- `reference()`:  the base model π_base, no grad, for the KL term;
- `grad_pass()`:  the current policy with gradients; forward/backward run inside, and on exit every trainable
                  parameter holds its gradient;

plus `after_update()` (parameters changed), `state()` / `load_state()` for checkpoints, `save(dir, meta)` for
the expert, and `close()` to give the base model back untouched.

SVF. The layers themselves apply z (svf.py, `apply_z`, the one place for every mode); this policy only switches
them: `generating()` merges W' of the current z into the weights (`SVF.merge_trainable`: fp32, cast back, checked
finite, the originals kept; recomposed only when z has changed since the last merge, i.e. at most once per
optimizer step), so rollouts and evaluation run at full inference speed; `grad_pass()` puts the layers in their
TRAIN mode, which applies z factored, ((x V) ⊙ σz) Uᵀ, and autograd takes ∂L/∂z through it, accumulating over
micro-batches like any parameter's gradient, for either parametrization (direct z, or the paper code's sigmoid +
rescale). Neither W' nor ∂L/∂W' is formed in the gradient pass (bench/README.md, bench_training, has the cost).
`reference()` swaps the original weights in and the state back out by copying (no recomposition).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from torch import nn

from ..adapted import AdaptedModel
from ..experts import Expert
from ..plots import optional_plot, plot_expert
from ..svf import ZInit


class TrainablePolicy(Protocol):
    method: str
    model: nn.Module  # called for teacher-forced passes: model(input_ids=..., logits_to_keep=...)
    generation_model: nn.Module  # handed to the generation engine

    def parameters(self) -> list[nn.Parameter]: ...
    def generating(self): ...
    def reference(self): ...
    def grad_pass(self): ...
    def after_update(self) -> None: ...
    def state(self) -> dict[str, torch.Tensor]: ...
    def load_state(self, state: dict[str, torch.Tensor]) -> None: ...
    def save(self, directory: Path, meta: dict[str, Any]) -> Path: ...
    def close(self) -> None: ...


class SVFPolicy:
    """SVF expert training on an `AdaptedModel` (see the module docstring)."""

    method = "svf"

    def __init__(self, am: AdaptedModel, init: ZInit = ZInit(), seed: int = 0):
        self.am = am
        self.model = self.generation_model = am.model
        self.params = am.svf.train_mode(init, seed=seed)  # creates z (or p) in every layer, freezes the rest

    def parameters(self) -> list[nn.Parameter]:
        return list(self.params)

    def after_update(self) -> None:
        """Nothing to do: each layer compares z with the z of its merged W' before the weights are next used."""

    @contextmanager
    def generating(self) -> Iterator[None]:
        self.am.svf.merge_trainable()
        with torch.no_grad():
            yield

    @contextmanager
    def reference(self) -> Iterator[None]:
        with self.am.svf.base_weights(), torch.no_grad():
            yield

    @contextmanager
    def grad_pass(self) -> Iterator[None]:
        self.am.svf.resume_training()
        yield

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.am.svf.trainable_state().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.am.svf.load_trainable_state(state)
        self.after_update()

    def effective_z(self) -> dict[str, torch.Tensor]:
        return self.am.svf.effective_z()

    @torch.no_grad()
    def z_drift(self) -> float:
        """Mean |z − 1| over every coordinate of the effective z: how far the expert has moved from the base
        (0 at the start; the per-step metric that tells "the lr is too small to move z" from "z moved, the
        policy did not")."""
        total, n = 0.0, 0
        for m in self.am.svf.layers.values():
            z = m.effective_z()
            total += float((z - 1).abs().sum())
            n += z.numel()
        return total / max(1, n)

    def save(self, directory: Path, meta: dict[str, Any]) -> Path:
        """An Expert directory (effective z + metadata), plus z.png (mean |z − 1| per layer) when matplotlib is
        installed."""
        z = self.effective_z()
        Expert(z, self.am.expert_meta(**meta)).save(directory)
        optional_plot(plot_expert, z, Path(directory) / "z.png", title=f"{meta.get('name', 'expert')}: mean |z − 1|")
        return Path(directory)

    def close(self) -> None:
        """Put the base weights back bit for bit and unwrap the SVF layers: the model is as it was given."""
        self.am.svf.detach()
