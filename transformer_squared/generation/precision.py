"""Low-precision decoding ("fast mode"): which precision the engine's linear layers compute in, and the kernels.

    Engine(model, tokenizer, precision="fast")    # int8 or bf16, whichever this device runs fastest; or exact

Precisions (`Engine(precision=...)`, `t2 eval/generate/serve --precision`):

- `exact` (default): the model's own fp32 weights (greedy ids equal `model.generate`'s up to float rounding);
- `int8`: every plain fp32 `nn.Linear` (the LM head included) runs as an int8 product, weights quantised once
  per output channel (symmetric, scale = max|w_row| / 127), activations quantised on the fly per tensor
  (fbgemm's dynamic quantised linear, `torch.ops.quantized.linear_dynamic`), output fp32. CPU only.
  On CPUs without VNNI the activations use 7 bits (`reduce_range`), as torch's own dynamic quantisation does,
  since AVX2's 8-bit multiply-add saturates in 16 bits otherwise;
- `bf16`: the same layers with bfloat16 copies of their weights and inputs (oneDNN-packed on CPUs that have
  native bf16, `F.linear` elsewhere and on GPUs), output fp32;
- `fast`: `bf16` on a GPU with bfloat16 and on CPUs with AMX or AVX512-BF16, `int8` on other x86 CPUs (fbgemm),
  `exact` where neither kernel exists or the model is not fp32 (`resolve_precision`).

Only the matrix products change: embeddings, norms, RoPE, attention and the KV cache stay fp32, and so does the
residual stream between the products. Layers that are not `nn.Linear` (GPT-2's Conv1D) stay exact.

Why these two: measured on the 2-core AMD EPYC Zen 1 here (AVX2, no AVX-512, one thread, SmolLM2-135M's
products, bench/README.md), fbgemm's dynamic int8 products take ~1/3.5 of the fastest fp32 kernel's time at
batch 1, ~1/3 at batch 16 and ~1/2 at batch 64; int8 weight-only products (`_weight_int8pack_mm`, bf16
activations) were slower than fp32 from batch 16 up here, fbgemm's fp16 weights gave only ~1.7x at batch 16,
and bf16 products without native bf16 instructions are several times slower than fp32.

SVF experts: a merged expert is just weights (W'), quantised like any other and re-quantised when the weights
change (an expert switch, an RL step: the copies are keyed on the weights' versions, packed.py). Per-row
experts (y = x Wᵀ + ((x V) ⊙ s) Uᵀ) run their base product in the low precision and keep the per-row term
exact (fp32, packed): a row whose z is 1 gets exactly the low-precision base model's output.

What changes: outputs are no longer those of the fp32 model (greedy ids differ on some rows), and with int8 a
row's result depends slightly on the other rows of its batch (one activation scale per product). The parity
policy (results/README.md, "fast mode"): on a >= 500-item evaluation the fast mode's accuracy must not differ
significantly from exact's (paired test, `t2 compare`).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import T2Error

PRECISIONS = ("exact", "fast", "int8", "bf16")
BATCH_HINT = 16  # rows the oneDNN layout is tuned for (packed.py)


@functools.lru_cache(maxsize=None)
def cpu_features() -> frozenset[str]:
    """This CPU's instruction-set flags that matter here (amx_bf16, avx512_bf16, avx512_vnni, avx2, ...), from
    torch's own detection, else /proc/cpuinfo."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            return frozenset(k for k, v in caps().items() if v is True)
        except Exception:  # noqa: BLE001 - an old or odd build: fall back on the kernel's list
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16)."""
    return bool(cpu_features() & {"amx_bf16", "avx512_bf16"})


def int8_problem(device: torch.device) -> str | None:
    """Why the int8 kernel cannot run on `device`, or None if it can."""
    if device.type != "cpu":
        return f"int8 runs on CPUs (fbgemm), not on {device.type}; use bf16 (or fast) there"
    if "fbgemm" not in torch.backends.quantized.supported_engines or \
            not hasattr(torch.ops.quantized, "linear_dynamic"):
        return "this torch build has no fbgemm (x86 int8 kernels)"
    return None


def bf16_problem(device: torch.device) -> str | None:
    """Why the bf16 kernel cannot run on `device`, or None if it can (on CPUs it always runs, fast or not)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16"
    if device.type not in ("cpu", "cuda"):
        return f"bf16 fast mode supports CPUs and CUDA GPUs, not {device.type}"
    return None


def resolve_precision(precision: str, device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """(what the products compute in: exact | int8 | bf16, why) for a requested precision, on a model whose
    linear weights live on `device` in `dtype`. An explicit int8 / bf16 that cannot run raises `T2Error`."""
    if precision not in PRECISIONS:
        raise T2Error(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "exact":
        return "exact", "requested"
    if dtype != torch.float32:
        if precision != "fast":
            raise T2Error(f"precision {precision!r} converts fp32 weights; this model's are {dtype}")
        return "exact", f"the model is already {dtype}"
    if precision == "fast":
        if device.type == "cuda":
            return ("bf16", "GPU") if bf16_problem(device) is None else ("exact", bf16_problem(device))
        if device.type == "cpu" and native_bf16_cpu():
            return "bf16", "CPU with AMX / AVX512-BF16"
        if int8_problem(device) is None:
            return "int8", "CPU without native bfloat16: int8 dynamic quantisation (fbgemm)"
        return "exact", f"no fast kernel here ({int8_problem(device)})"
    problem = int8_problem(device) if precision == "int8" else bf16_problem(device)
    if problem is not None:
        raise T2Error(f"precision {precision!r}: {problem}")
    return precision, "requested"


def weight_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of `model`'s linear weights (its first parameter's where it has no nn.Linear)."""
    for m in model.modules():
        if type(m) is torch.nn.Linear:
            return m.weight.device, m.weight.dtype
    p = next(model.parameters())
    return p.device, p.dtype


def int8_weight_max() -> int:
    """Largest |q| of an int8 weight. Without VNNI, fbgemm multiplies u8 activations by s8 weights with AVX2's
    vpmaddubsw, whose pair sums saturate at 2^15: 2 * 255 * 127 overflows it (measured: the outputs were noise),
    2 * 255 * 63 does not. So weights get 7 bits there and activations keep 8 (torch's own dynamic quantisation
    does the reverse, `reduce_range`; 7-bit activations measured worse here, activations carrying the outliers:
    KL to fp32 0.19 vs 0.08 on SmolLM2's next-token distributions). With AVX512-VNNI, all 8 bits."""
    return 127 if "avx512_vnni" in cpu_features() else 63


# -- kernels: prepare a weight once, run many products with it -------------------------------------------------
def prepare(precision: str, weight: torch.Tensor, bias: torch.Tensor | None):
    """The low-precision form of an fp32 weight (out, in) and bias (out,), for `run`."""
    weight = weight.detach()
    bias = bias.detach() if bias is not None else None
    if precision == "int8":
        top = int8_weight_max()
        scale = (weight.abs().amax(1) / top).clamp_min(1e-12).double()  # (out,): symmetric, per output channel
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantised tensors are deprecated; still torch's fastest x86 int8
            q = torch.quantize_per_channel(weight.contiguous(), scale, zero, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(q, None)  # the bias is added in fp32 after the rescale
        return ("int8", packed, bias)  # reduce_range without VNNI
    if precision == "bf16":
        w, b = weight.to(torch.bfloat16), bias.to(torch.bfloat16) if bias is not None else None
        if w.device.type == "cpu" and native_bf16_cpu() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            try:
                return ("bf16-packed", torch.ops.mkldnn._reorder_linear_weight(w, BATCH_HINT), b)
            except RuntimeError:  # oneDNN refuses this CPU after all: the plain product
                pass
        return ("bf16", w, b)
    raise ValueError(f"no low-precision kernel {precision!r}")


def run(prepared, x: torch.Tensor) -> torch.Tensor:
    """x (..., in) fp32 through a `prepare`d weight: (..., out) fp32."""
    kind = prepared[0]
    if kind == "int8":
        _, packed, bias = prepared
        # fbgemm quantises its whole input with one scale; rows scaled to max |x| = 1 first (and the outputs
        # scaled back: the product is linear) make that one scale fit every row (see the module docstring).
        # One row (batch-1 decoding) needs no rescale: ~45 us saved per call.
        one_row = x.numel() == x.shape[-1]
        r = None if one_row else x.abs().amax(-1, keepdim=True).clamp_min(1e-30)  # (..., 1)
        xs = (x if one_row else x / r).reshape(-1, x.shape[-1])  # (N, in): fbgemm wants at least 2 dimensions
        y = torch.ops.quantized.linear_dynamic(xs, packed, False).reshape(*x.shape[:-1], -1)  # (..., out)
        if r is not None:
            y = y * r
        return y if bias is None else y + bias
    if kind == "bf16-packed":
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), prepared[1], prepared[2], "none", [],
                                                  "").to(x.dtype)
    return F.linear(x.to(torch.bfloat16), prepared[1], prepared[2]).to(x.dtype)
