"""The trainable-policy interface the training loop sees, and its SVF implementation.

A policy owns a model whose weights it can present in three ways:

- `generating()`: the current policy at full inference speed (adapter merged), no grad, for rollouts and eval;
- `reference()`:  the base model π_base, no grad, for the KL term;
- `grad_pass()`:  the current policy with gradients; forward/backward run inside, and on exit every trainable
                  parameter holds its gradient;

plus `after_update()` (parameters changed), `state()` / `load_state()` for checkpoints, `save(dir, meta)` for
the expert, and `close()` to give the base model back untouched.

SVF, and why it keeps W' merged. Recomposing W' = W + U diag(σ ⊙ (z − 1)) Vᵀ costs m·n·r multiply-adds per
matrix (≈ 46 G for SmolLM2's 90 MLP matrices), about as much as a forward pass over 350 tokens. The SVF
layers' own `train` mode pays it in every forward (and again in backward), i.e. once per micro-batch and once
more to merge for rollouts. Here W' is written into the layer weights at most once per optimizer step (fp32,
cast back, checked finite, the originals kept so restoring is exact; lazily, before the weights are next
used), and used as it is by rollouts, by the gradient pass and by evaluation. The gradient pass lets
autograd produce G = ∂L/∂W' for each adapted weight (accumulating over micro-batches), then maps it to z
once per step with the exact chain rule

    ∂L/∂z_i = σ_i · u_iᵀ G v_i = σ_i · ((Uᵀ G) ⊙ Vᵀ)_i summed over columns       (m·n·r, once per step)

and hands ∂L/∂z_eff to autograd so either parametrization (direct z, or the paper code's sigmoid + rescale)
gets its gradient. `reference()` swaps the original weights in and W' back out by copying (no recomposition).
Tests check this gradient against the SVF layers' own `train` mode.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from torch import nn

from ..adapted import AdaptedModel
from ..errors import T2Error
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
    """SVF expert training on an `AdaptedModel` (see the module docstring for the merged-weight scheme)."""

    method = "svf"

    def __init__(self, am: AdaptedModel, init: ZInit = ZInit(), seed: int = 0):
        self.am = am
        self.model = self.generation_model = am.model
        self.params = am.svf.train_mode(init, seed=seed)  # creates z (or p) in every layer, freezes the rest
        self.layers = list(am.svf.layers.values())
        for m in self.layers:
            m.mode = "base"  # the layer calls its wrapped weight, which holds W' (written by `_sync`)
        self._orig = [m.base.weight.detach().clone() for m in self.layers]
        self._stale = True

    def parameters(self) -> list[nn.Parameter]:
        return list(self.params)

    def after_update(self) -> None:
        """z changed: W' is rewritten before the weights are next used (a run's last update may need none)."""
        self._stale = True

    @torch.no_grad()
    def _sync(self) -> None:
        """Write W' = W + ΔW(z) for the current z into every adapted weight (fp32 math, cast back)."""
        if not self._stale:
            return
        self._stale = False
        for m, orig in zip(self.layers, self._orig):
            z = m.effective_z()
            if bool((z == 1).all()):  # W' = W exactly; skip the m·n·r recomposition (e.g. at the start)
                m.base.weight.copy_(orig)
                continue
            w = (orig.t() if m.transposed else orig).float() + m.delta(z)  # (out, in)
            if not torch.isfinite(w).all():
                raise T2Error("training diverged: W' is not finite; lower --lr or keep --grad-clip")
            m.base.weight.copy_((w.t() if m.transposed else w).to(orig.dtype))

    @contextmanager
    def generating(self) -> Iterator[None]:
        self._sync()
        with torch.no_grad():
            yield

    @contextmanager
    def reference(self) -> Iterator[None]:
        self._sync()
        with torch.no_grad():
            current = [m.base.weight.detach().clone() for m in self.layers]
            for m, orig in zip(self.layers, self._orig):
                m.base.weight.copy_(orig)
            try:
                yield
            finally:
                for m, w in zip(self.layers, current):
                    m.base.weight.copy_(w)

    @contextmanager
    def grad_pass(self) -> Iterator[None]:
        self._sync()
        for m in self.layers:
            m.base.weight.requires_grad_(True)
        ok = False
        try:
            yield
            ok = True
        finally:
            grads = []
            for m in self.layers:
                grads.append(m.base.weight.grad)
                m.base.weight.grad = None
                m.base.weight.requires_grad_(False)
            if ok:
                self._grads_to_z(grads)

    def _grads_to_z(self, grads: list[torch.Tensor | None]) -> None:
        zs, dzs = [], []
        for m, g in zip(self.layers, grads):
            if g is None:
                continue
            G = (g.t() if m.transposed else g).float()  # (out, in) = (m, n)
            dz = m.S * ((m.U.t() @ G) * m.Vh).sum(dim=1)  # (r, m) @ (m, n) ⊙ (r, n) → (r,)
            zs.append(m.effective_z())
            dzs.append(dz)
        if zs:
            torch.autograd.backward(zs, dzs)

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
        for m in self.layers:
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

    @torch.no_grad()
    def close(self) -> None:
        """Put the base weights back bit for bit and unwrap the SVF layers: the model is as it was given."""
        for m, orig in zip(self.layers, self._orig):
            m.base.weight.copy_(orig)
        self.am.svf.detach()
