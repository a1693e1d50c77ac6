"""The LoRA baseline (SPEC §2: q and v, rank 16, alpha 32, dropout 0.05) through PEFT, as a trainable policy.

Same interface as `SVFPolicy`, so the loop, both objectives, checkpoints and data parallelism are shared:

- `generating()` merges B·A·(alpha/r) into the base weights for rollouts and evaluation (one matmul per
  matrix, then the decoding loop runs plain linear layers instead of PEFT's extra dropout/A/B calls), and
  copies the stashed originals back afterwards, so repeated merge/unmerge never drifts (PEFT's own unmerge
  subtracts);
- `reference()` is PEFT's `disable_adapter()`;
- `grad_pass()` switches to train mode (the adapter's dropout is active only there).

The expert is a PEFT adapter directory (`save_pretrained`, written through an atomic temporary directory) plus
`t2-lora.json` with the same metadata an SVF expert carries. PEFT is an optional dependency, imported here.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..adapted import base_meta
from ..errors import T2Error
from ..evaluation import evaluate
from ..fileio import atomic_path, atomic_write_json, read_json
from ..models import load_model

META = "t2-lora.json"


def _peft():
    try:
        import peft
    except ImportError:
        raise T2Error("--method lora needs PEFT: pip install 'transformer-squared[lora]'") from None
    return peft


class LoRAPolicy:
    """LoRA adapters injected into `model` in place (`close()` takes them out again)."""

    method = "lora"

    def __init__(self, model: nn.Module, *, rank: int = 16, alpha: float = 32.0, dropout: float = 0.05,
                 targets: str = "q_proj,v_proj", seed: int = 0):
        peft = _peft()
        names = [t.strip() for t in targets.split(",") if t.strip()]
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in names if t not in present]
        if not names or missing:
            raise T2Error(f"--lora-targets: this model has no module named {', '.join(missing) or '(none given)'}; "
                          f"e.g. q_proj,v_proj (Llama family) or c_attn (GPT-2)")
        config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                                 bias="none", task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # PEFT calls APIs transformers 5 deprecates
            torch.manual_seed(seed)  # lora_A's init draws from the global generator
            self.peft = peft.get_peft_model(model, config)
        self.model = self.peft
        self.generation_model = self.peft.get_base_model()
        self.named = {n: p for n, p in self.peft.named_parameters() if p.requires_grad}
        self.layers = [m for m in self.peft.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
        self.config = config
        self.peft.eval()

    def parameters(self) -> list[nn.Parameter]:
        return list(self.named.values())

    def after_update(self) -> None:
        pass  # the adapter is applied unmerged in the gradient pass and merged afresh for each rollout

    @contextmanager
    def generating(self) -> Iterator[None]:
        with torch.no_grad():
            stash = [layer.get_base_layer().weight.detach().clone() for layer in self.layers]
            self.peft.base_model.merge_adapter()
            try:
                yield
            finally:
                self.peft.base_model.unmerge_adapter()
                for layer, w in zip(self.layers, stash):
                    layer.get_base_layer().weight.copy_(w)

    @contextmanager
    def reference(self) -> Iterator[None]:
        with torch.no_grad(), self.peft.disable_adapter():
            yield

    @contextmanager
    def grad_pass(self) -> Iterator[None]:
        self.peft.train()
        try:
            yield
        finally:
            self.peft.eval()

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.named.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.named.items():
                p.copy_(state[n])

    def save(self, directory: Path, meta: dict[str, Any]) -> Path:
        """A PEFT adapter directory plus t2-lora.json, replaced atomically."""
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            self.peft.save_pretrained(str(tmp))
            atomic_write_json(tmp / META, {"kind": "lora", **meta,
                                           "lora": {"rank": self.config.r, "alpha": self.config.lora_alpha,
                                                    "dropout": self.config.lora_dropout,
                                                    "targets": sorted(self.config.target_modules)}})
        return directory

    def close(self) -> None:
        """Remove the adapters: the wrapped model is the base model again."""
        self.peft.unload()


def is_lora_expert(directory: str | Path) -> bool:
    """Whether `directory` holds a LoRA expert written by `t2 train --method lora` (it has t2-lora.json)."""
    return (Path(directory) / META).is_file()


def evaluate_lora(model, directory: str | Path, config, *, task=None, allow_transfer: bool = False, data_dir=None,
                  out_dir=None, resume: bool = False, progress: bool = True, extra: dict[str, Any] | None = None):
    """`t2 eval --expert DIR` for a LoRA expert: the adapter merged into `model` (alias, path or LoadedModel),
    then the same generate -> score path as every evaluation, so its records pair with the base's in
    `t2 compare`. The adapter must come from these weights (its t2-lora.json fingerprint) unless
    `allow_transfer`. Returns (summary, records)."""
    directory = Path(directory)
    meta = read_json(directory / META, what="LoRA expert metadata")
    if not isinstance(meta, dict) or meta.get("kind") != "lora":
        raise T2Error(f"{directory / META}: not the metadata of a LoRA expert (no \"kind\": \"lora\")")
    lm = model if hasattr(model, "tokenizer") else load_model(model)
    want = (meta.get("base_model") or {}).get("fingerprint")
    have = base_meta(lm, "mlp")["base_model"]["fingerprint"]
    if want != have and not allow_transfer:
        raise T2Error(f"{directory}: this LoRA expert was trained on other weights ({str(want)[:12]}) than "
                      f"{lm.name} ({have[:12]}); pass --allow-transfer to apply it anyway")
    peft = _peft()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        merged = peft.PeftModel.from_pretrained(lm.model, str(directory)).merge_and_unload()
    merged.eval()
    extra = {**(extra or {}), "expert_name": meta.get("name") or directory.name, "expert_kind": "lora"}
    return evaluate(merged, lm.tokenizer, config, task=task, data_dir=data_dir, out_dir=out_dir, resume=resume,
                    progress=progress, extra=extra)
