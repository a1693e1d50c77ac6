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

Cost: one extra copy of the linear weights in memory (`unpack(model)` frees it) and a re-pack after each weight
change (~0.1 s per 100 MB). Results equal `F.linear` up to float rounding (a different summation order), which
can flip a greedy token where two logits tie to ~1e-6. Outside the context, or with gradients enabled, layers
compute as usual.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F
from torch import nn

_ATTR = "_t2_packed"  # (weight identity, version, packed tensor) on the module
BATCH_HINT = 16  # rows the packed layout is tuned for; any row count works


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


def _packable(m) -> bool:
    return (type(m) is nn.Linear and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
            and (m.bias is None or m.bias.dtype == torch.float32))


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w = self.weight
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad) or x.dtype != torch.float32 \
            or w.dtype != torch.float32 or x.device.type != "cpu":
        return F.linear(x, w, self.bias)
    key = (id(w), w.data_ptr(), w._version)
    cached = self.__dict__.get(_ATTR)
    if cached is None or cached[0] != key:
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), BATCH_HINT)
        self.__dict__[_ATTR] = cached = (key, packed)
    bias = None if self.bias is None else self.bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, cached[1], bias, "none", [], "")


@contextlib.contextmanager
def packed_linears(model, enabled: bool = True):
    """Within the block, the model's plain fp32 `nn.Linear` layers compute with packed weights (see module doc)."""
    if not enabled or packing_problem(model) is not None:
        yield False
        return
    patched = []
    try:
        for m in model.modules():
            if _packable(m) and "forward" not in m.__dict__:
                m.forward = types.MethodType(_packed_forward, m)
                patched.append(m)
        yield True
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


def unpack(model) -> int:
    """Free the packed copies kept on `model`'s layers; returns how many were freed."""
    n = 0
    for m in model.modules():
        if m.__dict__.pop(_ATTR, None) is not None:
            n += 1
    return n
