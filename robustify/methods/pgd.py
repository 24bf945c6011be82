"""PGD-AT (Madry et al. 2018): the reference for strength and cost."""

from __future__ import annotations

import torch

from .. import attacks
from .base import Method, StepContext, StepResult, batchnorm_mode, register_method


@register_method("pgd")
class PGD(Method):
    """PGD-AT (Madry et al. 2018): k steps of alpha from a random start; the reference for strength and cost."""

    @property
    def alpha(self) -> float:
        return self.cfg.alpha if self.cfg.alpha is not None else 2.5 * self.threat.eps / self.cfg.steps

    @property
    def passes_per_batch(self) -> int:
        return self.cfg.steps + 1

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "steps": self.cfg.steps, "bn_mode": self.cfg.bn_mode}

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        with batchnorm_mode(ctx.attack_model, self.cfg.bn_mode), ctx.autocast():
            delta = attacks.pgd(ctx.attack_model, x, y, self.threat.eps, self.alpha, self.cfg.steps, self.threat.norm)
        return self._train_on(ctx, x + delta, y)
