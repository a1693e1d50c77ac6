"""SVFModel: the PEFT tuner that wraps a model's target matrices in SVF layers.

On injection it resolves the targets (this library's groups, or PEFT's own matching) into an explicit list of
module names, fingerprints their weights, refuses an adapter made for other weights (unless `allow_transfer`),
decomposes them with `svd.decompose` (the same content-addressed cache `t2` uses) and records the base model's
identity and the matrix shapes in the config, so a saved adapter says what it was made for.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists
from torch import nn

from ..errors import T2Error
from ..experts import Expert, mix
from ..svd import decompose, matrix_digest, model_fingerprint
from ..targets import is_linear, resolve_targets, weight_matrix
from .config import SVFConfig
from .layer import SVFLayer


class _LinearView:
    """The model's modules as `targets.resolve_targets` expects them, with every PEFT layer seen as the layer it
    wraps (its name, its base module) and its internals hidden: group rules look at module names and types, which
    a wrapped model would otherwise hide (`…mlp.up_proj.base_layer` is not in an `mlp` parent)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def named_modules(self):
        hidden: list[str] = []
        for name, mod in self.model.named_modules():
            if any(name.startswith(h + ".") for h in hidden):
                continue
            if isinstance(mod, BaseTunerLayer):
                hidden.append(name)
                yield name, mod.get_base_layer()
            else:
                yield name, mod

    def __getattr__(self, item):  # resolve_targets names the model's class in its errors
        return getattr(self.model, item)


class SVFModel(BaseTuner):
    """PEFT tuner for SVF (`peft.get_peft_model(model, SVFConfig(...))` builds it)."""

    prefix: str = "svf_"
    tuner_layer_cls = SVFLayer
    target_module_mapping: dict[str, list[str]] = {}  # defaults come from SVFConfig.targets instead

    # -- injection -----------------------------------------------------------------------------------------------
    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        config: SVFConfig = self.peft_config[adapter_name]
        if low_cpu_mem_usage:
            raise T2Error("SVF adapters need the base weights at wrap time (for the SVD): "
                          "load without low_cpu_mem_usage")
        if any(isinstance(m, SVFLayer) and m.merged for m in model.modules()):
            raise T2Error("unmerge the SVF adapters (unmerge_adapter) before adding another one")
        view = _LinearView(model)
        names = self._resolve_names(view, config)
        bases = dict(view.named_modules())
        digests = {n: matrix_digest(weight_matrix(bases[n])) for n in names}
        fp = model_fingerprint(digests)
        made_for = (config.base_identity or {}).get("fingerprint")
        if made_for and made_for != fp and not config.allow_transfer:
            who = (config.base_identity or {}).get("name") or "another model"
            raise T2Error(f"this SVF adapter was made for {who} (weights {made_for[:12]}), not for these weights "
                          f"({fp[:12]}); set allow_transfer=True in its config to apply it anyway")
        cfg = getattr(model, "config", None)
        if config.target_modules is not None and not made_for:
            config.targets = ",".join(names)  # what t2 resolves back to these modules (experts record targets)
        config.target_modules = list(names)
        config.shapes = {n: list(weight_matrix(bases[n]).shape) for n in names}
        if not made_for:
            config.base_identity = {
                "name": getattr(cfg, "name_or_path", None) or config.base_model_name_or_path,
                "model_type": getattr(cfg, "model_type", None),
                "architecture": type(model).__name__,
                "fingerprint": fp,
            }
        # Layers wrapped by an earlier adapter keep their factors; only new targets are decomposed.
        modules = dict(model.named_modules())
        fresh = [n for n in names if not isinstance(modules[n], SVFLayer)]
        self._factors = decompose(model, fresh, cache=config.svd_cache, progress=False,
                                  digests={n: digests[n] for n in fresh}) if fresh else {}
        self._generator = torch.Generator().manual_seed(config.seed)
        try:
            super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                                   low_cpu_mem_usage=False, state_dict=state_dict)
        finally:
            self._factors, self._generator = {}, None
        # PEFT may have condensed a long list into suffixes; the saved config keeps the explicit list, in model
        # order (the order of an expert's matrices), which PEFT matches the same way.
        config.target_modules = list(names)

    @staticmethod
    def _resolve_names(view: _LinearView, config: SVFConfig) -> list[str]:
        """The module names an adapter with this config adapts, in model order."""
        if config.target_modules is None:
            return resolve_targets(view, config.targets)
        names = [n for n, m in view.named_modules() if n and is_linear(m) and check_target_module_exists(config, n)]
        if not names:
            raise T2Error(f"target_modules {config.target_modules!r} match no linear layer of "
                          f"{type(view.model).__name__}; try `t2 info --targets all` to list them")
        return names

    def _prepare_adapter_config(self, peft_config: SVFConfig, model_config: dict) -> SVFConfig:
        return peft_config  # targets are resolved in inject_adapter, where the model is at hand

    def _create_and_replace(self, peft_config: SVFConfig, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str, parameter_name=None) -> None:
        if isinstance(target, SVFLayer):
            target.update_layer(adapter_name, peft_config, generator=self._generator)
            return
        new = SVFLayer(target, adapter_name, self._factors[current_key], peft_config, generator=self._generator)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)  # an added adapter is not trainable until set_adapter makes it active
        self._replace_module(parent, target_name, new, target)

    # -- z of adapters -------------------------------------------------------------------------------------------
    def svf_layers(self) -> dict[str, SVFLayer]:
        """The SVF layers, keyed by the name of the module they wrap (as in expert files)."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, SVFLayer)}

    def effective_z(self, adapter_name: str = "default") -> dict[str, torch.Tensor]:
        """Adapter `adapter_name`'s multipliers per matrix (fp32, CPU): what a t2 expert file stores."""
        if adapter_name not in self.peft_config:
            raise T2Error(f"no adapter {adapter_name!r}; adapters: {', '.join(self.peft_config)}")
        with torch.no_grad():
            return {n: m.effective_z(adapter_name).detach().float().cpu().clone()
                    for n, m in self.svf_layers().items() if adapter_name in m.svf_z}

    def set_effective_z(self, z: Mapping[str, torch.Tensor], adapter_name: str = "default") -> None:
        """Give adapter `adapter_name` these multipliers (every matrix it adapts, no other)."""
        layers = {n: m for n, m in self.svf_layers().items() if adapter_name in m.svf_z}
        if set(layers) != set(z):
            missing, extra = sorted(set(layers) - set(z)), sorted(set(z) - set(layers))
            raise T2Error(f"z does not fit adapter {adapter_name!r}: {len(missing)} matrices missing, "
                          f"{len(extra)} unknown (e.g. {(missing or extra)[0]!r})")
        for n, m in layers.items():
            m.set_effective_z(adapter_name, z[n])
        self.peft_config[adapter_name].parametrization = "direct"

    def add_weighted_adapter(self, adapters: Sequence[str], weights: Sequence[float] | Mapping[str, Sequence[float]],
                             adapter_name: str) -> None:
        """A new adapter z' = Σ_k w_k z_k (linear in the effective z, as `experts.mix`), one weight per adapter
        (or a mapping module name → one weight per adapter). The adapters must adapt the same matrices."""
        if adapter_name in self.peft_config:
            raise T2Error(f"adapter {adapter_name!r} already exists")
        for a in adapters:
            if a not in self.peft_config:
                raise T2Error(f"no adapter {a!r}; adapters: {', '.join(self.peft_config)}")
        experts = [Expert(self.effective_z(a), {"name": a}) for a in adapters]
        mixed = mix(experts, weights)  # checks that the adapters adapt the same matrices
        first = self.peft_config[adapters[0]]
        self.peft_config[adapter_name] = replace(first, parametrization="direct", noise=0.0, expert_meta=None,
                                                 target_modules=list(first.target_modules))
        self.inject_adapter(self.model, adapter_name)
        self.set_effective_z(mixed.z, adapter_name)
        for m in self.svf_layers().values():  # like a freshly added adapter: frozen until made active
            if adapter_name not in m.active_adapters:
                m.svf_z[adapter_name].requires_grad_(False)
