"""Converting between a t2 expert directory and a PEFT SVF adapter directory, both ways, losslessly.

A PEFT SVF adapter directory is what `PeftModel.save_pretrained` writes for an `SVFConfig` adapter:
- `adapter_config.json`: the SVFConfig, with the resolved module names, the matrix shapes, the base model's
  identity (name, type, architecture, weight fingerprint) and, when converted from a t2 expert, its metadata;
- `adapter_model.safetensors`: one fp32 vector per matrix, `base_model.model.<module>.svf_z`: z itself
  (`direct`) or the pre-sigmoid p (`reference`, converted to the effective z with the SVD of the base weights).

z is stored as fp32 on both sides, so expert -> adapter -> expert gives the same tensors and metadata back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import T2Error
from ..experts import Expert
from ..fileio import atomic_path
from ..models import LoadedModel, load_model
from ..svd import decompose, fingerprint, model_fingerprint
from ..svf import reference_z
from .config import PEFT_TYPE, SVFConfig
from .layer import SVFLayer

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
KEY_PREFIX, KEY_SUFFIX = "base_model.model.", ".svf_z"  # PEFT's key for module <name>: prefix + name + suffix


def expert_to_peft(expert: str | Path | Expert, out: str | Path) -> Path:
    """Write expert (a directory or an Expert) as a PEFT SVF adapter directory `out` (atomically)."""
    expert = expert if isinstance(expert, Expert) else Expert.load(expert)
    meta = expert.meta
    shapes = expert.shapes()
    if set(shapes) != set(expert.z):
        raise T2Error(f"expert {expert.name!r} does not record the shapes of its matrices; re-save it with t2")
    base = dict(meta.get("base_model") or {})
    config = SVFConfig(base_model_name_or_path=base.get("name"), targets=meta.get("targets") or "mlp",
                       target_modules=list(expert.z), shapes=shapes, base_identity=base or None,
                       expert_meta=json.loads(json.dumps(meta, default=str)), parametrization="direct")
    tensors = {f"{KEY_PREFIX}{n}{KEY_SUFFIX}": z.detach().float().contiguous().cpu() for n, z in expert.z.items()}
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return out


def read_adapter(adapter: str | Path) -> tuple[SVFConfig, dict[str, torch.Tensor]]:
    """The config and the raw per-module vectors (z or p, keyed by module name) of a PEFT SVF adapter directory."""
    adapter = Path(adapter)
    cfg_path, weights = adapter / ADAPTER_CONFIG, adapter / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise T2Error(f"{adapter}: not a PEFT adapter directory (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise T2Error(f"{cfg_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if raw.get("peft_type") != PEFT_TYPE:
        raise T2Error(f"{adapter}: a {raw.get('peft_type')} adapter, not an SVF one; only SVF adapters convert "
                      f"to t2 experts (for LoRA, train with t2 train --method lora)")
    config = SVFConfig.from_pretrained(str(adapter))
    try:
        tensors = load_file(str(weights))
    except Exception as e:
        raise T2Error(f"{weights}: unreadable ({str(e).splitlines()[0]})") from None
    vectors: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if not (key.startswith(KEY_PREFIX) and key.endswith(KEY_SUFFIX)) or t.dim() != 1:
            raise T2Error(f"{weights}: unexpected tensor {key!r} of shape {tuple(t.shape)} in an SVF adapter")
        vectors[key[len(KEY_PREFIX):-len(KEY_SUFFIX)]] = t.float()
    shapes = config.shapes or {}
    if set(shapes) != set(vectors):
        raise T2Error(f"{adapter}: its config lists {len(shapes)} matrices, its weights hold {len(vectors)}")
    for n, t in vectors.items():
        if t.numel() != min(shapes[n]) or not torch.isfinite(t).all():
            raise T2Error(f"{weights}: the vector for {n} is not {min(shapes[n])} finite numbers")
    # Model order: the config's target_modules list keeps it (its shapes dict and safetensors sort their keys).
    order = config.target_modules if isinstance(config.target_modules, list) else []
    order = [n for n in order if n in vectors] + sorted(set(vectors) - set(order))
    return config, {n: vectors[n] for n in order}


def peft_to_expert(adapter: str | Path, out: str | Path | None = None, *, model: Any = None,
                   meta: Mapping[str, Any] | None = None) -> Expert:
    """The t2 expert of a PEFT SVF adapter directory (saved to `out` when given).

    A `reference`-parametrized adapter stores p; its effective z needs the singular values of the base weights,
    so `model` (a spec, a LoadedModel, the PEFT model that trained it, or a plain model; default: the adapter's base
    model name) is loaded and decomposed (the SVD cache makes that cheap the second time). `meta` is merged into the expert's metadata (task, domain, ...).
    """
    config, vectors = read_adapter(adapter)
    if config.parametrization == "reference":
        vectors = _reference_to_z(config, vectors, model)
    base = dict(config.base_identity or {})
    if config.expert_meta:
        info = dict(config.expert_meta)  # converted from a t2 expert: its metadata back, unchanged
    else:
        info = {"name": Path(out).name if out else Path(adapter).name, "task": None, "domain": None,
                "targets": config.targets,
                "training": {"via": "peft", "parametrization": config.parametrization,
                             "max_mult": config.max_mult}}
    info.update({"base_model": base, "shapes": {n: list(config.shapes[n]) for n in vectors}, **dict(meta or {})})
    expert = Expert(vectors, info)
    if out is not None:
        expert.save(out)
    return expert


def _reference_to_z(config: SVFConfig, p: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    if isinstance(model, nn.Module):  # the PEFT model that trained the adapter: its layers hold σ already
        layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, SVFLayer)}
        if set(p) <= set(layers):
            with torch.no_grad():
                return {n: reference_z(p[n].to(layers[n].svf_S.device), layers[n].svf_S, config.max_mult).float().cpu()
                        for n in p}
        lm = LoadedModel(model, None, getattr(model, "name_or_path", "the model"), "memory", "")
        return _reference_to_z(config, p, lm)
    spec = model or (config.base_identity or {}).get("name") or config.base_model_name_or_path
    if spec is None:
        raise T2Error("this adapter stores pre-sigmoid p (reference parametrization): give the base model "
                      "(--model) so its singular values turn p into z")
    lm = spec if isinstance(spec, LoadedModel) else load_model(spec)
    names = list(p)
    modules = dict(lm.model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise T2Error(f"the base model has no module {missing[0]!r}: wrong model for this adapter")
    digests = fingerprint(lm.model, names)
    made_for = (config.base_identity or {}).get("fingerprint")
    if made_for and made_for != model_fingerprint(digests) and not config.allow_transfer:
        raise T2Error(f"this adapter was made for other weights ({made_for[:12]}) than {lm.name}'s")
    factors = decompose(lm.model, names, cache=config.svd_cache, progress=False, digests=digests)
    with torch.no_grad():
        return {n: reference_z(p[n], factors[n].S, config.max_mult).float() for n in names}
