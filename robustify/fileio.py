"""Crash-safe writes: everything robustify writes goes to a temporary file first and is renamed into place, so an
interrupted run never leaves a half-written checkpoint, metrics file or model folder behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Refuse, before any work, an output file that could not be written at the end: a folder, a path under a
    file, a read-only or full file system. Probes by creating (and removing) a temporary file where it will go."""
    from .errors import UserError

    p = Path(path).expanduser()
    if not str(path).strip():
        raise UserError(f"{flag} is empty; give a file name such as results/eval.json")
    if p.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder; give a file name inside it, e.g. {str(p / 'eval.json')!r}")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {str(path)!r} cannot be written: {str(parent)!r} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".robustify-probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"{flag} {str(path)!r} cannot be written ({e.strerror or type(e).__name__}); choose a "
                        "writable location") from None
    return p
