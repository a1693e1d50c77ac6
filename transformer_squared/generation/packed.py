"""Prepacked oneDNN weights for the `nn.Linear` layers while the engine decodes on CPU.

Why: at decoding batch sizes (a few to a few dozen rows) a linear layer is a skinny matrix product, and the
default CPU path (MKL sgemm) repacks the weight on every call. oneDNN with the weight reordered once into its
blocked layout skips that. Measured here (AMD EPYC, AVX-512, one thread, 16 rows): 576→1536 0.42 → 0.29 ms,
the 576→49152 LM head 50 → 17 ms; see bench/README.md for whole-model figures.

How: inside `packed_linears(model)`, every plain `nn.Linear` (fp32, CPU) of the model computes with a packed copy
of its weight. The copy is kept on the module between calls and rebuilt when the weight changes in place (an SVF
merge, an optimizer step: `weight._version` moves) or is replaced. Wrapped layers (SVF, LoRA) are not touched,
but their inner `nn.Linear` is, so merged experts decode packed too; the per-row SVF path adds its own term on
top of the (packed) base layer as before.

Which kernel, by call: a single row (batch-1 decoding) through a small matrix (under `SMALL_GEMV` weights) goes
to `F.linear`, where oneDNN's per-call overhead made it slower (measured on AMD EPYC Zen 1, one row: 576→576
0.06 vs 0.16 ms, 1536→576 0.10 vs 0.23 ms); so does a prefill-sized call (`LARGE_ROWS` rows or more), where
MKL's sgemm, which packs as it goes, beat the weights packed for `BATCH_HINT` rows (SmolLM2's products, one
thread, AMD EPYC Zen 3: 1.07x at 256 rows, 1.05-1.16x at 512-2048; oneDNN still 1.05x ahead at 128); every
other call runs packed. (Fused callers then run the layers one by one: `fused_linear` returns None.)

Per-row SVF experts (an `SVFLinear` in "rows" mode: y = x Wᵀ + ((x V) ⊙ σ(z_row − 1)) Uᵀ) run their factored term
through packed copies of Vᵀ and U as well (built the first time, kept like the others): at decoding batch sizes
that term is two more skinny products per layer, as costly as the layer itself (full-rank factors), and
packing them took a mixed-expert decoding step of SmolLM2 at batch 16 from ~1.7-2x the merged step to ~1.1-1.4x
(one thread, loaded machine; one extra copy of the adapted layers' U and V).

`fused_linear` runs several layers that read the same input (q|k|v, gate|up) as one packed matrix product over
their weights stacked side by side (the fast Llama path uses it): fewer, wider products, one packed copy.

Low precision (`packed_linears(model, precision="int8" | "bf16")`, the engine's fast mode, precision.py): the
same machinery keeps an int8 or bf16 copy instead (under the attribute name + ":int8" / ":bf16", on any batch
size, bf16 on GPUs too), rebuilt on the same weight changes; per-row SVF terms stay exact.

Cost: one extra copy of the linear weights in memory (`unpack(model)` frees it) and a re-pack after each weight
change (~0.1 s per 100 MB). Copies of the model (`copy.deepcopy`, pickling) leave the packed copies behind.
Results equal `F.linear` up to float rounding (a different summation order), which can flip a greedy token where
two logits tie to ~1e-6. Outside the context, or with gradients enabled, layers compute as usual.
"""

from __future__ import annotations

import contextlib
import functools
import types

import torch
import torch.nn.functional as F
from torch import nn

from ..svf import SVFLinear
from . import precision as lowp

# (weight and bias versions, packed weight, bias) on the module; fused copies add "_<name>", an SVF layer's
# per-row factors "U" and "Vh"
_ATTR = "_t2_packed"
BATCH_HINT = 16  # rows the packed layout is tuned for; any row count works
SMALL_GEMV = 1_500_000  # weights: below this, a one-row product runs faster unpacked (see the module doc)
LARGE_ROWS = 256  # rows: from here on (prefill), MKL's F.linear beats the packed weights (see the module doc)


class _Packed(tuple):
    """(key, packed weight, bias) kept on a module. A copy or a pickle of the module drops it (None: rebuilt on
    the next packed call): oneDNN's blocked tensor has no storage, so `copy.deepcopy(model)` and `torch.save`
    would fail on it, and a packed copy belongs to the weights it was made from anyway."""

    __slots__ = ()

    def __deepcopy__(self, memo) -> None:
        return None

    def __reduce__(self):
        return (type(None), ())


def packing_problem(model) -> str | None:
    """Why `model`'s linear layers cannot be packed here, or None if they can."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise") or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return "this torch build lacks oneDNN's packed linear ops"
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu":
        return "packing is for CPU models"
    if not any(_packable(m) for m in model.modules()):
        return "no fp32 nn.Linear layers"
    return None


def _packable(m, precision: str = "exact") -> bool:
    """A plain fp32 nn.Linear that the `precision` kernel can run (exact and int8: on CPU; bf16: anywhere)."""
    return (type(m) is nn.Linear and m.weight.dtype == torch.float32
            and (m.weight.device.type == "cpu" or precision == "bf16")
            and (m.bias is None or m.bias.dtype == torch.float32))


def _packed_forward(self: nn.Linear, x: torch.Tensor, precision: str = "exact") -> torch.Tensor:
    w = self.weight
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad) or x.dtype != torch.float32 \
            or w.dtype != torch.float32 or x.device != w.device:
        return F.linear(x, w, self.bias)
    y = _packed_product(self, _ATTR, [self], x, precision)
    return F.linear(x, w, self.bias) if y is None else y


def _packed_svf_forward(self, x: torch.Tensor) -> torch.Tensor:
    """`SVFLinear.forward` with the per-row term's two products packed (the module doc); any other case (another
    mode, gradients, not fp32 on CPU) goes to the layer's own forward."""
    scale = self.row_scale
    if self.mode != "rows" or scale is None or torch.is_grad_enabled() or x.dtype != torch.float32 \
            or x.device.type != "cpu" or self.U.dtype != torch.float32:
        return type(self).forward(self, x)
    y = self.base(x)
    h = _packed_matmul(self, _ATTR + "Vh", self.Vh, x)  # (..., r)
    scale = scale if x.dim() == 2 else scale[:, None, :]  # (B, r) or (B, 1, r)
    return y + _packed_matmul(self, _ATTR + "U", self.U, h * scale).to(y.dtype)


def _packed_matmul(owner: nn.Module, attr: str, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x @ weightᵀ with a packed copy of `weight` kept on `owner` (unpacked for one row through a small one)."""
    y = _packed_product(owner, attr, [types.SimpleNamespace(weight=weight, bias=None)], x)
    return F.linear(x, weight) if y is None else y


def fusable(linears, precision: str = "exact") -> bool:
    """Whether `fused_linear` can run these layers: plain fp32 nn.Linear of one input size that the `precision`
    kernel runs (`_packable`), no gradients."""
    return (not torch.is_grad_enabled() and all(_packable(m, precision) for m in linears)
            and len({m.in_features for m in linears}) == 1 and len({m.weight.device for m in linears}) == 1)


def fused_linear(owner: nn.Module, name: str, linears, x: torch.Tensor,
                 precision: str = "exact") -> torch.Tensor | None:
    """`torch.cat([m(x) for m in linears], -1)` as one packed product (in `precision`: exact, int8 or bf16,
    precision.py), or None where the separate calls are the faster choice (exact: one row through small
    weights). The packed stack of the weights is kept on `owner` under `name` and rebuilt when any of them
    changes; `unpack(model)` frees it. Call only where `fusable(linears, precision)`."""
    return _packed_product(owner, f"{_ATTR}_{name}", linears, x, precision)


def _packed_product(owner: nn.Module, attr: str, linears, x: torch.Tensor,
                    precision: str = "exact") -> torch.Tensor | None:
    """x through `linears` side by side with one packed weight (exact: oneDNN fp32; int8 / bf16: precision.py's
    kernels), kept on `owner` under `attr` and rebuilt when a weight or bias is replaced or written in place (an
    SVF merge, an optimizer step); None (exact only) for one row through small weights and for `LARGE_ROWS` rows
    or more, where the unpacked product is faster."""
    weights = [m.weight for m in linears]
    if precision == "exact":
        rows = x.numel() // x.shape[-1]
        if rows >= LARGE_ROWS or rows == 1 and sum(w.numel() for w in weights) < SMALL_GEMV:
            return None
    if precision != "exact":
        attr = f"{attr}:{precision}"  # its own copy: one layer may run exact and fast in turn
    key = tuple((id(t), t.data_ptr(), t._version) for m in linears for t in (m.weight, m.bias) if t is not None)
    cached = owner.__dict__.get(attr)
    if cached is None or cached[0] != key:
        stacked = weights[0].detach() if len(weights) == 1 else torch.cat([w.detach() for w in weights])
        bias = None
        if any(m.bias is not None for m in linears):
            bias = torch.cat([m.bias.detach() if m.bias is not None else w.new_zeros(w.shape[0])
                              for m, w in zip(linears, weights)])
        if precision == "exact":
            cached = _Packed((key, torch.ops.mkldnn._reorder_linear_weight(stacked, BATCH_HINT), bias))
        else:
            cached = _Packed((key, lowp.prepare(precision, stacked, bias)))
        owner.__dict__[attr] = cached
    if precision != "exact":
        return lowp.run(cached[1], x)
    return torch.ops.mkldnn._linear_pointwise(x, cached[1], cached[2], "none", [], "")


@contextlib.contextmanager
def packed_linears(model, enabled: bool = True, precision: str = "exact"):
    """Within the block, the model's plain fp32 `nn.Linear` layers, and the per-row term of SVF layers in rows
    mode, compute with packed weights (see module doc). `precision` (a resolved one: exact, int8 or bf16,
    precision.py): the kernel of the linear layers; the per-row SVF term stays exact. `enabled=False` turns off
    exact packing only: a low precision always patches the layers (it is their only way to run)."""
    exact = precision == "exact"
    if exact and (not enabled or packing_problem(model) is not None):
        yield False
        return
    patched = []
    pack_rows = packing_problem(model) is None
    try:
        for m in model.modules():
            if "forward" in m.__dict__:
                continue
            if _packable(m, precision):
                m.forward = functools.partial(_packed_forward, m, precision=precision)
                patched.append(m)
            elif isinstance(m, SVFLinear) and pack_rows:  # only its per-row term; its base layer is patched as a
                m.forward = types.MethodType(_packed_svf_forward, m)  # linear
                patched.append(m)
        yield bool(patched)
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


def unpack(model) -> int:
    """Free the packed copies kept on `model`'s layers; returns how many were freed."""
    n = 0
    for m in model.modules():
        for attr in [a for a in m.__dict__ if a.startswith(_ATTR)]:
            del m.__dict__[attr]
            n += 1
    return n
