"""Checkpoints of a fine-tuning run: what is saved, where, and how a run resumes exactly where it stopped.

A checkpoint is one folder ``RUN/checkpoints/ckpt_<progress>`` (``progress`` = minibatches done since the start of
the run, so names sort in time order), written whole into a hidden temporary folder and renamed into place, so a
kill at any moment leaves either the previous checkpoint or the new one, never half of one. It holds:

- Accelerate's ``save_state``: model, optimizer, gradient scaler, the accumulation counter and every process's RNG
  states (``random_states_<rank>.pkl``, Accelerate's own format, written and read only by this run);
- ``trainer_state.json``: where the run is (stage, epoch, minibatch within the epoch, optimizer steps), the guard and
  best-probe bookkeeping, the history, the partial-epoch sums and the cost so far;
- ``method_rank<r>.safetensors``: each process's own method state (free AT's carried perturbation differs per rank);
- ``best.safetensors``: the best-probe weights (also kept in memory on every process, see :class:`BestWeights`).

Checkpoints are written every ``train.checkpoint_every`` optimizer steps, at every epoch end and when the process is
told to stop (SIGTERM, SIGINT: what a cluster sends before preemption); the last ``KEEP`` are kept.

Multi-node runs without a shared file system: every process keeps the best-probe weights in host memory, so the
rollback and the final best-model load never read a file that another node wrote. Set
``train.save_on_each_node: true`` there, so that each node's local main process writes the model and optimizer
state it needs to resume.

Must not: resume from a checkpoint that fails verification or was made by another recipe.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..fileio import atomic_write_json, file_sha256
from ..runfolder import (  # noqa: F401  (the layout is runfolder.py's; tests and the trainer import it from here)
    CHECKPOINTS,
    RECIPE,
    STATE_FILE,
    checkpoint_dirs,
    checkpoint_folders,
    checkpoint_path,
    checkpoint_temp_path,
)
from . import options

BEST_FILE = "best.safetensors"
MANIFEST = "manifest.json"  # every file of the checkpoint with its size and sha256, written last
KEEP = 2


@dataclass
class TrainState:
    """Everything besides model, optimizer and RNG that a resumed run needs; saved as JSON."""

    stage: int = 0  # index of the stage in progress
    epoch: int = 0  # epochs completed in this stage
    batch: int = 0  # minibatches of the epoch in progress already trained on
    opt_steps: int = 0  # optimizer steps in this stage
    prior_opt_steps: int = 0  # optimizer steps of the stages already finished
    progress: int = 0  # minibatches since the start of the run (checkpoint names)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_probe: float = -1.0
    best_epoch: int = -1
    stopped: str | None = None
    wall_seconds: float = 0.0
    batch_passes: int = 0
    example_passes: int = 0
    before: dict[str, Any] | None = None
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss*n, correct, n (this process)
    epoch_seconds: float = 0.0  # time spent in the epoch in progress before the last checkpoint
    fingerprint: dict[str, Any] | None = None  # the run's resolved recipe and data (:func:`run_fingerprint`)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class BestWeights:
    """The best-probe weights, kept in host memory on every process (identical on all of them, as DDP keeps the
    weights identical), so rollback and the final selection need no shared file system."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def capture(self, model: torch.nn.Module) -> None:
        self.state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}

    def restore(self, model: torch.nn.Module) -> None:
        if self.state is None:
            raise RuntimeError("no best-probe weights captured yet")
        model.load_state_dict(self.state)

    def save(self, path: Path) -> None:
        if self.state is not None:
            save_file(self.state, str(path))

    def load(self, path: Path) -> None:
        self.state = load_file(str(path)) if path.is_file() else None


def _writes_here(accelerator: Accelerator) -> bool:
    """Does this process write the shared files (main process, or each node's local main with save_on_each_node)?"""
    if accelerator.project_configuration.save_on_each_node:
        return accelerator.is_local_main_process
    return accelerator.is_main_process


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainState, method_state: dict[str, Any],
                    best: BestWeights, model: torch.nn.Module, channels_last: bool) -> Path:
    """Write a complete checkpoint atomically (temporary folder, then rename) and keep the last ``KEEP``.

    Every process takes part: Accelerate writes the model/optimizer from the main process and RNG states from each.
    """
    final, tmp = checkpoint_path(run_dir, state.progress), checkpoint_temp_path(run_dir, state.progress)
    if _writes_here(accelerator) and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        with contiguous_weights(model, channels_last):
            accelerator.save_state(str(tmp), safe_serialization=True)
        tensors = {k: v.detach().contiguous() for k, v in method_state.items() if isinstance(v, torch.Tensor)}
        if tensors or method_state:
            meta = {k: json.dumps(v) for k, v in method_state.items() if not isinstance(v, torch.Tensor)}
            save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / f"method_rank{accelerator.process_index}"
                                                                      ".safetensors"), metadata=meta or None)
        if _writes_here(accelerator):
            best.save(tmp / BEST_FILE)
            atomic_write_json(tmp / STATE_FILE, state.to_json())
    except Exception as e:  # noqa: BLE001 - safetensors and torch's zip writer report a full disk in their own types
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(e, final, run_dir) from None
    accelerator.wait_for_everyone()
    if _writes_here(accelerator):
        try:
            write_manifest(tmp)
        except (OSError, RuntimeError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_failed(e, final, run_dir) from None
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    if not _writes_here(accelerator) and tmp.exists():
        # nobody renamed it on this file system: a node without a shared disk and without save_on_each_node, where
        # only this process's RNG state landed; it can never be resumed from, so it must not pile up
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_failed(error: BaseException, final: Path, run_dir: Path) -> BaseException:
    """A failed checkpoint write as the user needs it: one line for a full disk or a read-only / vanished folder (the
    partial checkpoint is removed, the previous one kept), the original error otherwise."""
    text = str(error)
    errno_ = getattr(error, "errno", None)
    try:  # torch's zip writer reports a full disk only as "unexpected pos ...": look at the free space too
        nearly_full = shutil.disk_usage(final.parent).free < 64 * 2**20
    except OSError:
        nearly_full = False
    full = errno_ == errno.ENOSPC or "No space left" in text or "os error 28" in text or nearly_full
    if not (full or errno_ in (errno.EROFS, errno.EACCES, errno.ENOENT, errno.EDQUOT)):
        return error
    cause = "no space left on the device" if full else (text.strip().splitlines()[0] if text.strip() else
                                                        type(error).__name__)
    kept = checkpoint_dirs(run_dir)
    return UserError(f"checkpoint {final.name} could not be written in {final.parent}: {cause}; the partial "
                     f"checkpoint was removed and {kept[-1].name if kept else 'no earlier checkpoint'} is kept; free "
                     f"space and continue with: robustify finetune --output-dir {run_dir} --resume")


def load_checkpoint(accelerator: Accelerator, folder: Path, best: BestWeights,
                    device: torch.device) -> tuple[TrainState, dict[str, Any]]:
    """Restore model, optimizer and RNG (Accelerate), then the trainer state, this process's method state (on
    ``device``) and the best-probe weights. A checkpoint without a state the run registers (one written by an
    earlier robustify, which registered an option's state only in the stages that used it: an option with a run
    slot, train/options/, set in a later stage only) is one line saying so, naming those options' keys, not
    Accelerate's RuntimeError or FileNotFoundError."""
    try:
        accelerator.load_state(str(folder))
    except (FileNotFoundError, RuntimeError) as e:
        counts = re.findall(r"(?:Found checkpoints|Registered objects): (\d+)", str(e))
        if isinstance(e, RuntimeError) and len(counts) != 2:
            raise
        held = (f"holds {counts[0]} option state(s) where this run registers {counts[1]}" if len(counts) == 2
                else f"has no {Path(getattr(e, 'filename', '') or '').name or 'file the run reads'}")
        keys = " or ".join(options.checkpointed_keys()) or "an option"  # the options with run-level state
        raise UserError(f"checkpoint {folder} {held} (an option's checkpointed state, e.g. that of {keys} set in a "
                        "later stage only: a checkpoint written by an earlier robustify, which registered it only in "
                        "the stages using it); finish the run with the robustify that wrote it, or start it again in "
                        "a new --output-dir") from None
    state = TrainState.from_json(json.loads((folder / STATE_FILE).read_text()))
    best.load(folder / BEST_FILE)
    method_state: dict[str, Any] = {}
    path = folder / f"method_rank{accelerator.process_index}.safetensors"
    if path.is_file():
        from safetensors import safe_open

        where = "cpu" if torch.device(device).type == "cpu" else str(device)  # safetensors refuses "cpu:0"
        with safe_open(str(path), framework="pt", device=where) as f:
            method_state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
            method_state.update({k: json.loads(v) for k, v in (f.metadata() or {}).items()})
    return state, method_state


@contextlib.contextmanager
def contiguous_weights(model: torch.nn.Module, channels_last: bool) -> Iterator[None]:
    """safetensors stores only contiguous tensors: switch a channels_last model back while it is being saved."""
    if not channels_last:
        yield
        return
    model.to(memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        model.to(memory_format=torch.channels_last)


class StopSignal:
    """SIGTERM/SIGINT handler for preemptible machines: the first signal only sets a flag, which the training loop
    reads between minibatches (agreeing across processes) to write a checkpoint and exit; a second SIGINT interrupts
    at once, as usual."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._group: Any = None  # the gloo group the per-step agreement uses (see agreed)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: signals cannot be caught there
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, accelerator: Accelerator) -> int | None:
        """The signal number if any process received one; called by every process after every optimizer step.

        Several processes agree through one all-reduce of a one-element CPU tensor over a gloo group (the default
        group on CPU, a gloo side group next to NCCL): a few microseconds on one machine, well under a millisecond
        across nodes, and no GPU synchronisation, so a SIGTERM on any process stops every process after the same
        optimizer step, seconds after the signal, whatever ``train.log_every``.
        """
        if accelerator.num_processes == 1:
            return self.received
        import torch.distributed as dist

        from ..evaluate.collectives import stage

        if self._group is None:  # every process reaches the first call at the same step, so new_group matches
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        flag = torch.tensor([self.received or 0], dtype=torch.int64)  # CPU: no device copy, no GPU sync
        with stage("stop-signal agreement"):
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag[0]) or None


# Keys a resumed run may change: how it is run, logged and checkpointed, never what is trained or measured.
RESUME_MAY_CHANGE = ("train.stop_after", "train.log_every", "train.checkpoint_every", "train.log_with",
                     "train.save_on_each_node", "data.num_workers", "data.eval_batch_size", "data.decode", "output_dir")


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Compare the run's own resolved recipe with the one given to ``--resume`` (both flattened).

    Returns (refused, notes): ``refused`` lists ``key: saved -> new`` for changes that would make the run a different
    run (threat model, method, schedule, data, model, seed, evaluation...); the only accepted change of substance is
    a larger ``train.epochs`` (extending the run), explained in ``notes``. A key that a later robustify added is
    compared as its default, so a checkpoint made before it existed still resumes.
    """
    from ..config import FinetuneConfig, flatten

    defaults = flatten(FinetuneConfig().to_dict())  # a key added after the checkpoint was made: it had the default
    refused, notes = [], []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, defaults.get(key)), current.get(key, defaults.get(key))
        if old == new or key in RESUME_MAY_CHANGE:
            continue
        if key == "train.epochs" and isinstance(old, int) and isinstance(new, int) and new > old:
            notes.append(f"train.epochs {old} -> {new}: the schedule is stretched over the new length, so the "
                         "learning rate continues from the same optimizer step of the longer schedule")
            continue
        refused.append(f"{key}: {old!r} -> {new!r}")
    return refused, notes


# ------------------------------------------------------------------------------------- verification on load
def write_manifest(folder: Path) -> None:
    """Record every file of a checkpoint (size, sha256) so that a load can tell a damaged file from a good one."""
    files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    atomic_write_json(folder / MANIFEST, {"files": files})


def damage(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be resumed from (a file missing, truncated, changed, unparseable), or
    None when it is intact. Checked before Accelerate (or pickle) reads any of it."""
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return f"{STATE_FILE} is missing"
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        try:
            files = json.loads(manifest_path.read_text())["files"]
            assert isinstance(files, dict) and files
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            return f"{MANIFEST} cannot be read"
        for name, info in files.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            try:
                size, digest = int(info["size"]), str(info["sha256"])
            except (KeyError, TypeError, ValueError):
                return f"{MANIFEST} cannot be read"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, {size} were written"
            if file_sha256(path) != digest:
                return f"{name} differs from the file written (sha256)"
    else:  # written before checkpoints had a manifest: at least every file must parse
        if not any(folder.glob("model*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
            return "the model weights file is missing"
        for path in folder.glob("*.safetensors"):
            try:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    list(f.keys())
            except Exception:  # noqa: BLE001 - any failure to parse is damage
                return f"{path.name} cannot be parsed"
    try:
        data = json.loads(state_path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
        TrainState.from_json(data)
    except (OSError, ValueError, TypeError) as e:
        return f"{STATE_FILE} cannot be parsed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def choose_checkpoint(run_dir: Path, is_main: bool = True, say: Any = print, among: set[str] | None = None) -> Path:
    """The newest intact checkpoint of ``run_dir`` (of those named in ``among``, when given: the ones every node
    holds): each is verified (:func:`damage`), newest first; a damaged one is reported in one line and moved aside
    (``checkpoints/damaged_ckpt_*``, kept for inspection, never resumed or counted again). None intact: a
    :class:`UserError` that says so and how to start the run again."""
    damaged: list[str] = []
    for folder in reversed([f for f in checkpoint_folders(run_dir) if among is None or f.name in among]):
        why = damage(folder)
        if why is None:
            if damaged:
                say(f"robustify: resuming from the older intact checkpoint {folder.name}: {'; '.join(damaged)}")
            return folder
        aside = folder.with_name(f"damaged_{folder.name}")
        if is_main:
            shutil.rmtree(aside, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.rename(aside)
        damaged.append(f"checkpoint {folder.name} is damaged ({why}; moved to {CHECKPOINTS}/{aside.name})")
    recipe = Path(run_dir) / RECIPE
    start = (f"robustify finetune --recipe {recipe}" if recipe.is_file() else
             "robustify finetune --recipe RECIPE --output-dir NEW_DIR")
    raise UserError(f"no intact checkpoint to resume from in {Path(run_dir) / CHECKPOINTS}"
                    f"{': ' + '; '.join(damaged) if damaged else ''}; start the run again with: {start} (a new run "
                    "folder is made beside this one)")


# ------------------------------------------------------------------------------------------ the same run only
def run_fingerprint(cfg: Any, loaders: Any = None) -> dict[str, Any]:
    """What makes a run this run: its resolved recipe (without the keys a resume may change) and its data as the
    loaders saw it (spec, split sizes, classes, the held-out probe indices' hash). Stored in every checkpoint."""
    from ..config import flatten

    recipe = {k: v for k, v in flatten(cfg.to_dict()).items() if k not in RESUME_MAY_CHANGE}
    fp: dict[str, Any] = {"recipe": recipe,
                          "recipe_sha256": hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode())
                          .hexdigest()}
    if loaders is not None:
        fp["data"] = {"spec": cfg.data.name, "train_size": loaders.train_size, "eval_size": loaders.eval_size,
                      "num_classes": loaders.num_classes, "probe": loaders.probe_record}
    return fp


def _refusal(folder: Path, what: str, differences: list[str]) -> UserError:
    return UserError(f"--resume continues the same run, but checkpoint {folder.name} was made by {what}: "
                     f"{'; '.join(differences)}; resume with the run's own recipe (leave out --recipe and the changed "
                     "flags), or start a new --output-dir for a different run")


def check_same_recipe(folder: Path, saved: dict[str, Any] | None, cfg: Any, edited: bool = False) -> list[str]:
    """Refuse a resume whose recipe (the folder's recipe.yaml, or an explicit --recipe, with the flags) is not the
    one the checkpoint was made with, naming each difference; returns notes on the accepted changes. A checkpoint
    written before fingerprints existed is not checked here (recipe.yaml still is, by the trainer)."""
    if not saved or "recipe" not in saved:
        return []
    current = run_fingerprint(cfg)["recipe"]
    refused, notes = resume_changes(dict(saved["recipe"]), current)
    if refused:
        raise _refusal(folder, "a different recipe" + (" (the run folder's recipe.yaml was edited after the run "
                                                      "wrote it)" if edited else ""), refused)
    return notes


def check_same_data(folder: Path, saved: dict[str, Any] | None, cfg: Any, loaders: Any) -> None:
    """Refuse a resume on data that is not the data the checkpoint was trained on (other files behind the same
    spec, a different split, another held-out probe)."""
    if not saved or "data" not in saved:
        return
    now = run_fingerprint(cfg, loaders)["data"]
    old = saved["data"]
    differences = [f"data {key}: {old.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(old) | set(now))
                   if old.get(key) != now.get(key)]
    if differences:
        raise _refusal(folder, "other data", differences)


def recipe_file_edited(run_dir: Path) -> bool:
    """True when the folder's recipe.yaml no longer matches the sha256 stamp the run wrote into it."""
    from ..config import recipe_stamp_ok

    path = Path(run_dir) / RECIPE
    try:
        return recipe_stamp_ok(path.read_bytes()) is False
    except OSError:
        return False
