"""DEAT with the M+ criterion (Dynamic Efficient Adversarial Training): replays that grow as training needs them.

Each minibatch starts from a uniform random perturbation in the eps-ball and is replayed ``strength`` times; every
replay is one forward/backward that gives the weight gradient (an optimizer step, as in Free AT) and the input
gradient (an ascent step of alpha on the perturbation). The strength starts at one replay. The M+ criterion of the
reference code (TrustAI/DEAT), read there and re-implemented here: G is the sum over an epoch of |input gradient|
of each minibatch's last replay; after the first epoch the strength goes to 2; after the second, the threshold is
set to gamma * G; after every later epoch whose G exceeds the threshold, one replay is added (up to
``method.max_strength``) and the threshold becomes gamma * G. The magnitude of the input gradient tracks the
curvature of the loss surface, which grows as the model becomes robust and a stronger attack is needed.

The strength used in each epoch is returned by :meth:`on_epoch_end` into that epoch's history entry, and the
criterion's state travels in :meth:`state_dict` so a resumed run continues where it stopped.
The trainer positions the learning-rate schedule by minibatches done (as the reference code steps it once per
minibatch), so added replays do not make the schedule run ahead of the epochs. Known limit: under fp16 loss scaling
the magnitude G includes the loss scale, so prefer bf16 or fp32 with this method.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

import torch

from ... import attacks
from ...config import MethodConfig, ThreatConfig
from ...evaluate.collectives import summed
from .base import Method, StepContext, StepResult, register_method, replay


@register_method("deat")
class DEAT(Method):
    """Free-style replays on a fresh random start, their number raised by the M+ gradient-magnitude criterion."""

    def __init__(self, cfg: MethodConfig, threat: ThreatConfig):
        super().__init__(cfg, threat)
        self.strength = 1  # replays per minibatch in the current epoch
        self.threshold: float | None = None  # gamma * G of the epoch that last set it
        self.epochs_seen = 0
        self.grad_mag: torch.Tensor | None = None  # this epoch's G so far, kept on the device (no host sync)

    def alpha_for(self, eps: float) -> float:
        return 1.25 * eps

    dynamic_steps = True

    @property
    def optimizer_steps_per_batch(self) -> int:
        # the optimizer steps a minibatch starts with (the real count is ``strength``); the trainer positions the
        # schedule by minibatches for this method (dynamic_steps), so this only sizes the bench's plan
        return 1

    @property
    def passes_per_batch(self) -> int:
        return self.strength

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "max_strength": self.cfg.max_strength,
                "gamma": self.cfg.gamma, "criterion": "M+"}

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        (eps, alpha), norm = self.budget(ctx), self.threat.norm
        _, grad, result = replay(ctx, x, y, attacks.random_init(x, eps, norm), self.strength, alpha, eps, norm)
        magnitude = grad.abs().sum()
        self.grad_mag = magnitude if self.grad_mag is None else self.grad_mag + magnitude
        return result

    def epoch_magnitude(self) -> float:
        """G for the epoch that just ended, summed over all processes so every process makes the same decision."""
        g = self.grad_mag if self.grad_mag is not None else torch.zeros((), dtype=torch.float64)
        return float(summed(g.double()))  # a host tensor (no step yet, or restored) is reduced through the GPU

    def on_epoch_end(self, epoch: int) -> dict:
        used, g = self.strength, self.epoch_magnitude()
        self.grad_mag = None
        self.epochs_seen += 1
        cap = self.cfg.max_strength
        if self.epochs_seen == 1:
            self.strength = min(self.strength + 1, cap)
        elif self.epochs_seen == 2:
            self.threshold = self.cfg.gamma * g
        elif self.threshold is not None and g > self.threshold and self.strength < cap:
            self.threshold = self.cfg.gamma * g
            self.strength += 1
        return {"strength": used, "grad_magnitude": g}

    def state_dict(self) -> dict:
        return {"strength": self.strength, "threshold": self.threshold, "epochs_seen": self.epochs_seen,
                "grad_mag": None if self.grad_mag is None else float(self.grad_mag)}

    def load_state_dict(self, state: dict) -> None:
        self.strength = int(state.get("strength", 1))
        self.threshold = state.get("threshold")
        self.epochs_seen = int(state.get("epochs_seen", 0))
        g = state.get("grad_mag")
        self.grad_mag = None if g is None else torch.tensor(g)
