"""Atomic, self-describing checkpoints in OUT/checkpoint/, and resuming from them.

A checkpoint directory holds `state.pt` (trainable tensors, optimizer, scheduler, data order, step, the
history of metrics, the best validation state, and each rank's RNG states: Python, torch CPU, CUDA) and
`config.json` (the resolved config, base model identity, library version). The whole directory is written
next to the old one and swapped in with a rename, so a crash mid-write leaves the previous checkpoint intact.
`state.pt` holds tensors, numbers, strings, lists and dicts only and is read with `weights_only=True`.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import T2Error
from ..fileio import atomic_path, atomic_write_bytes, atomic_write_json
from .config import INTRODUCED, RUNTIME_FIELDS

STATE = "state.pt"
CONFIG = "config.json"


def rng_state() -> dict[str, Any]:
    """This process's random number generator states."""
    state = {"python": _py_state_to_list(random.getstate()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_py_state_from_list(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, state: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write `state` (torch.save) and `info` (JSON) into `directory`, atomically as a whole.

    A failed write (a full disk, a quota) is a one-line T2Error, and the previous checkpoint stays as it was.
    """
    # Serialised in memory first: torch.save's own file writer reports a full disk as a RuntimeError that
    # names no errno; `atomic_write_bytes` raises the OSError itself. The state is small (z and its optimizer
    # moments, or a LoRA adapter's), so the extra copy costs little.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            atomic_write_bytes(tmp / STATE, buffer.getbuffer())
            atomic_write_json(tmp / CONFIG, {**info, "library_version": __version__})
    except OSError as e:
        kept = "the previous checkpoint is intact" if (directory / STATE).is_file() else "no checkpoint was kept"
        raise T2Error(f"{directory}: could not write the checkpoint ({e.strerror or e}); {kept}: free some "
                      f"space, then rerun with --resume") from None
    return directory


def load(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, info) of a checkpoint directory, or a T2Error saying what is missing."""
    state_path, info_path = directory / STATE, directory / CONFIG
    if not state_path.is_file() or not info_path.is_file():
        raise T2Error(f"{directory}: no checkpoint to resume from (needs {STATE} and {CONFIG}); "
                      f"run without --resume to start")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        info = json.loads(info_path.read_text())
    except Exception as e:
        raise T2Error(f"{directory}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return state, info


# Where the run lives is not part of its recipe: a run directory moved or copied elsewhere resumes from there.
LOCATION_FIELDS = ("out",)


def check_same_recipe(saved: dict[str, Any], current: dict[str, Any], directory: Path) -> None:
    """Refuse to resume with options that would change the result. A field that `saved` lacks and `current` has
    was added to TrainConfig after the checkpoint was written: the run had its `config.INTRODUCED` value."""
    older = {k: v for k, v in INTRODUCED.items() if k in current and k not in saved}
    saved = {k: v for k, v in {**older, **saved}.items() if k not in RUNTIME_FIELDS}  # e.g. micro_batch_tokens
    diff = sorted(k for k in set(saved) | set(current)
                  if k not in LOCATION_FIELDS and saved.get(k) != current.get(k))
    if diff:
        k = diff[0]
        flag = f"--{k.replace('_', '-')}"
        why = f" (it predates {flag}: pass {flag} {saved[k]} to resume it)" if k in older else ""
        raise T2Error(f"{directory} was made with {k}={saved.get(k)!r}, this run has {k}={current.get(k)!r}{why} "
                      f"({len(diff)} option(s) differ); resume with the same options or use another --out")


def _py_state_to_list(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_from_list(state) -> tuple:
    version, internal, gauss = state
    return (int(version), tuple(int(x) for x in internal), gauss)
