"""PGD-AT (Madry et al. 2018): the reference for strength and cost.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

import torch

from ... import attacks
from ...config import MethodConfig, ThreatConfig
from . import trades
from .base import Method, StepContext, StepResult, batchnorm_mode, register_method
from .fosc import FOSCSchedule


@register_method("pgd")
class PGD(Method):
    """PGD-AT (Madry et al. 2018): k steps of alpha from a random start; the reference for strength and cost."""

    def __init__(self, cfg: MethodConfig, threat: ThreatConfig):
        super().__init__(cfg, threat)
        # method.fosc (Wang et al. 2019): each example's PGD stops at a FOSC threshold falling to 0 (fosc.py)
        self.fosc = FOSCSchedule(cfg.fosc_start) if cfg.fosc else None

    def epochs(self, requested: int) -> int:
        if self.fosc is not None:
            self.fosc.total_epochs = requested
        return requested

    def alpha_for(self, eps: float) -> float:
        return 2.5 * eps / self.cfg.steps

    @property
    def passes_per_batch(self) -> int:
        return self.cfg.steps + 1 + self.loss_passes

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "steps": self.cfg.steps, "bn_mode": self.cfg.bn_mode,
                **self.describe_loss(), **({"fosc_start": self.cfg.fosc_start} if self.fosc is not None else {})}

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        (eps, alpha), norm = self.budget(ctx), self.threat.norm
        with batchnorm_mode(ctx.attack_model, self.cfg.bn_mode), ctx.autocast():
            if self.fosc is not None:
                delta, value, grads = attacks.pgd_fosc(ctx.attack_model, x, y, eps, alpha, self.cfg.steps, norm,
                                                       self.fosc.threshold())
                self.fosc.record(value, grads)
                return self._train_on(ctx, x + delta, y, x_clean=x)
            if self.trades:
                _, target = self.attack_objective(ctx, x, y)
                delta = trades.pgd_kl(ctx.attack_model, x, target, eps, alpha, self.cfg.steps, norm)
            else:
                delta = attacks.pgd(ctx.attack_model, x, y, eps, alpha, self.cfg.steps, norm)
        return self._train_on(ctx, x + delta, y, x_clean=x)

    def on_epoch_end(self, epoch: int) -> dict:
        return self.fosc.end_epoch() if self.fosc is not None else {}

    def state_dict(self) -> dict:
        return {"fosc": self.fosc.state_dict()} if self.fosc is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.fosc is not None and "fosc" in state:
            self.fosc.load_state_dict(state["fosc"])
