"""Singular Value Fine-tuning: where z gets applied.

An expert scales the singular values of each adapted matrix, W' = U diag(σ ⊙ z) Vᵀ (SPEC §1). We always
compute it in the mathematically identical *delta form*

    W' = W + U diag(σ ⊙ (z − 1)) Vᵀ

because it is exact at z = 1 (the base model bit for bit, where recomposing U diag(σ) Vᵀ in fp32 is off by
~1e-5) and because its factored form is cheap. `SVFLinear` wraps one nn.Linear (or GPT-2 Conv1D) and runs in
one of four modes:

- `base`:    the wrapped layer as it is (after `restore`, or before any expert);
- `train`:   W' recomposed in every forward pass from a trainable parameter; gradients flow to z only;
- `merged`:  dense W' written into the layer's weight in place, for full-speed inference; the original is
             kept, so `restore` is bit-exact (no division, no subtraction);
- `rows`:    every sequence in the batch carries its own z (serving mixed requests in one batch), computed
             factored: y = x Wᵀ + b + ((x V) ⊙ σ(z_row − 1)) Uᵀ.

Parametrizations of the trainable z (the *effective* z is what experts store):
- `direct` (default): z itself, initialised at 1. The model starts exactly at the base policy, z mixes
  linearly, and each singular value's multiplier is learned independently.
- `reference` (the paper's code): z = c · sigmoid(p) · max_mult with p ~ 0.1 + 0.01·N(0, 1) and the
  nuclear-norm-preserving rescale c = Σσ / Σ(σ ⊙ sigmoid(p) · max_mult); a constant z is then the identity,
  so only the shape of z matters.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from .errors import T2Error
from .svd import Factors
from .targets import is_linear

PARAMETRIZATIONS = ("direct", "reference")
MODES = ("base", "train", "merged", "rows")


@dataclass(frozen=True)
class ZInit:
    """How trainable z starts: `direct` at 1 (+ optional noise); `reference` p = mean + std·N(0, 1)."""

    parametrization: str = "direct"
    noise: float = 0.0  # direct: z = 1 + noise·N(0, 1)
    p_mean: float = 0.1  # reference: pre-sigmoid init (reference code's values)
    p_std: float = 0.01
    max_mult: float = 1.0

    def __post_init__(self):
        if self.parametrization not in PARAMETRIZATIONS:
            raise T2Error(f"unknown parametrization {self.parametrization!r}; choose from {', '.join(PARAMETRIZATIONS)}")


def delta_weight(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """ΔW = U diag(σ ⊙ (z − 1)) Vᵀ in fp32, shape (out, in): the one place the SVF delta is computed."""
    return (U * (S * (z.float() - 1.0))) @ Vh  # (m, r) * (r,) @ (r, n) -> (m, n)


def reference_z(p: torch.Tensor, S: torch.Tensor, max_mult: float = 1.0) -> torch.Tensor:
    """The reference code's z = c · sigmoid(p) · max_mult, c = Σσ / Σ(σ ⊙ sigmoid(p) · max_mult)."""
    z = torch.sigmoid(p) * max_mult
    return z * (S.sum() / (S * z).sum())  # nuclear norm of W' equals that of W


@torch.no_grad()
def merged_weight(w: torch.Tensor, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Dense W' = W + ΔW(z) for an (out, in) matrix: fp32 math, checked finite, cast back to W's dtype."""
    new = w.float() + delta_weight(U, S, Vh, z.to(S.device))
    if not torch.isfinite(new).all():
        raise T2Error("merging this expert gives non-finite weights; the expert is corrupt or its z is extreme")
    return new.to(w.dtype)


class SVFLinear(nn.Module):
    """An nn.Linear / Conv1D whose singular values an expert can rescale (see the module docstring)."""

    def __init__(self, base: nn.Module, factors: Factors):
        super().__init__()
        if not is_linear(base):
            raise TypeError(f"SVFLinear wraps nn.Linear or Conv1D, not {type(base).__name__}")
        self.base = base
        self.transposed = type(base).__name__ == "Conv1D"  # Conv1D stores W as (in, out)
        dev = base.weight.device
        self.register_buffer("U", factors.U.to(dev, torch.float32), persistent=False)  # (m, r)
        self.register_buffer("S", factors.S.to(dev, torch.float32), persistent=False)  # (r,)
        self.register_buffer("Vh", factors.Vh.to(dev, torch.float32), persistent=False)  # (r, n)
        m, n = factors.shape
        if tuple(self.weight_matrix().shape) != (m, n):
            raise T2Error(f"SVD factors of shape {(m, n)} do not fit a weight of shape {tuple(self.weight_matrix().shape)}")
        self.mode = "base"
        self.param: nn.Parameter | None = None  # trainable (train mode): z (direct) or p (reference)
        self.parametrization = "direct"
        self.max_mult = 1.0
        self._orig: torch.Tensor | None = None  # the original weight while merged
        self.row_scale: torch.Tensor | None = None  # (B, r): σ ⊙ (z_row − 1), rows mode

    # -- shapes and matrices -------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def rank(self) -> int:
        return self.S.numel()

    def weight_matrix(self) -> torch.Tensor:
        """W as (out, in), a view of the stored weight."""
        return self.base.weight.t() if self.transposed else self.base.weight

    def delta(self, z: torch.Tensor) -> torch.Tensor:
        """ΔW = U diag(σ ⊙ (z − 1)) Vᵀ in fp32, shape (out, in)."""
        return delta_weight(self.U, self.S, self.Vh, z)

    def effective_z(self) -> torch.Tensor:
        """The effective multipliers of the trainable parameter (train mode)."""
        if self.param is None:
            return torch.ones_like(self.S)
        if self.parametrization == "direct":
            return self.param
        return reference_z(self.param, self.S, self.max_mult)

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in ("base", "merged"):
            return self.base(x)
        if self.mode == "train":
            w = self.weight_matrix().float() + self.delta(self.effective_z())  # (out, in), fp32
            w = w.to(x.dtype)
            return nn.functional.linear(x, w, self.bias)
        # rows: x (B, T, n) or (B, n); row_scale (B, r)
        y = self.base(x)
        if self.row_scale is None:
            return y
        h = x.float() @ self.Vh.t()  # (B, T, r)
        scale = self.row_scale if x.dim() == 2 else self.row_scale[:, None, :]  # (B, 1, r)
        return y + ((h * scale) @ self.U.t()).to(y.dtype)  # (B, T, m)

    # -- merged mode ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, z: torch.Tensor) -> None:
        """Write W' = W + ΔW(z) into the weight in place (computed in fp32, cast back, checked finite)."""
        if self._orig is None:
            self._orig = self.base.weight.detach().clone()
        w = self._orig.t() if self.transposed else self._orig
        new = merged_weight(w, self.U, self.S, self.Vh, z)
        self.base.weight.copy_(new.t() if self.transposed else new)
        self.mode = "merged"

    @torch.no_grad()
    def restore(self) -> None:
        """Back to the base weights, bit for bit, from any mode."""
        if self._orig is not None:
            self.base.weight.copy_(self._orig)
            self._orig = None
        self.row_scale = None
        self.mode = "base"


def wrap(model: nn.Module, factors: Mapping[str, Factors]) -> dict[str, SVFLinear]:
    """Replace each named module by an SVFLinear around it (idempotent). Returns name → SVFLinear."""
    out: dict[str, SVFLinear] = {}
    modules = dict(model.named_modules())
    for name, f in factors.items():
        mod = modules.get(name)
        if mod is None:
            raise T2Error(f"the model has no module {name!r}")
        if isinstance(mod, SVFLinear):
            out[name] = mod
            continue
        wrapped = SVFLinear(mod, f)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, wrapped)
        out[name] = wrapped
    return out


def unwrap(model: nn.Module) -> None:
    """Put the original layers back (restoring their weights first)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, SVFLinear):
            mod.restore()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, mod.base)


def svf_layers(model: nn.Module) -> dict[str, SVFLinear]:
    """The SVFLinear modules of a wrapped model, keyed by the name of the layer they wrap."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SVFLinear)}


class SVF:
    """Controls the SVF layers of one model: attach, train, merge, per-row, restore.

    >>> svf = SVF.attach(model, factors)        # wraps the target layers (mode: base)
    >>> svf.merge(expert.z)                      # dense W' for generation
    >>> svf.restore()                            # the base model again, bit-exact
    """

    def __init__(self, model: nn.Module, layers: dict[str, SVFLinear]):
        self.model = model
        self.layers = layers

    @classmethod
    def attach(cls, model: nn.Module, factors: Mapping[str, Factors]) -> "SVF":
        return cls(model, wrap(model, factors))

    def detach(self) -> None:
        unwrap(self.model)
        self.layers = {}

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    @property
    def num_parameters(self) -> int:
        """Σ r over adapted matrices: the size of one expert."""
        return sum(m.rank for m in self.layers.values())

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {n: tuple(m.weight_matrix().shape) for n, m in self.layers.items()}

    def _check(self, z: Mapping[str, torch.Tensor]) -> None:
        missing = set(self.layers) - set(z)
        extra = set(z) - set(self.layers)
        if missing or extra:
            raise T2Error(f"expert does not fit these layers: {len(missing)} missing, {len(extra)} unknown "
                          f"(e.g. {sorted(missing or extra)[0]!r}); was it trained with other targets?")
        for n, m in self.layers.items():
            if z[n].shape != (m.rank,):
                raise T2Error(f"expert z for {n} has shape {tuple(z[n].shape)}, the model needs ({m.rank},)")

    # -- train ---------------------------------------------------------------------------------------------
    def train_mode(self, init: ZInit | Mapping[str, torch.Tensor] = ZInit(), *, seed: int | None = 0) -> list[nn.Parameter]:
        """Create trainable z (or p) in every layer, freeze everything else; returns the trainable parameters.

        `init` is a ZInit, or a mapping of effective z to start from (direct parametrization only).
        """
        for p in self.model.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        params = []
        for n, m in self.layers.items():
            m.restore()
            if isinstance(init, Mapping):
                value, m.parametrization = init[n].detach().float().clone(), "direct"
            elif init.parametrization == "direct":
                value = torch.ones(m.rank) + init.noise * torch.randn(m.rank, generator=gen)
                m.parametrization = "direct"
            else:
                value = init.p_mean + init.p_std * torch.randn(m.rank, generator=gen)
                m.parametrization, m.max_mult = "reference", init.max_mult
            m.param = nn.Parameter(value.to(m.S.device))
            m.mode = "train"
            params.append(m.param)
        return params

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The raw trainable tensors (z or p), for checkpoints."""
        return {n: m.param.detach().clone() for n, m in self.layers.items() if m.param is not None}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, m in self.layers.items():
                m.param.copy_(state[n])

    def effective_z(self) -> dict[str, torch.Tensor]:
        """The effective multipliers z the layers apply now (what an expert file stores)."""
        with torch.no_grad():
            return {n: m.effective_z().detach().float().cpu().clone() for n, m in self.layers.items()}

    # -- merged --------------------------------------------------------------------------------------------
    def merge(self, z: Mapping[str, torch.Tensor]) -> None:
        """Write W' for every layer (restoring any previous merge first)."""
        self._check(z)
        for n, m in self.layers.items():
            m.param = None
            m.merge(z[n])

    def restore(self) -> None:
        """All layers back to the base weights, bit-exact, in base mode."""
        for m in self.layers.values():
            m.param = None
            m.restore()

    @contextmanager
    def merged(self, z: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
        """Temporarily merge `z` (None: the base model)."""
        if z is None:
            yield
            return
        self.merge(z)
        try:
            yield
        finally:
            self.restore()

    # -- rows ----------------------------------------------------------------------------------------------
    def set_rows(self, zs: list[Mapping[str, torch.Tensor] | None]) -> None:
        """Per-row mode: row b of the next batches uses expert zs[b] (None: the base weights)."""
        # One scale per distinct expert, gathered per row: a server calls this whenever rows join its batch, and
        # many rows share few experts (index 0: the base weights, scale 0).
        distinct: dict[int, int] = {}
        for z in zs:
            if z is not None and id(z) not in distinct:
                self._check(z)
                distinct[id(z)] = len(distinct) + 1
        table_z = [z for z in {id(z): z for z in zs if z is not None}.values()]
        index = torch.tensor([0 if z is None else distinct[id(z)] for z in zs], dtype=torch.long)
        for n, m in self.layers.items():
            m.restore()
            table = torch.zeros(len(table_z) + 1, m.rank, device=m.S.device)  # (K + 1, r)
            for k, z in enumerate(table_z, 1):
                table[k] = m.S * (z[n].to(m.S.device).float() - 1.0)
            m.row_scale = table[index.to(m.S.device)]  # (B, r)
            m.mode = "rows"

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the given rows of the per-row state (when a generation engine drops finished rows)."""
        for m in self.layers.values():
            if m.row_scale is not None:
                m.row_scale = m.row_scale.index_select(0, index.to(m.row_scale.device))
