"""Stop a run whose training went non-finite or diverged, before it can be selected as "best", exported or published.

A NaN learning rate, a learning rate far too high or a perturbation that free AT carries from batch to
batch can turn the loss or the weights into NaN/inf. Left alone, such a run "finishes": a NaN model is marked best
every epoch (its probe accuracy is whatever argmax of NaN logits gives) and is exported with a card claiming ~1/C
accuracy. The guard here turns that into a :class:`TrainingDiverged` error (exit status 3) that names the step, the
value and the likely cause. Raised from inside the epoch, it leaves the last epoch checkpoint as it was (the last good
state) and nothing is exported.

Cost: no host synchronisation per step. The trainer already accumulates the epoch's loss on the device (a NaN in any
step makes the running sum NaN for good); :meth:`DivergenceGuard.check_loss` reads it once per ``train.log_every``
steps and at epoch end, and :meth:`DivergenceGuard.check_model` checks every weight and buffer once per epoch, before
the probe. Under several processes the verdict is reduced across them, so all stop together.

Must not: let a non-finite model be selected, exported or published.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..config import FinetuneConfig
from ..errors import UserError

# a mean loss this many times that of a uniform guess (ln C) is not training any more: it has diverged
DIVERGED_LOSS_FACTOR = 50.0


class TrainingDiverged(UserError):
    """Training produced non-finite (or exploding) values; nothing was exported. Exit status 3."""

    exit_code = 3


def likely_cause(cfg: FinetuneConfig, lr: float | None = None) -> str:
    """The settings that usually explain a diverged run, most likely first."""
    lr_now = cfg.schedule.lr if lr is None else lr
    causes = []
    if not math.isfinite(lr_now):
        causes.append(f"the learning rate is {lr_now} (check schedule.*)")
    high = 0.01 if cfg.optim.name == "adamw" else 1.0
    if cfg.schedule.lr >= high:
        causes.append(f"the learning rate is too high (schedule.lr={cfg.schedule.lr:g}; try 10x lower, e.g. "
                      f"{cfg.schedule.lr / 10:g}, or set optim.grad_clip=1.0)")
    if cfg.optim.name == "sgd" and cfg.optim.momentum >= 0.99:
        causes.append(f"momentum close to 1 (optim.momentum={cfg.optim.momentum:g}; try 0.9)")
    if cfg.method.name == "free":
        causes.append("free AT's carried perturbation (method.replays too high or eps too large for this model)")
    if not causes:
        causes.append(f"the learning rate (schedule.lr={cfg.schedule.lr:g}) may be too high for this model and "
                      "batch size (try 10x lower or optim.grad_clip=1.0), or the data holds non-finite values")
    return "; or ".join(causes)


class DivergenceGuard:
    """Checks the trainer calls at its logging points; each raises :class:`TrainingDiverged` on a bad value."""

    def __init__(self, cfg: FinetuneConfig, run_dir: str | Path, num_classes: int, accelerator: Any = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.limit = DIVERGED_LOSS_FACTOR * math.log(max(num_classes, 2))
        self.accelerator = accelerator

    def _any(self, bad: torch.Tensor) -> bool:
        """One host sync; across processes, True if any process saw a bad value."""
        bad = bad.float().reshape(1)
        acc = self.accelerator
        if acc is not None and acc.num_processes > 1:
            bad = acc.reduce(bad, reduction="sum")
        return bool(bad.item() > 0)

    def check_loss(self, loss_sum: torch.Tensor, seen: int, step: int, epoch: int, lr: float | None = None) -> None:
        """``loss_sum``: the device-side running sum of per-example losses over ``seen`` examples this epoch."""
        mean = loss_sum.detach().float() / max(seen, 1)
        if self._any(~torch.isfinite(mean) | (mean > self.limit)):
            value = mean.item()
            what = f"the training loss is {value}" if not math.isfinite(value) else (
                f"the mean training loss reached {value:.3g} (over {DIVERGED_LOSS_FACTOR:g} x ln(classes) = "
                f"{self.limit:.3g})")
            self._stop(what, step, epoch, lr)

    def check_model(self, model: torch.nn.Module, step: int, epoch: int, lr: float | None = None) -> None:
        """Every floating-point weight and buffer finite (a NaN model must never be probed, selected or exported)."""
        tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
        if self._any(~finite):
            names = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
                     if t.is_floating_point() and not torch.isfinite(t).all()]
            self._stop(f"{len(names)} weight tensor(s) hold NaN/inf (first: {names[0] if names else '?'})",
                       step, epoch, lr)

    def _stop(self, what: str, step: int, epoch: int, lr: float | None) -> None:
        from .checkpoint import checkpoint_dirs

        kept_dirs = checkpoint_dirs(self.run_dir)
        kept = (f"the last good checkpoint {kept_dirs[-1]} is kept" if kept_dirs
                else "no checkpoint had been written yet")
        lr_text = f", lr {lr:.4g}" if lr is not None else ""
        raise TrainingDiverged(f"training diverged at epoch {epoch}, optimizer step {step}{lr_text}: {what}; likely "
                               f"cause: {likely_cause(self.cfg, lr)}. Nothing was exported; {kept}")
