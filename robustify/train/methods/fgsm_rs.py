"""Fast AT (Wong et al. 2020): FGSM from a uniform random start.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

import torch

from ... import attacks
from .base import Method, StepContext, StepResult, batchnorm_mode, register_method


@register_method("fgsm-rs")
class FGSMRandomStart(Method):
    """Fast AT (Wong et al. 2020): a uniform random start in the eps-ball, one FGSM step of alpha = 1.25 eps.

    ``method.random_start: false`` is plain FGSM training from the clean input (alpha defaults to eps then): the
    setting in which Wong et al. observe catastrophic overfitting, kept so the guard against it can be exercised."""

    def alpha_for(self, eps: float) -> float:
        return 1.25 * eps if self.cfg.random_start else eps

    @property
    def passes_per_batch(self) -> int:
        return 2 + self.loss_passes

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "random_start": self.cfg.random_start,
                "bn_mode": self.cfg.bn_mode, **self.describe_loss()}

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        with batchnorm_mode(ctx.attack_model, self.cfg.bn_mode), ctx.autocast():
            loss_fn, target = self.attack_objective(ctx, x, y)
            eps, alpha = self.budget(ctx)
            delta = attacks.fgsm(ctx.attack_model, x, target, eps, alpha, self.threat.norm,
                                 random_start=self.cfg.random_start, loss_fn=loss_fn)
        return self._train_on(ctx, x + delta, y, x_clean=x)
