"""What a model looks like to SVF: adapted matrices, trainable parameters, and LoRA for comparison."""

from __future__ import annotations

from typing import Any

from torch import nn

from .targets import resolve_targets, weight_matrix

LORA_RANK = 16
LORA_BASELINE_TARGETS = "*.q_proj,*.v_proj"  # the paper's LoRA baseline


def svf_parameters(shapes: dict[str, tuple[int, int]]) -> int:
    """Σ min(m, n): one multiplier per singular value."""
    return sum(min(s) for s in shapes.values())


def lora_parameters(shapes: dict[str, tuple[int, int]], rank: int = LORA_RANK) -> int:
    """Σ rank·(m + n): A (rank × n) and B (m × rank) per matrix."""
    return sum(rank * (m + n) for m, n in shapes.values())


def target_shapes(model: nn.Module, targets: str) -> dict[str, tuple[int, int]]:
    modules = dict(model.named_modules())
    return {n: tuple(weight_matrix(modules[n]).shape) for n in resolve_targets(model, targets)}


def lora_baseline_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """The paper's LoRA targets (q and v projections; GPT-2's fused c_attn)."""
    try:
        return target_shapes(model, LORA_BASELINE_TARGETS)
    except Exception:
        return target_shapes(model, "attn")


def model_info(model: nn.Module, targets: str = "mlp") -> dict[str, Any]:
    """Architecture, sizes, the adapted matrices and parameter counts of SVF vs LoRA (rank 16)."""
    cfg = model.config
    text_cfg = getattr(cfg, "text_config", None) or cfg
    shapes = target_shapes(model, targets)
    by_shape: dict[str, int] = {}
    for s in shapes.values():
        by_shape[f"{s[0]}x{s[1]}"] = by_shape.get(f"{s[0]}x{s[1]}", 0) + 1
    qv = lora_baseline_shapes(model)
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(cfg, "model_type", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": getattr(text_cfg, "num_hidden_layers", None) or getattr(text_cfg, "n_layer", None),
        "hidden_size": getattr(text_cfg, "hidden_size", None) or getattr(text_cfg, "n_embd", None),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "targets": targets,
        "adapted_matrices": len(shapes),
        "matrix_shapes": by_shape,
        "svf_parameters": svf_parameters(shapes),
        "lora_rank": LORA_RANK,
        "lora_qv_parameters": lora_parameters(qv),
        "lora_same_targets_parameters": lora_parameters(shapes),
        "matrices": list(shapes),
    }
