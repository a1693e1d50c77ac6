"""Atomic file writes: a crash or a Ctrl-C never leaves a half-written file behind.

Every file the library writes (experts, checkpoints, caches, results) goes through these helpers: write to a
temporary file in the same directory, fsync, then `os.replace`, which is atomic on POSIX.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import T2Error


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (the old file, if any, stays intact until the new one is complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path` (file or directory).

    For writers that insist on a filename (safetensors, matplotlib, save_pretrained). An existing directory at
    `path` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / "payload"
    try:
        yield target
        if path.is_dir() and target.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            try:
                os.replace(target, path)
            except BaseException:
                os.replace(old, path)  # put the previous version back: never leave `path` missing
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line and flush it (JSONL logs are append-only; a torn last line is skipped on read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, default=_json_default) + "\n")
        f.flush()


def read_text(path: str | os.PathLike, *, what: str = "file", max_bytes: int | None = None) -> str:
    """The text of `path`, decoded strictly, or a one-line T2Error.

    UTF-8 is expected; a file that declares another Unicode encoding (a UTF-8/16/32 byte-order mark, or the NUL
    pattern of BOM-less UTF-16/32 JSON) is decoded as such: `json.detect_encoding` is the standard library's own
    rule for JSON bytes. Anything else that is not UTF-8 (Latin-1, cp1252, ...) is refused with the line of the
    first bad byte, not guessed at. `max_bytes` refuses a larger file by its size, before reading it.
    """
    path = Path(path)
    try:
        if max_bytes is not None and (size := path.stat().st_size) > max_bytes:
            raise T2Error(f"{path}: {what} is {size:,} bytes, more than the {max_bytes:,} allowed; "
                          f"not a {what} this library wrote")
        data = path.read_bytes()
    except FileNotFoundError:
        raise T2Error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise T2Error(f"{path}: is a directory, not a {what}") from None
    except OSError as e:
        raise T2Error(f"{path}: cannot read {what} ({e.strerror or e})") from None
    encoding = json.detect_encoding(data)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1 if encoding.startswith("utf-8") else "?"
        raise T2Error(f"{path}:{line}: {what} is not {encoding.upper().replace('-SIG', '')} text (byte "
                      f"0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8, e.g. `iconv -f latin1 "
                      f"-t utf-8`") from None


def parse_json(text: str | bytes, where: str, hint: str = "") -> Any:
    """`json.loads(text)`, with every failure a one-line T2Error naming `where` (and ending with `hint`).

    Python's parser raises RecursionError (not a JSONDecodeError) on deeply nested input, e.g. 100,000 `[`:
    that is a property of the input, so it is reported like any other malformed JSON.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"line {e.lineno} column {e.colno}" if e.lineno > 1 else f"column {e.colno}"
        raise T2Error(f"{where}: not valid JSON ({e.msg} at {at}){hint}") from None
    except RecursionError:
        raise T2Error(f"{where}: JSON nested too deeply (over ~{sys.getrecursionlimit()} levels){hint}") from None
    except UnicodeDecodeError as e:  # bytes input that is not UTF-8/16/32
        raise T2Error(f"{where}: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start}){hint}") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits (Python's int conversion limit)
        raise T2Error(f"{where}: not valid JSON ({str(e).splitlines()[0]}){hint}") from None


def read_json(path: str | os.PathLike, *, what: str = "JSON file", max_bytes: int | None = None) -> Any:
    """The JSON value in `path` (`read_text` then `parse_json`): every failure is a one-line T2Error."""
    return parse_json(read_text(path, what=what, max_bytes=max_bytes), str(path))


def json_lines(path: str | os.PathLike, *, what: str = "JSONL file",
               skip_torn_tail: bool = False) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line of a JSONL file; a bad line is a T2Error naming `path:line`.

    Lines are split on "\\n" only: `str.splitlines` would also split inside JSON strings holding U+2028 or
    other Unicode line breaks, which JSON allows unescaped. With `skip_torn_tail`, an unparsable *last* line
    (an append cut short by a crash) is dropped instead.
    """
    lines = read_text(path, what=what).split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    rows: list[tuple[int, Any]] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((i, parse_json(line, f"{path}:{i}", "; fix or remove that line")))
        except T2Error:
            if skip_torn_tail and i == len(lines):
                break
            raise
    return rows


def json_kind(value: Any) -> str:
    """How JSON calls the type of `value` ("an object", "an array", ...), for messages about malformed input."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def read_jsonl(path: str | os.PathLike, *, skip_torn_tail: bool = True) -> list[dict]:
    """Read a JSONL file; a final line cut short by a crash is ignored when `skip_torn_tail`."""
    path = Path(path)
    if not path.is_file():
        raise T2Error(f"{path}: no such file")
    return [row for _, row in json_lines(path, skip_torn_tail=skip_torn_tail)]


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_writable_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail now, in one line, if `path` cannot be (or become) a directory this process can write files in.

    For commands that would otherwise find out only after minutes of loading. Only trying tells: permissions,
    a read-only or pseudo file system (/proc, /sys), a file in the way or an over-long name all refuse in their
    own ways, and `os.access` answers "yes" to root for most of them. Directories created for the probe are
    removed again, so a refused command leaves nothing behind.
    """
    path = Path(path).expanduser()
    created: list[Path] = []
    try:
        missing = [p for p in [path, *path.parents] if not p.exists()]
        for p in reversed(missing):
            p.mkdir()
            created.append(p)
        if not path.is_dir():
            raise T2Error(f"{what} {path}: exists and is not a directory; choose another path")
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        at = f" at {e.filename}" if e.filename and Path(e.filename) != path else ""
        raise T2Error(f"{what} {path}: cannot write there ({e.strerror or e}{at}); choose another path") from None
    finally:
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()
    return path
