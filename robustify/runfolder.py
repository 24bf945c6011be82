"""The run folder: every file name it holds, where its checkpoints live, and how its files are read and written.

A run folder (``robustify finetune --output-dir RUN``) is read and written by four wings: the trainer writes the
recipe, history, checkpoints and the export; ``robustify eval`` rewrites the record and the card; ``push`` and
``zoo add`` read it; the run lock guards it. Each name is spelled here and only here, and every wing reads a file
through :meth:`RunFolder.read_json` / :meth:`RunFolder.read_text` (a file that cannot be read is one line, never a
traceback) and writes through :meth:`RunFolder.write` (all files or none, each renamed into place whole). What the
files *mean* is owned above: the record's schema (config.json's ``robustness`` block, metrics.json) by
``publish/runrecord.py``, the card by ``publish/card.py``, the checkpoint's contents by ``train/checkpoint.py``,
the lock's protocol by ``runlock.py``.

Files (the layout docs/run-folder.md describes):

- ``model.safetensors`` + ``config.json``: timm's hub format (``timm.create_model("local-dir:RUN")`` loads them);
  config.json also carries the record's ``robustness`` block;
- ``metrics.json``: the record's results; ``README.md``: the model card; ``recipe.yaml``: the resolved recipe;
- ``history.json`` / ``history.png``: per-epoch history; ``eval.json`` / ``eps_curve.png``: ``robustify eval``'s
  report and accuracy-vs-eps plot; ``corruptions.json`` / ``corruptions.md`` / ``corruptions.png``: the
  common-corruption evaluation (``--attack corruptions``);
- ``checkpoints/ckpt_<progress>/``: complete checkpoints (``trainer_state.json`` marks one complete);
- ``.lock``: the run lock (``runlock.py``); ``.export-*`` and ``.*.tmp``: temporaries of an interrupted write.

Must not: know what a file's contents mean (the record, the card, a checkpoint's state), or open a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import UserError, first_line
from .fileio import atomic_write_many

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METRICS = "metrics.json"
CARD = "README.md"
RECIPE = "recipe.yaml"
HISTORY = "history.json"
HISTORY_PLOT = "history.png"
EVAL = "eval.json"
EPS_CURVE_PLOT = "eps_curve.png"
CORRUPTIONS_REPORT = "corruptions.json"  # robustify eval --attack corruptions: the result, a table and a plot
CORRUPTIONS_TABLE = "corruptions.md"
CORRUPTIONS_PLOT = "corruptions.png"
PLOTS = "*.png"  # every plot a run folder holds (history.png, eps_curve.png, ...)
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"  # inside a checkpoint: written last, so it marks the checkpoint complete
LOCK = ".lock"
EXPORT_TEMP_PREFIX = ".export-"  # the export's temporary folder inside the run folder

MODEL_FILES = (WEIGHTS, CONFIG)  # what timm's local-dir: loader needs
RECORD_FILES = (CONFIG, METRICS)  # the record: config.json's robustness block and metrics.json, sealed together
FINISHED_FILES = (WEIGHTS, CONFIG, METRICS, RECIPE)  # what a finished run folder holds
TEMP_PATTERNS = (f"{EXPORT_TEMP_PREFIX}*", ".*.tmp")  # the export's temporary folder, fileio.py's temporary files
CHECKPOINT_TEMP_PATTERNS = (".tmp_*", "*.tmp")  # a checkpoint being saved, a best-weights file being written
RESTARTABLE = frozenset({RECIPE, CHECKPOINTS})  # what a run killed before its first checkpoint leaves behind

_CKPT = "ckpt_"


# ------------------------------------------------------------------------------------------ the checkpoint layout
def checkpoint_name(progress: int) -> str:
    """``ckpt_000000123``: zero-padded, so names sort in time order."""
    return f"{_CKPT}{progress:09d}"


def checkpoint_path(run_dir: Path, progress: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / checkpoint_name(progress)


def checkpoint_temp_path(run_dir: Path, progress: int) -> Path:
    """Where a checkpoint is written before it is renamed into place (a ``CHECKPOINT_TEMP_PATTERNS`` name)."""
    return Path(run_dir) / CHECKPOINTS / f".tmp_{checkpoint_name(progress)}"


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """Every checkpoint folder, complete or not, oldest first (a damaged one may lack its state file)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_CKPT) and p.name[len(_CKPT):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_CKPT):]))


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of an interrupted save are not listed)."""
    return [p for p in checkpoint_folders(run_dir) if (p / STATE_FILE).is_file()]


def is_model_folder(path: str | os.PathLike) -> bool:
    """A folder timm loads with ``local-dir:`` (weights and config.json), robustify's run folders included."""
    p = Path(path)
    return p.is_dir() and all((p / name).is_file() for name in MODEL_FILES)


# ---------------------------------------------------------------------------------------------- the folder
class RunFolder:
    """One run folder's files by name: read (one line when one cannot be) and written (all or none)."""

    def __init__(self, path: str | os.PathLike, what: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.what = what or f"run folder {str(self.path)!r}"  # how messages name it

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def missing(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if not self.has(n)]

    def plots(self) -> list[str]:
        return sorted(p.name for p in self.path.glob(PLOTS) if p.is_file())

    def files(self) -> list[str]:
        """The folder's own files (not the lock or temporaries), by name."""
        return sorted(p.name for p in self.path.iterdir() if p.is_file() and not p.name.startswith("."))

    def read_text(self, name: str) -> str:
        try:
            return (self.path / name).read_text(encoding="utf-8")
        except (OSError, ValueError) as e:  # ValueError: not UTF-8
            raise UserError(f"{self.what}: {name} cannot be read ({first_line(e)})") from None

    def read_json(self, name: str) -> Any:
        """The file's JSON (the one JSON reader of a run folder: a missing, unreadable or invalid file is one line
        naming it)."""
        import json

        text = self.read_text(name)
        try:
            return json.loads(text)
        except ValueError as e:
            raise UserError(f"{self.what}: {name} cannot be read ({first_line(e)})") from None

    def read_record_files(self) -> tuple[Any, Any]:
        """config.json and metrics.json, as stored (their meaning: ``publish/runrecord.py``)."""
        return self.read_json(CONFIG), self.read_json(METRICS)

    def write(self, files: Mapping[str, bytes | str]) -> None:
        """Replace the named files together: each written whole beside its target first, then all renamed into
        place (:func:`fileio.atomic_write_many`), so a failure leaves every one of them as it was."""
        atomic_write_many({self.path / name: data.encode("utf-8") if isinstance(data, str) else data
                           for name, data in files.items()})
