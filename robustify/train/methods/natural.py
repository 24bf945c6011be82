"""Plain training on clean inputs: the baseline and the cost unit.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

import torch

from .base import Method, StepContext, StepResult, register_method


@register_method("natural")
class Natural(Method):
    """Plain training on clean inputs: the baseline and the cost unit."""

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        return self._train_on(ctx, x, y)
