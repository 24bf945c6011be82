"""APGD-AT: adversarial training with APGD (Croce & Hein 2020) as the attack, as Singh et al. 2023 train their
ImageNet models (their ``apgd_train``: APGD-CE from the clean input, 2 steps at Linf 4/255, the model in eval mode).

Why a method of its own and not PGD with other defaults: APGD's step size is not a constant. It starts large (2 eps)
and each example's step is halved, and the example restarted from its best point, at fixed checkpoints when its loss
stalls; each step carries momentum 0.75; and the example trains on the point of *highest loss* seen, not the last
iterate. At the same number of gradient evaluations this reaches a higher training loss than PGD with its fixed
2.5 eps / k (tests/test_apgd.py measures it on the quickstart model). The attack itself is
:func:`robustify.attacks.apgd` (Linf, L2, and L1 with its adaptive sparsity); this file only runs it and trains.

Cost: ``steps`` forward/backward passes to the input, one forward to score the last iterate (counted as a whole pass,
as TRADES counts its clean forward), and the training pass: ``steps + 2`` per minibatch.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

import torch

from ... import attacks
from .base import Method, StepContext, StepResult, batchnorm_mode, register_method


@register_method("apgd")
class APGD(Method):
    """APGD-AT: ``method.steps`` APGD-CE steps from the clean input (``method.alpha``: the first step size, default
    2 eps for Linf/L2 and eps for L1), then one training step on the highest-loss point."""

    def alpha_for(self, eps: float) -> float:
        return (1.0 if self.threat.norm == "L1" else 2.0) * eps

    @property
    def passes_per_batch(self) -> int:
        return self.cfg.steps + 2

    def describe(self) -> dict:
        return {"name": self.name, "steps": self.cfg.steps, "alpha": self.alpha, "momentum": attacks.APGD_MOMENTUM,
                "rho": attacks.APGD_RHO, "start": "clean", "bn_mode": self.cfg.bn_mode}

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        eps, alpha = self.budget(ctx)  # eps warm-up scales both (train/options/eps_warmup.py)
        with batchnorm_mode(ctx.attack_model, self.cfg.bn_mode), ctx.autocast():
            delta = attacks.apgd(ctx.attack_model, x, y, eps, self.cfg.steps, self.threat.norm, alpha=alpha)
        return self._train_on(ctx, x + delta, y)
