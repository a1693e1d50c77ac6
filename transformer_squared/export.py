"""Export an SVF expert for runtimes that know nothing of SVF: a standard PEFT LoRA adapter, or a merged model.

An expert changes each adapted matrix by ΔW = U diag(σ ⊙ (z − 1)) Vᵀ (svf.py). That is already an SVD: ΔW's
singular values are s_i = |σ_i (z_i − 1)| and its singular vectors are W's (the sign of z_i − 1 goes into one
side). So the best rank-K approximation ΔW_K (Eckart–Young) keeps the K largest s_i, and its error is known
exactly from the discarded ones, with no further SVD:

    ‖ΔW − ΔW_K‖_F = sqrt(Σ_discarded s_i²),   ‖ΔW‖_F = sqrt(Σ s_i²),   ‖W‖_F = sqrt(Σ σ_i²).

LoRA, PEFT's layout: y = W x + scaling · B (A x), A = lora_A (r, in), B = lora_B (out, r). We write
A = diag(√s_K) V_Kᵀ and B = U_K diag(sign_K · √s_K) (the magnitude split evenly, so neither factor is tiny
in bf16) and lora_alpha = r for every module, so scaling = 1 whichever loader reads it: PEFT applies the
per-module `rank_pattern`/`alpha_pattern` (each module's alpha equals its rank), vLLM ignores those patterns
and uses the global lora_alpha / r, which is also 1. Matrices whose ΔW is exactly zero are left out.

Merged: W' = W + ΔW from `SVFLinear.merged_weight`, the very W' `SVFLinear.merge` writes (svf.py's `apply_z`:
fp32, cast back, checked finite), put into a copy of the state dict, never into the live model, and saved as an
ordinary Hugging Face directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ._version import __version__
from .adapted import AdaptedModel
from .errors import T2Error
from .experts import Expert
from .fileio import atomic_path, atomic_write_json
from .models import ALIASES, LoadedModel
from .svf import SVFLinear, singular_scale

LORA_WEIGHTS = "adapter_model.safetensors"
LORA_CONFIG = "adapter_config.json"
REPORT = "export_report.json"
MERGED_RECORD = "t2-export.json"
RELATIVE_TO = ("delta", "weight")
# The values vLLM's --max-lora-rank accepts (vllm/config/lora.py, MaxLoRARanks, in recent releases).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Tokenizer/processor files copied verbatim into a merged export (weights and config are written anew).
_TOKENIZER_FILES = ("tokenizer", "special_tokens_map", "added_tokens", "vocab", "merges", "spiece",
                    "sentencepiece", "chat_template", "preprocessor_config", "processor_config")


# -- the math: pure functions of (U, σ, Vᵀ, z) -----------------------------------------------------------------
def delta_spectrum(S: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW's signed singular values d = σ ⊙ (z − 1) (fp64) and the order that sorts |d| descending."""
    d = singular_scale(S.double().cpu(), z.double().cpu())  # (r,): σ ⊙ (z − 1), svf.py's scale in fp64
    order = torch.argsort(d.abs(), descending=True, stable=True)
    return d, order


def tail_norms(s_sorted: torch.Tensor) -> torch.Tensor:
    """tail[k] = ‖ΔW − ΔW_k‖_F = sqrt(Σ_{i≥k} s_i²) for k = 0..r, given |s| sorted descending (fp64)."""
    sq = s_sorted.double() ** 2
    tail_sq = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0])  # (r,): Σ_{i≥k}
    return torch.cat([tail_sq, tail_sq.new_zeros(1)]).clamp_min(0).sqrt()  # (r + 1,)


def rank_for_error(tail: torch.Tensor, max_error: float, reference: float) -> int:
    """The smallest k with tail[k] ≤ max_error · reference (tail is non-increasing)."""
    return int((tail > max_error * reference).sum())


def lora_factors(layer: SVFLinear, z: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A (k, in), lora_B (out, k)) with B @ A = ΔW_k, the best rank-k approximation of ΔW (fp32)."""
    d, order = delta_spectrum(layer.S, z)
    idx = order[:rank]
    root = d[idx].abs().sqrt().float()  # (k,)
    sign = torch.sign(d[idx]).float()  # (k,)
    Vh, U = layer.Vh.float().cpu(), layer.U.float().cpu()
    A = root[:, None] * Vh[idx]  # (k, 1) * (k, in) -> (k, in)
    B = U[:, idx] * (sign * root)  # (out, k) * (k,) -> (out, k)
    return A.contiguous(), B.contiguous()


# -- LoRA ------------------------------------------------------------------------------------------------------
def export_lora(am_or_model: AdaptedModel | LoadedModel | str, expert: Expert | str | Path, out_dir: str | Path,
                rank: int | None = None, max_error: float | None = None, *, relative_to: str = "delta",
                dtype: torch.dtype = torch.float32, allow_transfer: bool = False,
                progress: bool = False) -> dict[str, Any]:
    """Write `expert` as a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors,
    export_report.json) and return the report.

    Exactly one of `rank` (the same rank K for every matrix, capped at min(m, n)) or `max_error` (per matrix the
    smallest rank whose relative Frobenius error ‖ΔW − ΔW_K‖ / ‖ΔW‖, or / ‖W‖ with `relative_to="weight"`,
    is ≤ max_error) must be given. `am_or_model`: an AdaptedModel, or a model (spec or LoadedModel, not wrapped
    by another AdaptedModel) that is prepared for the expert's targets and released again afterwards.
    """
    if (rank is None) == (max_error is None):
        raise T2Error("give exactly one of --rank K or --max-error EPS")
    if rank is not None and rank < 1:
        raise T2Error(f"--rank must be at least 1, got {rank}")
    if max_error is not None and not 0.0 <= max_error < 1.0:
        raise T2Error(f"--max-error must be in [0, 1), got {max_error}")
    if relative_to not in RELATIVE_TO:
        raise T2Error(f"relative_to must be one of {', '.join(RELATIVE_TO)}, got {relative_to!r}")
    with _prepared(am_or_model, expert, allow_transfer, progress) as (am, expert, expert_path):
        layers = am.svf.layers
        kinds = {m.transposed for m in layers.values()}
        if len(kinds) > 1:  # PEFT's fan_in_fan_out is one flag per adapter (and it resets it on nn.Linear)
            raise T2Error("this expert adapts both nn.Linear and GPT-2 Conv1D layers; PEFT cannot load such a "
                          "LoRA adapter as one file: export with --format merged instead")
        fan_in_fan_out = kinds == {True}

        rows: dict[str, dict[str, Any]] = {}
        tensors: dict[str, torch.Tensor] = {}
        for name, layer in layers.items():
            z = expert.z[name]
            d, order = delta_spectrum(layer.S, z)
            tail = tail_norms(d[order].abs())  # (r + 1,)
            delta_norm = float(tail[0])
            weight_norm = float(layer.S.double().norm())
            full = layer.rank
            if delta_norm == 0.0:
                k = 0  # z = 1 on this matrix: nothing to add
            elif rank is not None:
                k = min(rank, full)
            else:
                k = rank_for_error(tail, max_error, delta_norm if relative_to == "delta" else weight_norm)
            out_f, in_f = layer.weight_matrix().shape
            rows[name] = {
                "rank": k, "full_rank": full, "shape": [out_f, in_f],
                "rel_error_delta": float(tail[k]) / delta_norm if delta_norm else 0.0,
                "rel_error_weight": float(tail[k]) / weight_norm if weight_norm else 0.0,
                "delta_norm": delta_norm, "weight_norm": weight_norm, "parameters": k * (out_f + in_f),
            }
            if k:
                A, B = lora_factors(layer, z, k)
                tensors[f"base_model.model.{name}.lora_A.weight"] = A.to(dtype)
                tensors[f"base_model.model.{name}.lora_B.weight"] = B.to(dtype)
        exported = [n for n, row in rows.items() if row["rank"]]
        if not exported:
            raise T2Error(f"expert {expert.name!r} is the identity (z = 1 everywhere): there is nothing to export; "
                          f"the base model is the export")

        r = max(rows[n]["rank"] for n in exported)
        odd = {re.escape(n): rows[n]["rank"] for n in exported if rows[n]["rank"] != r}
        base_ref = base_model_reference(am.lm)
        config = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_ref, "revision": None,
            "r": r, "lora_alpha": r, "rank_pattern": odd, "alpha_pattern": dict(odd),
            "target_modules": exported, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": fan_in_fan_out,
            "use_rslora": False, "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
            "inference_mode": True, "layers_to_transform": None, "layers_pattern": None,
        }
        report = {
            "format": "lora", "library_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "expert": expert_record(expert, expert_path), "base_model": {**am.base_identity(), "reference": base_ref},
            "rank": rank, "max_error": max_error, "error_relative_to": relative_to if max_error is not None else None,
            "r": r, "lora_alpha": r, "scaling": 1.0, "fan_in_fan_out": fan_in_fan_out,
            "vllm_max_lora_rank": next((v for v in VLLM_MAX_LORA_RANKS if v >= r), None),
            "dtype": str(dtype).split(".")[-1],
            "summary": _summary(rows, expert),
            "matrices": rows,
        }
        from safetensors.torch import save_file

        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            save_file(tensors, str(tmp / LORA_WEIGHTS), metadata={"format": "pt"})
            atomic_write_json(tmp / LORA_CONFIG, config)
            atomic_write_json(tmp / REPORT, report)
            _readable(tmp)
        return report


def _summary(rows: dict[str, dict[str, Any]], expert: Expert) -> dict[str, Any]:
    ranks = [r["rank"] for r in rows.values()]
    e_d = [r["rel_error_delta"] for r in rows.values()]
    e_w = [r["rel_error_weight"] for r in rows.values()]
    # One number for the whole expert: the discarded energy over all of ΔW, relative to all of ΔW.
    disc = math.sqrt(sum((r["rel_error_delta"] * r["delta_norm"]) ** 2 for r in rows.values()))
    total = math.sqrt(sum(r["delta_norm"] ** 2 for r in rows.values()))
    return {
        "matrices": len(rows), "exported_matrices": sum(1 for k in ranks if k),
        "rank_min": min(ranks), "rank_mean": sum(ranks) / len(ranks), "rank_max": max(ranks),
        "rel_error_delta_mean": sum(e_d) / len(e_d), "rel_error_delta_max": max(e_d),
        "rel_error_weight_mean": sum(e_w) / len(e_w), "rel_error_weight_max": max(e_w),
        "rel_error_delta_overall": disc / total if total else 0.0,
        "lora_parameters": sum(r["parameters"] for r in rows.values()),
        "svf_parameters": expert.num_parameters,
    }


def format_summary(report: dict[str, Any]) -> str:
    """Two lines for humans: ranks, parameters and errors of an export report."""
    s = report["summary"]
    ranks = f"r = {s['rank_max']}" if s["rank_min"] == s["rank_max"] else \
        f"r = {s['rank_min']}..{s['rank_max']} (mean {s['rank_mean']:.1f})"
    return (f"LoRA {ranks} on {s['exported_matrices']}/{s['matrices']} matrices, "
            f"{s['lora_parameters']:,} parameters (the SVF expert: {s['svf_parameters']:,})\n"
            f"error ‖ΔW−ΔW_K‖/‖ΔW‖ mean {s['rel_error_delta_mean']:.4g} max {s['rel_error_delta_max']:.4g}; "
            f"/‖W‖ mean {s['rel_error_weight_mean']:.3g} max {s['rel_error_weight_max']:.3g}")


# -- merged ----------------------------------------------------------------------------------------------------
def export_merged(am_or_model: AdaptedModel | LoadedModel | str, expert: Expert | str | Path,
                  out_dir: str | Path, *, allow_transfer: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write a full Hugging Face model directory with W' baked into the adapted matrices (every other weight,
    the config minus any quantization_config, the generation config and the tokenizer as they were) plus
    t2-export.json recording the expert and the base. Loadable by AutoModelForCausalLM.from_pretrained.
    The weights keep the dtype the model was loaded in (fp32 unless an AdaptedModel of another dtype is passed).
    Returns the record."""
    with _prepared(am_or_model, expert, allow_transfer, progress) as (am, expert, expert_path):
        model = am.model
        sd = model.state_dict()  # references, no copies; SVFLinear keys read `<name>.base.weight`
        for name, layer in am.svf.layers.items():
            bias = sd.get(f"{name}.base.bias")
            for key in [k for k in sd if k.startswith(f"{name}.")]:  # base.*, and a trainable z in train mode
                del sd[key]
            sd[f"{name}.weight"] = layer.merged_weight(expert.z[name]).detach()
            if bias is not None:
                sd[f"{name}.bias"] = bias
        record = {
            "format": "merged", "library_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "expert": expert_record(expert, expert_path),
            "base_model": {**am.base_identity(), "reference": base_model_reference(am.lm)},
            "merged_matrices": len(am.svf.layers), "dtype": str(model.dtype).split(".")[-1],
        }
        with atomic_path(out_dir) as tmp:
            model.save_pretrained(tmp, state_dict=sd)
            cfg_path = tmp / "config.json"
            cfg = json.loads(cfg_path.read_text())
            if cfg.pop("quantization_config", None) is not None:
                atomic_write_json(cfg_path, cfg)
            _copy_tokenizer(am.lm, tmp)
            atomic_write_json(tmp / MERGED_RECORD, record)
            _readable(tmp)
        return record


def _readable(directory: Path) -> None:
    """Give the files the umask's permissions: atomic writes create them 0600, and a server running as another
    user (a vLLM container) must be able to read an export."""
    mask = os.umask(0)
    os.umask(mask)
    for f in directory.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~mask)


def _copy_tokenizer(lm: LoadedModel, dest: Path) -> None:
    """The tokenizer files of the source directory verbatim; else (hub models) the loaded tokenizer saved."""
    src = Path(lm.path)
    files = [f for f in src.iterdir() if f.is_file() and f.name.startswith(_TOKENIZER_FILES)] if src.is_dir() else []
    for f in files:
        shutil.copy2(f, dest / f.name)
    if not files and lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(dest)


# -- identities ------------------------------------------------------------------------------------------------
def base_model_reference(lm: LoadedModel) -> str:
    """What base_model_name_or_path should say: the hub id, or the local directory holding exactly these weights
    (for an alias or a .gguf file, the converted cache directory; the alias's hub model is the unquantized
    original, whose weights differ slightly)."""
    if lm.source == "hub":
        return lm.name
    path = Path(lm.path)
    return str(path.resolve()) if path.is_dir() else lm.name


def expert_digest(expert: Expert) -> str:
    """A content hash of an expert's z (names, shapes, fp32 bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for n in sorted(expert.z):
        t = expert.z[n].detach().float().contiguous().cpu()
        h.update(f"{n}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def expert_record(expert: Expert, path: str | Path | None) -> dict[str, Any]:
    """Which expert an export came from."""
    meta = expert.meta
    alias = ALIASES.get((meta.get("base_model") or {}).get("name", ""))
    return {
        "name": expert.name, "path": str(Path(path).resolve()) if path else None, "digest": expert_digest(expert),
        "domain": meta.get("domain"), "task": meta.get("task"), "targets": meta.get("targets"),
        "base_model": meta.get("base_model"), "base_hub_id": alias.hub_id if alias else None,
        "matrices": len(expert.z), "parameters": expert.num_parameters,
    }


@contextmanager
def _prepared(am_or_model, expert, allow_transfer: bool,
              progress: bool) -> Iterator[tuple[AdaptedModel, Expert, Path | None]]:
    """(am, expert, expert_path) for an export, the expert checked against the model. An AdaptedModel made here
    (from a spec or a LoadedModel not yet wrapped) is detached again afterwards: the caller's model is left as
    it was."""
    path = None if isinstance(expert, Expert) else Path(expert)
    if isinstance(am_or_model, AdaptedModel):
        if path is not None:
            expert = am_or_model.load_expert(path, allow_transfer=allow_transfer)
        else:
            am_or_model.check(expert, allow_transfer=allow_transfer)
        yield am_or_model, expert, path
        return
    am, expert = AdaptedModel.for_expert(am_or_model, expert, allow_transfer=allow_transfer, progress=progress)
    try:
        yield am, expert, path
    finally:
        am.svf.detach()
