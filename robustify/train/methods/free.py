"""Free AT (Shafahi et al. 2019): minibatch replay with a carried perturbation.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

import torch

from ... import attacks
from ...config import MethodConfig, ThreatConfig
from .base import Method, StepContext, StepResult, register_method, replay


@register_method("free")
class Free(Method):
    """Free AT (Shafahi et al. 2019): replay each minibatch m times; one backward pass per replay yields both the
    weight gradient (an optimizer step) and the input gradient (an ascent step on delta). delta persists across
    minibatches, and the number of epochs is divided by m so the total cost matches natural training.
    """

    def __init__(self, cfg: MethodConfig, threat: ThreatConfig):
        super().__init__(cfg, threat)
        self.delta: torch.Tensor | None = None


    @property
    def optimizer_steps_per_batch(self) -> int:
        return self.cfg.replays

    @property
    def passes_per_batch(self) -> int:
        return self.cfg.replays

    def epochs(self, requested: int) -> int:
        return max(1, -(-requested // self.cfg.replays))  # ceil(requested / m)

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "replays": self.cfg.replays}

    def _carried_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The perturbation carried over from the previous minibatch (zeros at first, resized for a short batch)."""
        if self.delta is None or self.delta.shape[1:] != x.shape[1:]:
            self.delta = torch.zeros_like(x)
        if self.delta.shape[0] < x.shape[0]:
            pad = torch.zeros_like(x[: x.shape[0] - self.delta.shape[0]])
            self.delta = torch.cat([self.delta, pad])
        return self.delta[: x.shape[0]]

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        (eps, alpha), norm = self.budget(ctx), self.threat.norm
        delta = attacks.clamp_to_image(x, self._carried_delta(x))
        self.delta, _, result = replay(ctx, x, y, delta, self.cfg.replays, alpha, eps, norm)
        return result

    def state_dict(self) -> dict:
        return {"delta": self.delta}

    def load_state_dict(self, state: dict) -> None:
        self.delta = state.get("delta")
