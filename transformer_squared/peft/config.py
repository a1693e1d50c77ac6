"""SVFConfig: the PEFT configuration of an SVF adapter (one vector z per adapted matrix, SPEC §1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from peft.config import PeftConfig

from ..errors import T2Error
from ..svf import ZInit

PEFT_TYPE = "SVF"  # PeftType is a closed enum; PEFT's tables are keyed by its str value, so a plain str works


@dataclass
class SVFConfig(PeftConfig):
    """Configuration of an SVF adapter: W' = U diag(σ ⊙ z) Vᵀ on every target matrix, z = 1 at init.

    Targets: `targets` takes this library's groups (`mlp`, `attn`, `all`, comma-separated, or fnmatch patterns, as
    `t2 --targets`); `target_modules` (PEFT's own matching: names, suffixes or a regex) overrides it when given.
    At injection both are resolved into the explicit list of module names, which is what `save_pretrained` records.
    """

    targets: str = field(default="mlp", metadata={"help": "mlp | attn | all | comma-separated | fnmatch patterns"})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "PEFT-style target modules (names, suffixes or a regex); overrides targets"})
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "modules never adapted (PEFT matching), with target_modules"})
    parametrization: str = field(default="direct", metadata={"help": "direct (z, init 1) | reference (paper code)"})
    noise: float = field(default=0.0, metadata={"help": "direct: z = 1 + noise·N(0,1) at init (0: the identity)"})
    p_mean: float = field(default=0.1, metadata={"help": "reference: p ~ p_mean + p_std·N(0,1) at init"})
    p_std: float = field(default=0.01, metadata={"help": "reference: std of the pre-sigmoid init"})
    max_mult: float = field(default=1.0, metadata={"help": "reference: z = c·sigmoid(p)·max_mult"})
    seed: int = field(default=0, metadata={"help": "seed of the initial noise"})
    svd_cache: bool = field(default=True, metadata={"help": "reuse/store the SVD in $T2_CACHE/svd (content-addressed)"})
    allow_transfer: bool = field(
        default=False, metadata={"help": "load this adapter onto weights other than the ones it was made for"})
    # Filled in at injection (and saved in adapter_config.json): what the adapter was made for.
    base_identity: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "base model name, type, architecture and weight fingerprint (set at wrap)"})
    shapes: Optional[dict[str, list[int]]] = field(
        default=None, metadata={"help": "(out, in) of every adapted matrix (set at wrap)"})
    expert_meta: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "metadata of the t2 expert this adapter was converted from, if any"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if self.task_type is None:  # this library adapts causal LMs: get_peft_model then gives generate()
            self.task_type = "CAUSAL_LM"
        try:
            self.zinit()  # validates the parametrization
        except T2Error as e:
            raise T2Error(f"SVFConfig: {e}") from None
        if self.parametrization == "reference" and self.noise:
            raise T2Error("SVFConfig: noise applies to the direct parametrization; reference uses p_mean and p_std")
        if isinstance(self.target_modules, list):
            self.target_modules = list(self.target_modules)

    def zinit(self) -> ZInit:
        """The initialisation of z (svf.ZInit) this config describes."""
        return ZInit(self.parametrization, self.noise, self.p_mean, self.p_std, self.max_mult)
