"""N-FGSM (de Jorge et al. 2022, "Make Some Noise"): stronger noise, no projection, the cost of FGSM-RS.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

import torch

from ... import attacks
from .base import Method, StepContext, StepResult, batchnorm_mode, register_method


@register_method("n-fgsm")
class NoiseFGSM(Method):
    """N-FGSM: noise uniform in [-k eps, k eps] (k = ``method.noise_factor``, 2 by default), one signed-gradient
    step of alpha (eps by default) from the noisy point, and *no* projection back to the eps-ball: the training
    perturbation may reach (k + 1) eps. Only ``x + delta`` is kept in [0,1]. Per the paper, the larger noise and
    the missing clip are what avoid catastrophic overfitting at large eps without extra passes (two per minibatch,
    as FGSM-RS)."""


    @property
    def passes_per_batch(self) -> int:
        return 2 + self.loss_passes

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "noise_factor": self.cfg.noise_factor, "projection": False,
                "bn_mode": self.cfg.bn_mode, **self.describe_loss()}

    def perturbation(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training perturbation: noise (in the image box), one gradient step, back into the image box only."""
        norm = self.threat.norm
        loss_fn, target = self.attack_objective(ctx, x, y)
        eps, alpha = self.budget(ctx)
        noise = attacks.random_init(x, self.cfg.noise_factor * eps, norm)
        grad, _ = attacks.input_gradient(ctx.attack_model, x, noise, target, loss_fn)
        return attacks.clamp_to_image(x, attacks.gradient_step(noise, grad, alpha, norm)).detach()

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        with batchnorm_mode(ctx.attack_model, self.cfg.bn_mode), ctx.autocast():
            delta = self.perturbation(ctx, x, y)
        return self._train_on(ctx, x + delta, y, x_clean=x)
