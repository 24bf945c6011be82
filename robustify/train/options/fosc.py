"""FOSC-controlled PGD (Wang et al. 2019, "On the convergence and robustness of adversarial training"):
``method.fosc: true`` stops each example's PGD once its first-order stationarity condition falls to a threshold that
decreases linearly from ``method.fosc_start`` (first epoch) to 0 (last epoch), the paper's dynamic schedule: weak
adversarial examples early, fully converged ones at the end.

The option (:class:`FoscOption`) owns the keys' checks, the plan's note, the attack (:func:`pgd_fosc`, which it
hands to the PGD method through ``StepContext.pgd_attack``), the schedule and the per-epoch statistics (mean FOSC
of the examples trained on, input gradients computed: the history's ``fosc``, ``fosc_threshold`` and
``attack_grads``), their per-process state in every checkpoint (the same ``"fosc"`` entry the PGD method saved
before the option had its own file, so such a checkpoint resumes exactly), the record's ``fosc_start`` and the
card's line. The stage's epochs come from its config (``train.epochs``: PGD makes one pass per epoch).

Must not: step the optimizer or touch the weights in the attack, read a device value back to the host in the step,
or import the trainer.
"""

from __future__ import annotations

from typing import Any

import torch

from ... import attacks
from ...errors import ConfigError
from ...evaluate.collectives import summed
from .base import Option

STATE_KEY = "fosc"  # the schedule's entry in a process's checkpointed method state (as the PGD method wrote it)


def fosc(grad: torch.Tensor, delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The first-order stationarity condition of Wang et al. 2019, per example: eps * ||grad||_* - <delta, grad>
    (the dual norm: L1 for Linf, L2 for L2, Linf for L1). It is >= 0 and 0 exactly when no first-order move inside
    the ball raises the loss: how well ``delta`` solves the inner maximisation (the image box is not part of it)."""
    g = grad.flatten(1).float()
    dual = g.abs().sum(1) if norm == "Linf" else g.norm(p=2, dim=1) if norm == "L2" else g.abs().amax(1)
    return eps * dual - (delta.flatten(1).float() * g).sum(1)


def pgd_fosc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
             norm: str, threshold: float, loss_fn: attacks.LossFn = attacks.cross_entropy,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PGD whose examples stop once their FOSC is at or below ``threshold`` (Wang et al. 2019's criterion).

    Returns ``(delta, fosc, grads)``: the perturbation, each example's FOSC at its last gradient evaluation while it
    was running, and the input gradients the attack used (examples x steps while running, a device tensor). The
    whole batch is forwarded at every step and a stopped example's perturbation is masked, not dropped: a subset
    forward would change BatchNorm's batch statistics under ``bn_mode: train`` (and refuse a subset of one), and
    choosing the subset would read the mask back to the host at every step. So there is no host synchronisation,
    and the compute is PGD's whatever the threshold. FOSC >= 0 always, so threshold 0 stops no example and this
    returns exactly :func:`robustify.attacks.pgd`'s perturbation, bit for bit (same random start, same steps, same
    arithmetic).
    """
    attacks.check_norm(norm)
    delta = attacks.random_init(x, eps, norm, generator)
    last = torch.zeros(x.shape[0], device=x.device)
    grads = torch.zeros((), dtype=torch.long, device=x.device)
    running = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    shape = (-1, *([1] * (x.dim() - 1)))
    for _ in range(steps):
        grad, _ = attacks.input_gradient(model, x, delta, y, loss_fn)
        grads += running.sum()
        value = fosc(grad, delta, eps, norm)
        last = torch.where(running, value, last)
        # FOSC is never negative, so threshold 0 stops no example (rounding may put an aligned one a hair below 0)
        if threshold > 0:
            running = running & (value > threshold)
        delta = torch.where(running.view(shape), attacks.ascent_step(x, delta, grad, alpha, eps, norm), delta)
    return delta, last, grads


class FOSCSchedule:
    """The threshold for the current epoch and the running sums of one epoch (kept on the device: no host sync)."""

    def __init__(self, start: float, total_epochs: int = 1) -> None:
        self.start = start
        self.total_epochs = total_epochs
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


class FoscOption(Option):
    """``method.fosc: true`` (pgd): the registered unit (checks, plan, attack, schedule, history, record, card)."""

    name = "fosc"
    keys = {"method.fosc": "true", "method.fosc_start": "0.5"}
    title = "FOSC-controlled PGD: each example's attack stops early; method.name=pgd"
    adversarial_only = {"method.fosc": False}  # a natural stage (LP-FT's linear probe) trains without it

    def __init__(self, cfg: Any, slot: Any = None):
        super().__init__(cfg, slot)
        # the stage's epochs: PGD makes one pass over the data per epoch (Method.epochs is the identity for it)
        self.schedule = FOSCSchedule(cfg.method.fosc_start, cfg.train.epochs)

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return bool(cfg.method.fosc) and cfg.method.name == "pgd"

    @classmethod
    def check(cls, cfg: Any) -> None:
        if cfg.method.fosc and cfg.method.name != "pgd":
            raise ConfigError(f"method.fosc=true with method.name={cfg.method.name!r} is not accepted: FOSC stops "
                              "PGD's steps early (Wang et al. 2019); use method.name=pgd")
        if cfg.method.fosc and cfg.method.loss == "trades":
            raise ConfigError("method.fosc=true with method.loss='trades' is not accepted: FOSC is defined on the "
                              "cross-entropy attack; use method.loss=ce")
        if cfg.method.fosc_start < 0:
            raise ConfigError(f"method.fosc_start={cfg.method.fosc_start:g} is negative; use a threshold >= 0 such "
                              "as 0.5")

    @classmethod
    def plan_notes(cls, stage: str, cfg: Any, data_passes: int) -> list[str]:
        return [f"stage {stage}: FOSC, each example's PGD stops at a threshold falling from "
                f"{cfg.method.fosc_start:g} (first epoch) to 0 (last); no extra passes (every step runs on the whole "
                "batch)"]

    @classmethod
    def record(cls, cfg: Any) -> dict[str, Any]:
        return {"fosc_start": cfg.method.fosc_start} if cls.active(cfg) else {}

    @classmethod
    def card_lines(cls, record: Any) -> list[str]:
        # a record written before FOSC was an option holds fosc_start in its method block instead
        t = record.training
        start = (t.options or {}).get("fosc_start", (getattr(t, "method", None) or {}).get("fosc_start"))
        if start is None:
            return []
        return [f"- FOSC-controlled PGD (Wang et al. 2019): each example's attack stopped once its first-order "
                f"stationarity condition (FOSC) reached the epoch's threshold, which fell linearly from {start:g} in "
                "the first epoch to 0 in the last (each epoch's threshold and mean FOSC are in the history)."]

    def attach(self, ctx: Any, stepper: Any, model: Any) -> None:
        ctx.pgd_attack = self.attack  # the PGD method runs it in place of attacks.pgd

    def attack(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
               norm: str) -> torch.Tensor:
        """PGD stopped per example at this epoch's threshold; the epoch's statistics are summed on the device."""
        delta, value, grads = pgd_fosc(model, x, y, eps, alpha, steps, norm, self.schedule.threshold())
        self.schedule.record(value, grads)
        return delta

    def state_dict(self) -> dict[str, Any]:
        return {STATE_KEY: self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        if STATE_KEY in state:
            self.schedule.load_state_dict(state[STATE_KEY])
        return {k: v for k, v in state.items() if k != STATE_KEY}

    def history_fields(self, run: Any, epoch: int) -> dict[str, Any]:
        return self.schedule.end_epoch()
