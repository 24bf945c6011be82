"""Crash-safe writes: everything robustify writes goes to a temporary file first and is renamed into place, so an
interrupted run never leaves a half-written checkpoint, metrics file or model folder behind.

Must not: leave a half-written file behind, or know what the files mean.
"""

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


def atomic_write_many(files: dict[Path, bytes]) -> None:
    """Replace several files together: every one is first written whole to a temporary file beside its target (so a
    full disk fails before any target changes), then all are renamed into place. Used where files describe each
    other (metrics.json, config.json, the card), so a failure never leaves one updated and the others not."""
    done: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            done.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
    except BaseException:
        for tmp, _ in done:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, path in done:
        os.replace(tmp, path)


def write_error_cause(error: BaseException) -> str | None:
    """Why a write failed, when the user can fix it (a full disk, a read-only or vanished folder), in a few words;
    None for anything else (a bug, which keeps its traceback). safetensors and torch's zip writer do not raise
    OSError for a full disk, so their messages are read too."""
    import errno

    text = str(error)
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "os error 28" in text:
        return "no space left on the device"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "os error 30" in text or "Read-only file system" in text:
        return getattr(error, "strerror", None) or "the folder is read-only"
    return None


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


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks (weights files are too large to read at once); the one hash the
    run record, the checkpoint manifests and the importer's provenance all use."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
