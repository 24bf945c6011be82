"""Plain training on clean inputs: the baseline and the cost unit."""

from __future__ import annotations

import torch

from .base import Method, StepContext, StepResult, register_method


@register_method("natural")
class Natural(Method):
    """Plain training on clean inputs: the baseline and the cost unit."""

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        return self._train_on(ctx, x, y)
