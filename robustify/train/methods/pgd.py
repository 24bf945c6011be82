"""PGD-AT (Madry et al. 2018): the reference for strength and cost.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

import torch

from ... import attacks
from . import trades
from .base import Method, StepContext, StepResult, batchnorm_mode, register_method


@register_method("pgd")
class PGD(Method):
    """PGD-AT (Madry et al. 2018): k steps of alpha from a random start; the reference for strength and cost."""

    def alpha_for(self, eps: float) -> float:
        return 2.5 * eps / self.cfg.steps

    @property
    def passes_per_batch(self) -> int:
        return self.cfg.steps + 1 + self.loss_passes

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "steps": self.cfg.steps, "bn_mode": self.cfg.bn_mode,
                **self.describe_loss()}

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        (eps, alpha), norm = self.budget(ctx), self.threat.norm
        with batchnorm_mode(ctx.attack_model, self.cfg.bn_mode), ctx.autocast():
            if self.trades:
                _, target = self.attack_objective(ctx, x, y)
                delta = trades.pgd_kl(ctx.attack_model, x, target, eps, alpha, self.cfg.steps, norm)
            else:  # an option's replacement of the attack (ctx.pgd_attack), else PGD itself
                delta = (ctx.pgd_attack or attacks.pgd)(ctx.attack_model, x, y, eps, alpha, self.cfg.steps, norm)
        return self._train_on(ctx, x + delta, y, x_clean=x)
