"""Singular Value Fine-tuning: where z gets applied, in every mode.

An expert scales the singular values of each adapted matrix, W' = U diag(σ ⊙ z) Vᵀ (SPEC §1). `apply_z` below
is the one function that turns z into weights or outputs, for everything in the library:

    apply_z(U, σ, Vᵀ, z)          dense     U diag(s) Vᵀ        (m, n), fp32
    apply_z(U, σ, Vᵀ, z, x)       factored  ((x V) ⊙ s) Uᵀ      (..., m), the matrix never formed
    s = singular_scale(σ, z) = σ ⊙ (z − 1)  (delta=True, the default)   or   σ ⊙ z  (delta=False)

(`apply_scale` is its second half, for callers that keep s.) Merged weights use the mathematically identical
*delta form* W' = W + U diag(σ ⊙ (z − 1)) Vᵀ, because it is exact at z = 1 (the base model bit for bit, where
recomposing U diag(σ) Vᵀ in fp32 is off by ~1e-6) and because its factored form is cheap. `SVFLinear` wraps one
nn.Linear (or GPT-2 Conv1D), owns all of its state, and runs in one of four modes (`Mode`: other modules ask its
properties, such as `plain_linear`, and call the layer's methods; they never set its state):

- `BASE`:   the wrapped layer as it is (after `restore`, or before any expert);
- `MERGED`: dense W' = W + apply_z(z) written into the layer's weight in place (`merged_weight`: fp32 math, cast
            back, checked finite) for full-speed inference; the original is kept, so `restore` is bit-exact (no
            subtraction). Used by `SVF.merge`, the weight cache (adaptation/cache.py stores and mixes these W'
            and writes them back with `load_merged`), export (`SVFLinear.merged_weight`: the same W', the layer
            untouched) and training rollouts (`SVF.merge_trainable`: W' of the trainable z, recomposed only
            when z has changed);
- `ROWS`:   every sequence in the batch carries its own z (serving mixed requests in one batch), factored:
            y = x Wᵀ + b + apply_z(z_row, x), exact at z_row = 1;
- `TRAIN`:  gradients flow to the trainable z only. The value is the merged layer's, y = x W'ᵀ + b (W' of the
            current z, merged when z changes), and the backward is that of apply_z's factored form
            (`_TrainLinear`): ∂L/∂z_i = σ_i Σ_t (x_t V)_i (∂L/∂y_t U)_i, with neither ∂L/∂W' (an out×in weight
            gradient per micro-batch) nor its chain rule to z (out·in·r per step) ever formed.

Parametrizations of the trainable z (the *effective* z is what experts store):
- `direct` (default): z itself, initialised at 1. The model starts exactly at the base policy, z mixes
  linearly, and each singular value's multiplier is learned independently.
- `reference` (the paper's code): z = c · sigmoid(p) · max_mult with p ~ 0.1 + 0.01·N(0, 1) and the
  nuclear-norm-preserving rescale c = Σσ / Σ(σ ⊙ sigmoid(p) · max_mult); a constant z is then the identity,
  so only the shape of z matters.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Iterator, Mapping

import torch
from torch import nn

from .errors import T2Error
from .svd import Factors
from .targets import is_linear

PARAMETRIZATIONS = ("direct", "reference")


class Mode(str, Enum):
    """How an SVFLinear computes its output (the module docstring). A str enum: `Mode.ROWS == "rows"`."""

    BASE = "base"
    TRAIN = "train"
    MERGED = "merged"
    ROWS = "rows"

    @property
    def plain_linear(self) -> bool:
        """The wrapped layer's weight alone computes the output (a decoding engine may use that weight directly)."""
        return self in (Mode.BASE, Mode.MERGED)

    @property
    def has_row_state(self) -> bool:
        """The output depends on per-row state set by `SVF.set_rows` (rows cannot be regrouped freely)."""
        return self is Mode.ROWS

    @property
    def trains(self) -> bool:
        """The output is differentiable in the trainable z."""
        return self is Mode.TRAIN


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


# -- the math: pure functions --------------------------------------------------------------------------------------
def singular_scale(S: torch.Tensor, z: torch.Tensor, *, delta: bool = True) -> torch.Tensor:
    """s = σ ⊙ (z − 1) (`delta`) or σ ⊙ z, in σ's dtype: the factor `apply_z` puts between U and Vᵀ."""
    return S * (z.to(S.dtype) - 1.0) if delta else S * z.to(S.dtype)


def apply_z(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, z: torch.Tensor, x: torch.Tensor | None = None,
            *, delta: bool = True) -> torch.Tensor:
    """The one place z is applied: U diag(s) Vᵀ with s = σ ⊙ (z − 1) (`delta`) or σ ⊙ z, dense or applied to x.

    U (m, r), S (r,), Vh (r, n). Without x: the (m, n) matrix, in the factors' dtype (fp32). With x (..., n): its
    product with x without forming it, ((x V) ⊙ s) Uᵀ of shape (..., m), in x's dtype; z may then be (B, r), one
    z per row of x (B, n) or (B, T, n). Differentiable in z and x (the training mode's gradient).
    """
    return apply_scale(U, singular_scale(S, z, delta=delta), Vh, x)


def apply_scale(U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """`apply_z` after its first step, for callers that keep s = `singular_scale(σ, z)` (per-row serving)."""
    if x is None:
        return (U * s) @ Vh  # (m, r) * (r,) @ (r, n) -> (m, n)
    if s.dim() == 2 and x.dim() == 3:
        s = s[:, None, :]  # (B, 1, r): one z per sequence
    h = x @ Vh.t().to(x.dtype)  # (..., n) @ (n, r) -> (..., r)
    return (h * s.to(x.dtype)) @ U.t().to(x.dtype)  # (..., r) @ (r, m) -> (..., m)


def delta_weight(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """ΔW = U diag(σ ⊙ (z − 1)) Vᵀ in fp32, shape (out, in) (`apply_z`, dense)."""
    return apply_z(U, S, Vh, z.float())


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


class _TrainLinear(torch.autograd.Function):
    """TRAIN mode's linear: y = x W'ᵀ + b with W' = W + apply_z(z) already merged into the weight, so its value
    is exactly the merged layer's (the rollouts' own weights; the base layer bit for bit at z = 1), and the
    backward of `apply_z`'s factored form, so neither ∂L/∂W' nor a chain rule through it is ever formed:

        s = σ ⊙ z,  h = x V,  g = (∂L/∂y) U:   ∂L/∂s = Σ_tokens h ⊙ g,   ∂L/∂x = (g ⊙ s) Vᵀ  or  (∂L/∂y) W'

    (autograd takes ∂L/∂s on to z through s = σ ⊙ z and either parametrization). ∂L/∂s is the exact derivative
    of the forward. ∂L/∂x takes whichever form costs less once g exists: (g ⊙ s) Vᵀ, r·in multiply-adds per
    token, when out > in (r = in), else (∂L/∂y) W', out·in = r·in; the factored form leaves out the SVD's
    reconstruction error W − U diag(σ) Vᵀ, so gradients match the dense chain rule to ~1e-6 relative.

    Per token this costs a frozen layer's forward + input gradient (2·out·in multiply-adds, what LoRA pays on
    an untouched matrix) plus 2·in² when out > in (h, and the cheaper ∂L/∂x), plus out·in + out² when out < in
    (h cannot share the exact forward there). A factored forward, y = (h ⊙ s) Uᵀ, would make the latter 2·out²
    too (Qwen2.5-0.5B's down_proj: 1.2x instead of 1.6x a frozen layer), but the layer's value would then be off
    the merged one by the reconstruction error, not the base layer bit for bit at z = 1.
    """

    @staticmethod
    def forward(ctx, x, s, w, bias, U, Vh):  # x (..., n), s (r,), w (m, n), U (m, r), Vh (r, n)
        ctx.save_for_backward(x, s, w, U, Vh)
        return nn.functional.linear(x, w, bias)

    @staticmethod
    def backward(ctx, dy):  # dy (..., m)
        x, s, w, U, Vh = ctx.saved_tensors
        g = dy @ U.to(dy.dtype)  # (..., r)
        h = x @ Vh.t().to(x.dtype)  # (..., r)
        ds = (h.float() * g.float()).reshape(-1, s.numel()).sum(0)  # (r,), fp32 accumulation
        dx = None
        if ctx.needs_input_grad[0]:
            factored = w.shape[0] > w.shape[1]  # out > in: r = in, so r·in < out·in
            dx = (g * s.to(g.dtype)) @ Vh.to(g.dtype) if factored else dy @ w  # (..., n)
        return dx, ds.to(s.dtype), None, None, None, None


class SVFLinear(nn.Module):
    """An nn.Linear / Conv1D whose singular values an expert can rescale (see the module docstring).

    Its state (mode, the original weight while merged, per-row z, the trainable z) changes only through its
    methods: `merge`, `load_merged`, `restore`, `set_rows`, `select_rows`, `start_training`, `merge_trainable`,
    `resume_training`, `as_base`.
    """

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
        self._mode = Mode.BASE
        self.param: nn.Parameter | None = None  # trainable z (direct) or p (reference), while training
        self.parametrization = "direct"
        self.max_mult = 1.0
        self._orig: torch.Tensor | None = None  # the original weight while the weight holds anything else
        self._merged_z: torch.Tensor | None = None  # the effective z the weight holds W' of (training)
        self._row_scale: torch.Tensor | None = None  # (B, r): σ ⊙ (z_row − 1), ROWS mode

    # -- shapes and matrices -------------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def row_scale(self) -> torch.Tensor | None:
        """ROWS mode: (B, r), row b's σ ⊙ (z_b − 1) (read-only; set through `SVF.set_rows`)."""
        return self._row_scale

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

    def original_weight(self) -> torch.Tensor:
        """The base weight in storage layout, whatever the mode (do not write to it)."""
        return self._orig if self._orig is not None else self.base.weight

    def delta(self, z: torch.Tensor) -> torch.Tensor:
        """ΔW = U diag(σ ⊙ (z − 1)) Vᵀ in fp32, shape (out, in)."""
        return delta_weight(self.U, self.S, self.Vh, z)

    def merged_weight(self, z: torch.Tensor) -> torch.Tensor:
        """W' = W + ΔW(z) in storage layout and the weight's dtype, as `merge` writes it; the layer is untouched."""
        orig = self.original_weight()
        w = orig.t() if self.transposed else orig  # (out, in)
        new = merged_weight(w, self.U, self.S, self.Vh, z)
        return (new.t() if self.transposed else new).contiguous()

    def effective_z(self) -> torch.Tensor:
        """The effective multipliers of the trainable parameter (ones when there is none)."""
        if self.param is None:
            return torch.ones_like(self.S)
        if self.parametrization == "direct":
            return self.param
        return reference_z(self.param, self.S, self.max_mult)

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mode.plain_linear:
            return self.base(x)
        if self._mode is Mode.TRAIN:
            z = self.effective_z()
            self._sync_trainable(z.detach())
            s = singular_scale(self.S, z, delta=False)  # (r,): σ ⊙ z, differentiable in the trainable z
            return _TrainLinear.apply(x, s, self.weight_matrix(), self.bias, self.U, self.Vh)
        y = self.base(x)  # ROWS: x (B, T, n) or (B, n); the per-row term in fp32
        if self._row_scale is None:
            return y
        return y + apply_scale(self.U, self._row_scale, self.Vh, x.float()).to(y.dtype)  # (B, T, m)

    # -- state changes -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _write(self, weight: torch.Tensor) -> None:
        """Put `weight` (storage layout) into the layer, keeping the original so `restore` is exact."""
        if self._orig is None:
            self._orig = self.base.weight.detach().clone()
        self.base.weight.copy_(weight)
        self._row_scale = None
        self._mode = Mode.MERGED

    @torch.no_grad()
    def merge(self, z: torch.Tensor) -> None:
        """Write W' = W + ΔW(z) into the weight in place (computed in fp32, cast back, checked finite)."""
        self.param, self._merged_z = None, None
        self._merge(z)

    def _merge(self, z: torch.Tensor) -> None:
        if bool((z == 1).all()):  # W' = W exactly: skip the m·n·r recomposition
            self._write(self.original_weight())
        else:
            self._write(self.merged_weight(z))

    def load_merged(self, weight: torch.Tensor) -> None:
        """Write a W' computed earlier by `merged_weight` (or a mix of such W'), e.g. from a weight cache."""
        self.param, self._merged_z = None, None
        self._write(weight)

    @torch.no_grad()
    def restore(self) -> None:
        """Back to the base weights, bit for bit, from any mode (a trainable z is dropped)."""
        if self._orig is not None:
            self.base.weight.copy_(self._orig)
            self._orig = None
        self.param, self._merged_z, self._row_scale = None, None, None
        self._mode = Mode.BASE

    def set_rows(self, z_table: torch.Tensor, index: torch.Tensor) -> None:
        """ROWS mode: row b uses z_table[index[b]] (z_table (K, r); a row of ones is the base layer)."""
        self.restore()
        # One scale per distinct z, gathered per row (a server calls this whenever rows join its batch).
        table = singular_scale(self.S, z_table.to(self.S.device).float())  # (K, r)
        self._row_scale = table[index.to(self.S.device)]  # (B, r)
        self._mode = Mode.ROWS

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the given rows of the per-row state (when a generation engine drops finished rows)."""
        if self._row_scale is not None:
            self._row_scale = self._row_scale.index_select(0, index.to(self._row_scale.device))

    # -- training ------------------------------------------------------------------------------------------
    def start_training(self, value: torch.Tensor, parametrization: str = "direct",
                       max_mult: float = 1.0) -> nn.Parameter:
        """TRAIN mode from the base weights, with a new trainable z (direct) or p (reference) set to `value`."""
        self.restore()
        self.parametrization, self.max_mult = parametrization, max_mult
        self.param = nn.Parameter(value.detach().float().clone().to(self.S.device))
        self._mode = Mode.TRAIN
        return self.param

    @torch.no_grad()
    def merge_trainable(self) -> None:
        """MERGED mode with W' of the trainable z (kept trainable); no recomposition when z is unchanged."""
        if self.param is None:
            raise T2Error("this SVF layer has no trainable z; call SVF.train_mode first")
        self._sync_trainable(self.effective_z().detach())
        self._mode = Mode.MERGED

    @torch.no_grad()
    def _sync_trainable(self, z: torch.Tensor) -> None:
        """Make the weight hold W' of the trainable z (recomposed only if z changed since the last time)."""
        if self._merged_z is not None and torch.equal(z, self._merged_z):
            return
        mode = self._mode
        try:
            self._merge(z)
        except T2Error:
            raise T2Error("training diverged: W' is not finite; lower --lr or keep --grad-clip") from None
        self._merged_z, self._mode = z.clone(), mode

    def resume_training(self) -> None:
        """TRAIN mode again for the trainable z (a weight merged by `merge_trainable` is kept for later)."""
        if self.param is None:
            raise T2Error("this SVF layer has no trainable z; call SVF.train_mode first")
        self._mode = Mode.TRAIN

    @contextmanager
    def as_base(self) -> Iterator[None]:
        """Temporarily the base layer (by copies, no recomposition), then exactly the state it had."""
        mode, current = self._mode, None
        with torch.no_grad():
            if self._orig is not None:
                current = self.base.weight.detach().clone()
                self.base.weight.copy_(self._orig)
        self._mode = Mode.BASE
        try:
            yield
        finally:
            with torch.no_grad():
                if current is not None:
                    self.base.weight.copy_(current)
            self._mode = mode


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
            if isinstance(init, Mapping):
                params.append(m.start_training(init[n], "direct"))
            elif init.parametrization == "direct":
                params.append(m.start_training(torch.ones(m.rank) + init.noise * torch.randn(m.rank, generator=gen)))
            else:
                value = init.p_mean + init.p_std * torch.randn(m.rank, generator=gen)
                params.append(m.start_training(value, "reference", init.max_mult))
        return params

    def merge_trainable(self) -> None:
        """Every layer computes with W' of its trainable z merged into its weight (rollouts, evaluation): full
        inference speed, recomposed only for layers whose z changed since their last merge."""
        for m in self.layers.values():
            m.merge_trainable()

    def resume_training(self) -> None:
        """Every layer applies its trainable z factored again, differentiably (the gradient pass)."""
        for m in self.layers.values():
            m.resume_training()

    @contextmanager
    def base_weights(self) -> Iterator[None]:
        """Temporarily the base model (e.g. the KL reference inside a gradient pass), then the state as it was."""
        with ExitStack() as stack:
            for m in self.layers.values():
                stack.enter_context(m.as_base())
            yield

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
            m.merge(z[n])

    def restore(self) -> None:
        """All layers back to the base weights, bit-exact, in base mode."""
        for m in self.layers.values():
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
        # One z per distinct expert, gathered per row by the layers: many rows share few experts.
        distinct: dict[int, int] = {}
        for z in zs:
            if z is not None and id(z) not in distinct:
                self._check(z)
                distinct[id(z)] = len(distinct) + 1
        table_z = [z for z in {id(z): z for z in zs if z is not None}.values()]
        index = torch.tensor([0 if z is None else distinct[id(z)] for z in zs], dtype=torch.long)
        for n, m in self.layers.items():
            table = torch.ones(len(table_z) + 1, m.rank)  # (K + 1, r); row 0: z = 1, the base weights
            for k, z in enumerate(table_z, 1):
                table[k] = z[n].float()
            m.set_rows(table, index)

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the given rows of the per-row state (when a generation engine drops finished rows)."""
        for m in self.layers.values():
            m.select_rows(index)
