"""SVFLayer: the PEFT tuner layer around one nn.Linear / GPT-2 Conv1D.

It holds the SVD factors of the wrapped weight (fp32, not saved: they are recomputed or read from the SVD cache)
and, per adapter, one trainable vector `svf_z[name]` of length r = min(out, in): z itself (`direct`) or the
pre-sigmoid p (`reference`). The math is `transformer_squared.svf`'s (delta_weight, reference_z, merged_weight);
this file only adapts it to PEFT's contract:

- forward: W' = W + ΔW(z) recomposed from the trainable vector (like SVFLinear's `train` mode), so only z gets
  gradients and z = 1 gives the base layer bit for bit (ΔW = 0 exactly);
- several active adapters add their deltas, W' = W + Σ_k ΔW(z_k) = W + ΔW(1 + Σ_k (z_k − 1)), the way PEFT
  combines LoRA adapters; merging them one after another gives the same weight;
- merge writes W' into the base weight (fp32 math, finiteness checked, cast back) and keeps the original, so
  unmerge is bit-exact (no subtraction, no division); disabled adapters give the base layer.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ..errors import T2Error
from ..svd import Factors
from ..svf import delta_weight, merged_weight, reference_z
from ..targets import is_linear
from .config import SVFConfig


class SVFLayer(nn.Module, BaseTunerLayer):
    """One adapted matrix: the base layer, its SVD, and one z (or p) per adapter."""

    adapter_layer_names = ("svf_z",)
    other_param_names = ("svf_parametrization", "svf_max_mult")

    def __init__(self, base_layer: nn.Module, adapter_name: str, factors: Factors, config: SVFConfig,
                 generator: torch.Generator | None = None, **kwargs) -> None:
        super().__init__()
        if not is_linear(base_layer):
            raise T2Error(f"SVF adapts nn.Linear or Conv1D layers, not {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.transposed = type(base_layer).__name__ == "Conv1D"  # Conv1D stores W as (in, out)
        m, n = factors.shape
        if tuple(self.weight_matrix().shape) != (m, n):
            raise T2Error(f"SVD factors of shape {(m, n)} do not fit a weight of shape "
                          f"{tuple(self.weight_matrix().shape)}")
        dev = base_layer.weight.device
        # Not persistent: the factors follow from the base weights (the SVD cache has them), never from the adapter.
        self.register_buffer("svf_U", factors.U.to(dev, torch.float32), persistent=False)  # (m, r)
        self.register_buffer("svf_S", factors.S.to(dev, torch.float32), persistent=False)  # (r,)
        self.register_buffer("svf_Vh", factors.Vh.to(dev, torch.float32), persistent=False)  # (r, n)
        self.svf_z = nn.ParameterDict({})
        self.svf_parametrization: dict[str, str] = {}
        self.svf_max_mult: dict[str, float] = {}
        self._orig: torch.Tensor | None = None  # the base weight as it was before merging (kept for unmerge)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self.in_features, self.out_features = n, m
        self.update_layer(adapter_name, config, generator=generator)

    @property
    def rank(self) -> int:
        return self.svf_S.numel()

    def weight_matrix(self) -> torch.Tensor:
        """W as (out, in), a view of the base layer's weight."""
        w = self.get_base_layer().weight
        return w.t() if self.transposed else w

    def update_layer(self, adapter_name: str, config: SVFConfig, generator: torch.Generator | None = None,
                     **kwargs) -> None:
        """Add adapter `adapter_name`: z = 1 (+ noise) for `direct`, p = p_mean + p_std·N(0,1) for `reference`."""
        init = config.zinit()
        r = self.rank
        if init.parametrization == "direct":
            value = torch.ones(r) + (init.noise * torch.randn(r, generator=generator) if init.noise else 0.0)
        else:
            value = init.p_mean + init.p_std * torch.randn(r, generator=generator)
        # fp32 whatever the base dtype: z is tiny and its updates are far below bf16's resolution around 1.
        self.svf_z[adapter_name] = nn.Parameter(value.to(self.svf_S.device, torch.float32))
        self.svf_parametrization[adapter_name] = init.parametrization
        self.svf_max_mult[adapter_name] = float(init.max_mult)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    # -- z -------------------------------------------------------------------------------------------------------
    def effective_z(self, adapter_name: str) -> torch.Tensor:
        """The multipliers adapter `adapter_name` applies (differentiable; what an expert file stores)."""
        param = self.svf_z[adapter_name]
        if self.svf_parametrization[adapter_name] == "direct":
            return param
        return reference_z(param, self.svf_S, self.svf_max_mult[adapter_name])

    def set_effective_z(self, adapter_name: str, z: torch.Tensor) -> None:
        """Set adapter `adapter_name` to the multipliers z (it becomes `direct`: z has no unique p)."""
        if tuple(z.shape) != (self.rank,):
            raise T2Error(f"z of shape {tuple(z.shape)} does not fit a matrix of rank {self.rank}")
        with torch.no_grad():
            param = self.svf_z[adapter_name]
            param.copy_(z.to(param.device, param.dtype))
        self.svf_parametrization[adapter_name] = "direct"

    def _combined_z(self, adapter_names: list[str]) -> torch.Tensor:
        """z of the sum of the adapters' deltas: ΔW(1 + Σ (z_k − 1)) = Σ ΔW(z_k), as ΔW is affine in z."""
        z = self.effective_z(adapter_names[0])
        for name in adapter_names[1:]:
            z = z + (self.effective_z(name) - 1.0)
        return z

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.svf_z]
        if not active:
            return self.base_layer(x, *args, **kwargs)
        # Recomposed as in SVFLinear's train mode: fp32 W + ΔW, cast to the input's dtype.
        w = self.weight_matrix().float() + delta_weight(self.svf_U, self.svf_S, self.svf_Vh, self._combined_z(active))
        return nn.functional.linear(x, w.to(x.dtype), self.get_base_layer().bias)

    # -- merge ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Write W' of the merged adapters into the base weight (always checked finite, so `safe_merge` is moot).

        The original weight is kept; merging more adapters later recomputes W' from it, so the result does not
        depend on the order or number of merge calls, and unmerge restores the original bit for bit.
        """
        adapter_names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.svf_z]
        if not adapter_names:
            return
        base = self.get_base_layer()
        if self._orig is None:
            self._orig = base.weight.detach().clone()
        names = self.merged_adapters + adapter_names
        w = self._orig.t() if self.transposed else self._orig
        new = merged_weight(w, self.svf_U, self.svf_S, self.svf_Vh, self._combined_z(names).detach())
        base.weight.data.copy_(new.t() if self.transposed else new)
        self.merged_adapters.extend(adapter_names)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Back to the base weight, bit for bit."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        if self._orig is not None:
            self.get_base_layer().weight.data.copy_(self._orig)
            self._orig = None
        self.merged_adapters = []

    def __repr__(self) -> str:
        return "svf." + super().__repr__()
