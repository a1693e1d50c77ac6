"""Which weight matrices SVF adapts.

Groups (combine with commas, e.g. `mlp,attn`):
- `mlp`  the feed-forward matrices of every decoder block (paper default: gate/up/down in Llama-style models,
         c_fc/c_proj in GPT-2, fc1/fc2 in Phi);
- `attn` the query and value projections (the paper's attention ablation; GPT-2's fused c_attn);
- `all`  every linear map inside the decoder blocks.
Anything else is a module-name pattern (fnmatch, e.g. `*.q_proj`, `model.layers.1?.mlp.*`), matched against
every nn.Linear / GPT-2 Conv1D in the model.

Groups only look inside the language model: a vision tower (LLaVA) or a projector is never a target.
"""

from __future__ import annotations

import fnmatch
import re

import torch
from torch import nn

from .errors import T2Error

GROUPS = ("mlp", "attn", "all")
_EXCLUDED = {"vision_tower", "vision_model", "visual", "multi_modal_projector", "audio_tower", "lm_head"}
_ATTN_QV = {"q_proj", "v_proj", "c_attn", "query", "value", "qkv_proj", "query_key_value", "Wqkv"}
_ATTN_PARENTS = {"self_attn", "attn", "attention", "self_attention"}
_MLP_PARENTS = {"mlp", "feed_forward", "ffn"}


def is_linear(module: nn.Module) -> bool:
    """nn.Linear, or GPT-2's Conv1D (weight stored transposed: (in, out))."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The (out, in) matrix W of y = x Wᵀ + b, whatever the module's storage layout (a view, no copy)."""
    w = module.weight
    return w.t() if type(module).__name__ == "Conv1D" else w


def _in_decoder(name: str) -> bool:
    parts = name.split(".")
    return not (_EXCLUDED & set(parts)) and any(p.isdigit() for p in parts)


def _in_group(name: str, group: str) -> bool:
    parts = name.split(".")
    if group == "all":
        return True
    if group == "mlp":
        return len(parts) >= 2 and parts[-2] in _MLP_PARENTS
    if group == "attn":
        return len(parts) >= 2 and parts[-2] in _ATTN_PARENTS and parts[-1] in _ATTN_QV
    raise AssertionError(group)


def resolve_targets(model: nn.Module, targets: str | list[str] = "mlp") -> list[str]:
    """Names of the modules selected by `targets`, in model order. A T2Error if nothing matches."""
    items = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    if not items:
        raise T2Error("no targets given; use mlp, attn, all, or module-name patterns such as '*.q_proj'")
    linear = [(n, m) for n, m in model.named_modules() if n and is_linear(m)]
    chosen: list[str] = []
    for item in items:
        if item in GROUPS:
            hits = [n for n, _ in linear if _in_decoder(n) and _in_group(n, item)]
        else:
            pattern = re.compile(fnmatch.translate(item))
            hits = [n for n, _ in linear if pattern.match(n)]
        if not hits:
            raise T2Error(f"target {item!r} matches no linear layer of {type(model).__name__}; "
                          f"try `t2 info --targets all` to list them")
        chosen.extend(h for h in hits if h not in chosen)
    order = {n: i for i, (n, _) in enumerate(linear)}
    return sorted(chosen, key=order.__getitem__)


def layer_index(name: str) -> int | None:
    """The decoder-block index in a module name (`model.layers.12.mlp.up_proj` → 12), or None."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def matrix_kind(name: str) -> str:
    """The per-block role of a module (`model.layers.12.mlp.up_proj` → `mlp.up_proj`)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[i + 1:])
    return name
