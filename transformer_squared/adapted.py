"""AdaptedModel: a loaded model with SVF attached to its target matrices, ready for experts.

    am = AdaptedModel.prepare("smollm2-135m-instruct", targets="mlp")   # load, fingerprint, SVD (cached), wrap
    expert = am.load_expert("experts/math")                             # checked against this model
    with am.using(expert):                                              # merged W' for generation
        ...
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import T2Error
from .experts import Expert
from .models import LoadedModel, load_model
from .svd import decompose, fingerprint, model_fingerprint
from .svf import SVF
from .targets import resolve_targets, weight_matrix


def base_meta(lm: LoadedModel, targets: str = "mlp") -> dict[str, Any]:
    """The metadata an expert for this model and these targets carries, without decomposing anything."""
    names = resolve_targets(lm.model, targets)
    modules = dict(lm.model.named_modules())
    digests = fingerprint(lm.model, names)
    return {
        "base_model": {**lm.identity(), "fingerprint": model_fingerprint(digests)},
        "targets": targets,
        "shapes": {n: list(weight_matrix(modules[n]).shape) for n in names},
    }


@dataclass
class AdaptedModel:
    lm: LoadedModel
    targets: str
    svf: SVF
    fingerprint: str  # hash of the target matrices' weights

    @classmethod
    def prepare(cls, model: str | LoadedModel, targets: str = "mlp", *, progress: bool = True,
                cache: bool = True, dtype: torch.dtype | str = torch.float32, device=None,
                expert: Expert | None = None, allow_transfer: bool = False) -> "AdaptedModel":
        """Load (if given a spec), resolve targets, decompose them (cached) and wrap them with SVF layers.

        With `expert`, it is checked against the model *before* the (possibly slow) decomposition.
        """
        lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
        names = resolve_targets(lm.model, targets)
        digests = fingerprint(lm.model, names)
        fp = model_fingerprint(digests)
        if expert is not None:
            modules = dict(lm.model.named_modules())
            shapes = {n: list(weight_matrix(modules[n]).shape) for n in names}
            expert.check_compatible(shapes, fp, allow_transfer=allow_transfer, model_name=lm.name)
        factors = decompose(lm.model, names, cache=cache, progress=progress, digests=digests)
        svf = SVF.attach(lm.model, factors)
        return cls(lm=lm, targets=targets, svf=svf, fingerprint=fp)

    @classmethod
    def for_expert(cls, model: str | LoadedModel, expert: str | Path | Expert, *, allow_transfer: bool = False,
                   **kw) -> tuple["AdaptedModel", Expert]:
        """Prepare the model with the targets the expert was trained on, and load the expert checked."""
        expert = expert if isinstance(expert, Expert) else Expert.load(expert)
        am = cls.prepare(model, targets=expert.meta.get("targets", "mlp"), expert=expert,
                         allow_transfer=allow_transfer, **kw)
        return am, expert

    @property
    def model(self) -> torch.nn.Module:
        return self.lm.model

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def shapes(self) -> dict[str, list[int]]:
        return {n: list(s) for n, s in self.svf.shapes().items()}

    def base_identity(self) -> dict[str, Any]:
        return {**self.lm.identity(), "fingerprint": self.fingerprint}

    def expert_meta(self, **meta) -> dict[str, Any]:
        """Metadata every expert made on this model carries."""
        return {"base_model": self.base_identity(), "targets": self.targets, "shapes": self.shapes(), **meta}

    def identity_expert(self, **meta) -> Expert:
        return Expert.identity(self.shapes(), self.expert_meta(**meta))

    def check(self, expert: Expert, *, allow_transfer: bool = False) -> None:
        expert.check_compatible(self.shapes(), self.fingerprint, allow_transfer=allow_transfer,
                                model_name=self.lm.name)

    def load_expert(self, path: str | Path, *, allow_transfer: bool = False) -> Expert:
        expert = Expert.load(path)
        if expert.meta.get("targets") not in (None, self.targets) and set(expert.z) != set(self.svf.names):
            raise T2Error(f"expert {expert.name!r} adapts targets {expert.meta.get('targets')!r}, "
                          f"this model was prepared for {self.targets!r}")
        self.check(expert, allow_transfer=allow_transfer)
        return expert

    def apply(self, expert: Expert | None) -> None:
        """Merge the expert's W' into the model (None: back to the base weights)."""
        if expert is None:
            self.svf.restore()
        else:
            self.svf.merge(expert.z)

    @contextmanager
    def using(self, expert: Expert | None) -> Iterator[None]:
        with self.svf.merged(None if expert is None else expert.z):
            yield
