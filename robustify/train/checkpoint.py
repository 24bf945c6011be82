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
"""

from __future__ import annotations

import contextlib
import errno
import json
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
from ..fileio import atomic_write_json
from ..runfolder import CHECKPOINTS, STATE_FILE, checkpoint_dirs  # noqa: F401  (the layout is shared)

BEST_FILE = "best.safetensors"
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
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"ckpt_{state.progress:09d}"
    tmp = root / f".tmp_ckpt_{state.progress:09d}"
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
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(e, final, run_dir) from None
    accelerator.wait_for_everyone()
    if _writes_here(accelerator):
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
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
    full = errno_ == errno.ENOSPC or "No space left" in text or nearly_full
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
    ``device``) and the best-probe weights."""
    accelerator.load_state(str(folder))
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
        """The signal number if any process received one (a collective when several processes run)."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([self.received or 0], device=accelerator.device)
        got = int(accelerator.reduce(flag, reduction="max").item())
        return got or None


# Keys a resumed run may change: how it is run, logged and checkpointed, never what is trained or measured.
RESUME_MAY_CHANGE = ("train.stop_after", "train.log_every", "train.checkpoint_every", "train.log_with",
                     "train.save_on_each_node", "data.num_workers", "data.eval_batch_size", "output_dir")


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Compare the run's own resolved recipe with the one given to ``--resume`` (both flattened).

    Returns (refused, notes): ``refused`` lists ``key: saved -> new`` for changes that would make the run a different
    run (threat model, method, schedule, data, model, seed, evaluation...); the only accepted change of substance is
    a larger ``train.epochs`` (extending the run), explained in ``notes``.
    """
    refused, notes = [], []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if old == new or key in RESUME_MAY_CHANGE:
            continue
        if key == "train.epochs" and isinstance(old, int) and isinstance(new, int) and new > old:
            notes.append(f"train.epochs {old} -> {new}: the schedule is stretched over the new length, so the "
                         "learning rate continues from the same optimizer step of the longer schedule")
            continue
        refused.append(f"{key}: {old!r} -> {new!r}")
    return refused, notes
