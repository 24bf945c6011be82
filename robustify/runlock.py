"""One run per folder: an advisory lock on ``RUN/.lock``, and tidying a run folder before a (re)start.

Every command that changes a run folder takes this one lock with this one message: ``finetune``, ``eval`` (its
update of metrics.json, config.json and the card), ``push`` (which renders what it publishes from the folder and
must not read it half-rewritten) and ``zoo add``. A second command is refused at once, never queued, so it cannot
report results it did not store.

Two ``robustify finetune`` on the same ``--output-dir`` would interleave their checkpoints and silently lose one run;
a ``--resume`` while the original is still going would do the same. So the process that trains takes an exclusive
``fcntl.flock`` on ``RUN/.lock`` and holds it for its lifetime. The kernel drops a flock when its process dies (kill
-9, OOM, a crash), so a killed run never leaves its folder stuck, and no stale-pid guessing is needed. The file also
records pid, host and start time, only to say in the refusal who holds the folder.

Why by hand and not ``filelock`` (installed with huggingface_hub): ``filelock`` truncates the lock file before it
tries the lock, which would erase the holder's pid/host that the second run needs for its message. What is left here
is a handful of lines around ``fcntl.flock``. On systems without ``fcntl`` (Windows) runs are not locked.

Under several processes (``accelerate launch``, torchrun) only the main process takes the lock and tidies the
folder; it shares its verdict with the others (:func:`claim`), so every process fails, or none does. The lock
assumes the processes of one run share the file system of the run folder, as the checkpoints already do.

A run killed before its first checkpoint leaves only ``recipe.yaml`` (and maybe temporary files): that folder is
treated as empty, so the same command can simply be started again, and ``--resume`` starts it from scratch.
Temporary files a killed run leaves (``.export-*``, ``.*.tmp``, ``checkpoints/.tmp_*``) are removed on the next start,
once the lock shows that no live run is writing them.

Must not: delete a user's files: it removes only robustify's own temporaries.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import UserError
from .runfolder import CHECKPOINT_TEMP_PATTERNS, CHECKPOINTS, LOCK, RESTARTABLE, TEMP_PATTERNS, WEIGHTS, checkpoint_dirs

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, runs are not protected
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = LOCK  # the lock file's name (spelled in runfolder.py, with every other name of a run folder)


class RunLocked(UserError):
    """Another live process holds the run folder."""


class _Held:
    """One lock this process holds: the open file and the folders it had to create (removed if left empty)."""

    def __init__(self, fd: int, path: Path, created: list[Path]) -> None:
        self.fd, self.path, self.created, self.depth = fd, path, created, 1


_HELD: dict[Path, _Held] = {}


def _key(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir).expanduser().absolute()


def _unwritable(run_dir: Path, e: OSError) -> UserError:
    reason = e.strerror or type(e).__name__
    return UserError(f"output dir {str(run_dir)!r} cannot be written ({reason}); choose a writable folder with "
                     "--output-dir")


def _make_dir(run_dir: Path) -> list[Path]:
    """Create ``run_dir`` (and missing parents); return the folders created, deepest first."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output dir {str(run_dir)!r} is a file, not a folder; choose another --output-dir")
    missing = []
    p = run_dir
    while not p.exists():
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise UserError(f"output dir {str(run_dir)!r} cannot be created: {str(p)!r} is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(run_dir, e) from None
    return missing


def holder(run_dir: str | os.PathLike) -> str:
    """Who holds (or last held) the lock, as the lock file records it: 'pid 123 on host since 2026-...'."""
    try:
        info = json.loads((_key(run_dir) / LOCK_NAME).read_text())
        command = f", robustify {info['command']}" if info.get("command") else ""
        return f"pid {info['pid']} on {info['host']} since {info['started']}{command}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


current_command = ""  # set by the CLI (finetune, eval, push, zoo add): named in the refusal of a second command


def _command() -> str:
    return current_command


def _lock(run_dir: Path) -> _Held:
    created = _make_dir(run_dir)
    path = run_dir / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            _remove_empty(created)
            raise _unwritable(run_dir, e) from None
        if fcntl is None:  # pragma: no cover
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"run folder {str(run_dir)!r} is in use by a live run ({holder(run_dir)}); wait for it "
                            "to finish or stop it (a new run can choose another --output-dir)") from None
        try:  # the holder before us may have removed the file after we opened it: lock the file that is there now
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds"),
            "command": _command()}
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
    except OSError as e:  # a full disk: refuse now rather than fail at the first checkpoint
        os.close(fd)
        path.unlink(missing_ok=True)
        _remove_empty(created)
        raise _unwritable(run_dir, e) from None
    return _Held(fd, path, created)


def _remove_empty(created: list[Path]) -> None:
    for d in created:  # deepest first
        with contextlib.suppress(OSError):
            d.rmdir()


def _unlock(held: _Held) -> None:
    with contextlib.suppress(OSError):
        held.path.unlink()  # while still locked: see the inode check in _lock
    os.close(held.fd)
    _remove_empty(held.created)  # a run that failed before writing anything leaves no empty folder behind


def hold(run_dir: str | os.PathLike) -> None:
    """Take the lock on ``run_dir`` until :func:`release` or the end of the process (re-entrant in one process).

    Raises :class:`RunLocked` when another live process holds it, and a :class:`UserError` when the folder cannot be
    created or written (a file in the way, a read-only file system, a full disk).
    """
    key = _key(run_dir)
    if key in _HELD:
        _HELD[key].depth += 1
        return
    _HELD[key] = _lock(key)


def release(run_dir: str | os.PathLike) -> None:
    key = _key(run_dir)
    held = _HELD.get(key)
    if held is None:
        return
    held.depth -= 1
    if held.depth <= 0:
        del _HELD[key]
        _unlock(held)


def release_all() -> None:
    """Release every lock this process holds (the CLI calls it when a command ends; also at exit)."""
    for key in list(_HELD):
        held = _HELD.pop(key)
        _unlock(held)


atexit.register(release_all)


@contextlib.contextmanager
def acquire(run_dir: str | os.PathLike) -> Iterator[Path]:
    """``with runlock.acquire(run_dir):`` hold the run folder's lock for the block (see :func:`hold`)."""
    hold(run_dir)
    try:
        yield _key(run_dir)
    finally:
        release(run_dir)


# ---------------------------------------------------------------------------------------- the folder's state
def clean_temporaries(run_dir: str | os.PathLike) -> list[str]:
    """Remove what a killed run left half-written; returns the names removed. Call only with the lock held."""
    run_dir = Path(run_dir)
    found = [p for pat in TEMP_PATTERNS for p in run_dir.glob(pat)]
    if (run_dir / CHECKPOINTS).is_dir():
        found += [p for pat in CHECKPOINT_TEMP_PATTERNS for p in (run_dir / CHECKPOINTS).glob(pat)]
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return sorted(str(p.relative_to(run_dir)) for p in found)


def has_checkpoints(run_dir: str | os.PathLike) -> bool:
    return bool(checkpoint_dirs(Path(run_dir)))


def prepare_run_dir(run_dir: str | os.PathLike, resume: bool) -> str:
    """Decide whether a run may start (or resume) in ``run_dir``; tidy it; return what happened ('' if nothing
    worth saying). Call with the lock held. Raises a :class:`UserError` when the folder holds a run (and not
    ``resume``), holds something else, or has nothing to resume."""
    run_dir = Path(run_dir)
    cleaned = clean_temporaries(run_dir) if run_dir.is_dir() else []
    note = f"removed temporary files a stopped run left behind: {', '.join(cleaned)}" if cleaned else ""
    entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) if run_dir.is_dir() else []
    if has_checkpoints(run_dir):
        if resume:
            return note
        raise UserError(f"output dir {str(run_dir)!r} already holds a run; pass --resume to continue it or choose "
                        "another --output-dir")
    if (run_dir / WEIGHTS).exists():
        raise UserError(f"output dir {str(run_dir)!r} holds a finished model without checkpoints; choose another "
                        "--output-dir")
    if entries and not set(entries) <= RESTARTABLE:
        raise UserError(f"output dir {str(run_dir)!r} holds other files ({', '.join(entries[:5])}); choose an empty "
                        "or new folder with --output-dir")
    if not entries:
        if resume:
            raise UserError(f"--resume: {str(run_dir)!r} has no checkpoints to resume from; give the --output-dir of "
                            "an interrupted run")
        return note
    # only what a run stopped before its first checkpoint leaves: start it over, in place
    for name in entries:
        p = run_dir / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    what = (f"{str(run_dir)!r} held only the recipe of a run stopped before its first checkpoint; "
            + ("nothing to resume, starting from scratch" if resume else "starting it over"))
    return "; ".join(filter(None, [note, what]))


def claim(run_dir: Path, resume: bool, is_main: bool = True,
          share: Callable[[list[Any]], None] | None = None) -> str:
    """Lock and prepare ``run_dir`` on the main process; ``share`` (e.g. Accelerate's ``broadcast_object_list``
    from process 0) gives the other processes the same verdict, so all raise the same error or all go on.
    Returns :func:`prepare_run_dir`'s note."""
    verdict: list[Any] = [None]
    if is_main:
        try:
            hold(run_dir)
        except UserError as e:
            verdict = [("error", str(e))]
        else:
            try:
                verdict = [("ok", prepare_run_dir(run_dir, resume))]
            except UserError as e:
                release(run_dir)
                verdict = [("error", str(e))]
    if share is not None:
        share(verdict)
    kind, text = verdict[0]
    if kind == "error":
        raise UserError(text)
    return text
