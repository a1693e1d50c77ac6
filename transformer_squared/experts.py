"""Expert files: what an SVF expert is on disk, how it is checked against a model, and how experts mix.

An expert is a directory:
- `expert.safetensors`: one 1-D fp32 tensor per adapted matrix, keyed by module name, holding the *effective*
  multipliers z (W' = U diag(σ ⊙ z) Vᵀ; z = 1 is the base model), whatever parametrization trained it;
- `expert.json`: format version, base model identity (name, architecture, weight fingerprint) and matrix
  shapes, targets, parametrization, task/domain, training config, metrics, library version.

Loading checks the expert against the model: different matrices or shapes are refused; the same shapes with
different weights (another model) are refused unless transfer is allowed (SPEC §4, cross-model transfer).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ._version import __version__
from .errors import T2Error
from .fileio import atomic_path, atomic_write_bytes, atomic_write_json, json_kind, read_json

FORMAT_VERSION = 1
WEIGHTS = "expert.safetensors"
META = "expert.json"
# Refused by size before reading: the metadata of the largest models is a few hundred KB (one shape per matrix),
# and z holds min(out, in) fp32 values per matrix, so anything much larger is not an expert.
MAX_META_BYTES = 16 << 20
HEADER_SLACK_BYTES = 1 << 20  # safetensors' JSON header: names, dtypes, offsets and metadata
# |z| this large multiplies singular values by a million: no training run makes it, and merging it overflows
# bf16 and destroys the model, so a file holding it is corrupt or hand-edited.
MAX_ABS_Z = 1e6


def read_meta(path: str | Path) -> dict[str, Any]:
    """An expert.json, checked to be the metadata of an expert for a definite model, or a one-line T2Error.

    The checks are written out rather than declared as a pydantic model: they are a dozen lines, pydantic is
    not otherwise a core dependency, and each refusal says in our words what to do.
    """
    path = Path(path)
    meta = read_json(path, what="expert metadata", max_bytes=MAX_META_BYTES)
    if not isinstance(meta, dict):
        raise T2Error(f"{path}: expected a JSON object (expert metadata), got {json_kind(meta)}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise T2Error(f"{path}: expert format version {version!r}, this library reads {FORMAT_VERSION}; "
                      f"upgrade transformer-squared")
    base = meta.get("base_model")
    if not isinstance(base, dict) or not isinstance(base.get("fingerprint"), str) or not base["fingerprint"]:
        problem = ("is missing" if base is None else "has no 'fingerprint'" if isinstance(base, dict)
                   else f"is {json_kind(base)}, not an object")
        raise T2Error(f"{path}: no base model identity ('base_model' {problem}): nothing ties this expert to a "
                      f"model; re-create it with `t2 expert init` or `t2 train`")
    shapes = meta.get("shapes")
    if not isinstance(shapes, dict) or not shapes:
        raise T2Error(f"{path}: 'shapes' must be a non-empty object of matrix name -> [out, in], got "
                      f"{json_kind(shapes)}")
    for name, shape in shapes.items():
        if not (isinstance(shape, list) and len(shape) == 2
                and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise T2Error(f"{path}: shapes[{name!r}] must be [out, in], two positive integers, got "
                          f"{json.dumps(shape)[:40]}")
    for key in ("name", "domain", "task", "targets"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise T2Error(f"{path}: {key!r} must be a string, got {json_kind(meta[key])}")
    for key in ("training", "metrics"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise T2Error(f"{path}: {key!r} must be an object, got {json_kind(meta[key])}")
    return meta


def check_z(z: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse z that is not a finite 1-D tensor, or holds a multiplier of absolute value ≥ MAX_ABS_Z."""
    for n, t in z.items():
        if t.dim() != 1 or not t.is_floating_point() or not torch.isfinite(t).all():
            raise T2Error(f"{where}: z for {n} is not a finite 1-D float tensor")
        if t.numel() and (peak := float(t.detach().abs().max())) >= MAX_ABS_Z:
            raise T2Error(f"{where}: z for {n} reaches |z| = {peak:.3g} (at most {MAX_ABS_Z:g} is plausible): "
                          f"a corrupt or hand-edited expert")


@dataclass
class Expert:
    """Effective multipliers z per adapted matrix, plus the metadata that makes them reproducible."""

    z: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def identity(cls, shapes: Mapping[str, Sequence[int]], meta: Mapping[str, Any] | None = None) -> "Expert":
        """z = 1 everywhere: the base model."""
        z = {n: torch.ones(min(s)) for n, s in shapes.items()}
        return cls(z, {**(meta or {}), "shapes": {n: list(s) for n, s in shapes.items()}})

    @classmethod
    def random(cls, shapes: Mapping[str, Sequence[int]], std: float, seed: int = 0,
               meta: Mapping[str, Any] | None = None) -> "Expert":
        """z = 1 + std·N(0, 1): a perturbed base model (for tests and sanity checks)."""
        gen = torch.Generator().manual_seed(seed)
        z = {n: 1.0 + std * torch.randn(min(s), generator=gen) for n, s in shapes.items()}
        return cls(z, {**(meta or {}), "shapes": {n: list(s) for n, s in shapes.items()},
                       "init": {"noise": std, "seed": seed}})

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.meta.get("name") or self.meta.get("domain") or self.meta.get("task") or "expert"

    @property
    def domain(self) -> str | None:
        return self.meta.get("domain")

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.z.values())

    def shapes(self) -> dict[str, list[int]]:
        return {n: list(s) for n, s in self.meta.get("shapes", {}).items()}

    # -- disk ------------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the expert directory atomically (an existing one is replaced only when the new one is complete)."""
        directory = Path(directory)
        check_z(self.z, f"refusing to save expert {self.name!r}")
        meta = {
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self.meta,
        }
        meta["format_version"] = FORMAT_VERSION
        meta["num_parameters"] = self.num_parameters
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            # Serialised to bytes and written by atomic_write_bytes: safetensors' own file writer reports a full
            # disk as its own exception type, without an errno (z is small: one value per singular value).
            z = {n: t.detach().float().contiguous().cpu() for n, t in self.z.items()}
            atomic_write_bytes(tmp / WEIGHTS, safetensors_bytes(z, metadata={"format_version": str(FORMAT_VERSION)}))
            atomic_write_json(tmp / META, meta)
        self.meta = meta
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Expert":
        """Read an expert directory (or the directory of a given expert.json / expert.safetensors)."""
        directory = Path(directory)
        if directory.is_file() and directory.name in (WEIGHTS, META):
            directory = directory.parent
        if not directory.is_dir():
            raise T2Error(f"{directory}: no such expert directory")
        weights, meta_path = directory / WEIGHTS, directory / META
        if not weights.is_file() or not meta_path.is_file():
            raise T2Error(f"{directory}: not an expert (needs {WEIGHTS} and {META})")
        meta = read_meta(meta_path)
        shapes = meta["shapes"]
        # z has min(out, in) fp32 values per matrix: refuse a bigger file before safetensors maps it.
        limit = 4 * sum(min(s) for s in shapes.values()) + HEADER_SLACK_BYTES
        if (size := weights.stat().st_size) > limit:
            raise T2Error(f"{weights}: {size:,} bytes, more than the {limit:,} an expert of these {len(shapes)} "
                          f"matrices can take; not this expert's weights")
        try:
            z = load_file(str(weights))
        except Exception as e:
            raise T2Error(f"{weights}: unreadable ({str(e).splitlines()[0]})") from None
        check_z(z, str(weights))
        if set(z) != set(shapes):
            example = sorted(set(z) ^ set(shapes))[0]
            raise T2Error(f"{directory}: {WEIGHTS} holds {len(z)} matrices, {META} lists {len(shapes)}; they "
                          f"differ (e.g. {example!r}): the two files are not one expert")
        for n, shape in shapes.items():
            if z[n].numel() != min(shape):
                raise T2Error(f"{weights}: z for {n} has {z[n].numel()} values, its matrix of shape {shape} "
                              f"needs {min(shape)}: the two files are not one expert")
        return cls({n: z[n].float() for n in shapes}, meta)  # model order (safetensors sorts keys)

    # -- checking against a model ----------------------------------------------------------------------------
    def check_compatible(self, shapes: Mapping[str, Sequence[int]], fingerprint: str | None = None, *,
                         allow_transfer: bool = False, model_name: str = "the model") -> None:
        """Raise a one-line T2Error unless this expert fits a model with these adapted matrices.

        `shapes`: name → (out, in) of the model's adapted matrices. `fingerprint`: the model's weight
        fingerprint; an expert trained on other weights of the same shapes needs `allow_transfer`.
        """
        mine = set(self.z)
        theirs = set(shapes)
        if mine != theirs:
            only_e, only_m = sorted(mine - theirs), sorted(theirs - mine)
            example = (only_e or only_m)[0]
            raise T2Error(f"expert {self.name!r} adapts {len(mine)} matrices, {model_name} has {len(theirs)} "
                          f"targets; they differ (e.g. {example!r}): trained for another model or other targets "
                          f"({self.meta.get('targets', '?')})")
        for n, s in shapes.items():
            want = min(s)
            if n in self.shapes() and list(self.shapes()[n]) != list(s):
                raise T2Error(f"expert {self.name!r} was made for {n} of shape {self.shapes()[n]}, "
                              f"{model_name} has {list(s)}: wrong model")
            if self.z[n].numel() != want:
                raise T2Error(f"expert {self.name!r} has {self.z[n].numel()} values of z for {n}, {model_name}'s "
                              f"matrix there is {list(s)} and needs {want}: wrong model")
        base_fp = (self.meta.get("base_model") or {}).get("fingerprint")
        if fingerprint and base_fp and base_fp != fingerprint and not allow_transfer:
            base_name = (self.meta.get("base_model") or {}).get("name", "another model")
            raise T2Error(f"expert {self.name!r} was trained on {base_name} (weights {base_fp[:12]}), not on "
                          f"{model_name} (weights {fingerprint[:12]}); pass --allow-transfer to apply it anyway")

    # -- summaries -------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        flat = torch.cat([t.flatten() for t in self.z.values()]) if self.z else torch.zeros(0)
        dev = (flat - 1).abs()
        return {
            "matrices": len(self.z),
            "parameters": flat.numel(),
            "z_mean": float(flat.mean()) if flat.numel() else math.nan,
            "z_min": float(flat.min()) if flat.numel() else math.nan,
            "z_max": float(flat.max()) if flat.numel() else math.nan,
            "mean_abs_dev": float(dev.mean()) if flat.numel() else math.nan,
            "max_abs_dev": float(dev.max()) if flat.numel() else math.nan,
        }


def mix(experts: Sequence[Expert], alpha: Sequence[float] | torch.Tensor | Mapping[str, Sequence[float]],
        **meta) -> Expert:
    """z' = Σ_k α_k z_k: one α per expert (a sequence of K), or per expert per matrix (a (K, M) tensor in
    the experts' matrix order, or a mapping name → K alphas). Mixing is linear in the *effective* z (the
    reference code mixed pre-sigmoid parameters, a bug, SPEC §1)."""
    if not experts:
        raise T2Error("mix needs at least one expert")
    names = list(experts[0].z)
    for e in experts[1:]:
        if set(e.z) != set(names) or any(e.z[n].shape != experts[0].z[n].shape for n in names):
            raise T2Error(f"cannot mix {experts[0].name!r} and {e.name!r}: they adapt different matrices")
    K = len(experts)
    if isinstance(alpha, Mapping):
        table = torch.tensor([[float(alpha[n][k]) for n in names] for k in range(K)])
    else:
        table = torch.as_tensor(alpha, dtype=torch.float32)
        if table.dim() == 1:
            if table.numel() != K:
                raise T2Error(f"got {table.numel()} alphas for {K} experts")
            table = table[:, None].expand(K, len(names))
    if tuple(table.shape) != (K, len(names)):
        raise T2Error(f"per-matrix alphas must have shape ({K}, {len(names)}), got {tuple(table.shape)}")
    z = {n: sum(table[k, j] * experts[k].z[n] for k in range(K)) for j, n in enumerate(names)}
    base = {k: v for k, v in experts[0].meta.items() if k in ("base_model", "shapes", "targets")}
    alpha_record = table[:, 0].tolist() if bool((table == table[:, :1]).all()) else table.tolist()
    return Expert(z, {**base, "mixed_from": [e.name for e in experts], "alpha": alpha_record, **meta})
