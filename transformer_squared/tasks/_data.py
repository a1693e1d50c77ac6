"""Reading benchmark files strictly: every malformed line is a T2Error that names the file and the line.

Data comes from a local directory with the layout of `shared/data` (see its README) or, when no directory is
given, from the Hugging Face hub through `datasets` (an optional dependency, imported only here, lazily).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..errors import T2Error
from ..fileio import json_kind, json_lines, read_json
from ..paths import data_dir as _resolve_data_dir

_HOW = "pass --data-dir (or data_dir=) pointing at a directory laid out like shared/data, or set T2_DATA_DIR"


def resolve_dir(data_dir: str | Path | None) -> Path | None:
    """The data directory to read (explicit, else `T2_DATA_DIR`), or None meaning the hub; it must exist."""
    root = _resolve_data_dir(data_dir)
    if root is not None and not root.is_dir():
        raise T2Error(f"data directory {root} does not exist; {_HOW}")
    return root


def data_file(root: Path, relative: str) -> Path:
    """`root/relative`, or a T2Error saying which file is missing and what to pass."""
    path = root / relative
    if not path.is_file():
        raise T2Error(f"{path}: no such data file (expected {relative} under {root}); {_HOW}")
    return path


def read_jsonl(path: Path, what: str = "data file") -> list[dict]:
    """All rows of a JSONL file; a line that is not a JSON object is a T2Error naming `path:line`.

    UTF-8, or UTF-16/32 when the file declares it (`fileio.read_text`); other encodings are a one-line error.
    """
    rows = []
    for lineno, row in json_lines(path, what=what):
        if not isinstance(row, dict):
            raise T2Error(f"{path}:{lineno}: expected a JSON object, got {json_kind(row)}")
        rows.append({**row, "_line": lineno})
    return rows


def read_json_array(path: Path) -> list[dict]:
    """Rows of a file holding one JSON array of objects (sanitized MBPP); `_line` is the 1-based item number."""
    data = read_json(path, what="data file")
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise T2Error(f"{path}: expected a JSON array of objects")
    return [{**row, "_line": i} for i, row in enumerate(data, 1)]


def need(row: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`row[key]`, checked to exist and be of `kind`; `where` is the `file:line` (or item) for the message."""
    if key not in row:
        raise T2Error(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise T2Error(f"{where}: field {key!r} should be {names}, got {type(value).__name__}")
    return value


def where(path: Path | str, row: dict) -> str:
    """`file:line` of a row read by `read_jsonl` (item number for JSON arrays)."""
    return f"{path}:{row.get('_line', '?')}"


def local_or_hub(data_dir: str | Path | None, relative: str, dataset: str, config: str | None,
                 split: str) -> tuple[Path | str, Iterable[dict]]:
    """(where, rows) of a JSONL file under the data directory, or, without one, of the hub dataset split."""
    root = resolve_dir(data_dir)
    if root is not None:
        path = data_file(root, relative)
        return path, read_jsonl(path)
    return f"hub:{dataset}/{split}", hub_rows(dataset, config, split)


def hub_rows(dataset: str, config: str | None, split: str) -> Iterable[dict]:
    """Rows of a hub dataset split, with a T2Error (not a traceback) when `datasets` or the hub is unavailable."""
    try:
        import datasets  # optional: only needed without a local data directory
    except ImportError:
        raise T2Error(f"no data directory given and the `datasets` package is not installed; {_HOW}, "
                      "or pip install 'transformer-squared[hub]'") from None
    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as e:  # network errors, missing dataset, auth: all mean the same to the user
        raise T2Error(f"could not load {dataset} ({config or 'default'}, {split}) from the Hugging Face hub: "
                      f"{type(e).__name__}: {e}; {_HOW}") from None
    return [{**dict(row), "_line": i + 1} for i, row in enumerate(ds)]


def pick_split(task, split: str | None) -> str:
    """`split`, or the task's default; a T2Error listing the task's splits when it has no such split."""
    split = split or task.default_split
    if split not in task.splits:
        raise T2Error(f"task {task.name!r} has no split {split!r}; choose from {', '.join(task.splits)}")
    return split
