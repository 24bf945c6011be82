"""FOSC-controlled attack strength for PGD-AT (Wang et al. 2019, "On the convergence and robustness of adversarial
training"): ``method.fosc: true`` stops each example's PGD once its first-order stationarity condition falls to a
threshold that decreases linearly from ``method.fosc_start`` (first epoch) to 0 (last epoch), the paper's dynamic
schedule: weak adversarial examples early, fully converged ones at the end.

This module owns the schedule and the per-epoch statistics (mean FOSC of the examples trained on, input gradients
computed), which go into each epoch's history row and travel in the method's state for an exact resume. The attack
itself is :func:`robustify.attacks.pgd_fosc`; it must not take optimizer steps or touch the weights.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

import torch

from ...evaluate.collectives import summed


class FOSCSchedule:
    """The threshold for the current epoch and the running sums of one epoch (kept on the device: no host sync)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.total_epochs = 1
        self.epochs_seen = 0
        self.sums: torch.Tensor | None = None  # sum of FOSC, examples, input gradients (float64, on the device)

    def threshold(self) -> float:
        """fosc_start in the first epoch, falling linearly to 0 in the last (0 throughout a one-epoch run)."""
        span = max(self.total_epochs - 1, 1)
        return max(self.start * (self.total_epochs - 1 - self.epochs_seen) / span, 0.0)

    def record(self, fosc: torch.Tensor, grads: torch.Tensor) -> None:
        # the count is filled on the device (a kernel argument): torch.tensor(..., device=) would copy from pageable
        # host memory and synchronise the host at every step
        row = torch.stack([fosc.detach().double().sum(), fosc.new_full((), fosc.numel(), dtype=torch.float64),
                           grads.double()])
        self.sums = row if self.sums is None else self.sums.to(row.device) + row

    def end_epoch(self) -> dict:
        """The epoch's history fields, summed over all processes so every process reports the same row."""
        used = self.threshold()
        sums = self.sums if self.sums is not None else torch.zeros(3, dtype=torch.float64)
        total, n, grads = summed(sums).tolist()  # a host tensor (no step yet, or restored) is reduced through the GPU
        self.sums = None
        self.epochs_seen += 1
        return {"fosc": total / max(n, 1), "fosc_threshold": used, "attack_grads": int(grads)}

    def state_dict(self) -> dict:
        return {"epochs_seen": self.epochs_seen, "sums": None if self.sums is None else self.sums.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.epochs_seen = int(state.get("epochs_seen", 0))
        sums = state.get("sums")
        self.sums = None if sums is None else torch.tensor(sums, dtype=torch.float64)
