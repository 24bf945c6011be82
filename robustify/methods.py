"""Training-step strategies (a registry): ``natural``, ``fgsm-rs``, ``free`` and ``pgd``.

A method turns one minibatch into one or more optimizer steps. It gets a :class:`StepContext` from the trainer,
whose ``optimize(loss)`` does the backward pass, gradient clipping, learning-rate update and optimizer step
(through Accelerate), so a method only decides *which inputs* the model is trained on and how often.
Each method also says what one minibatch costs in forward/backward passes, which ``metrics.json`` reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import attacks
from .config import MethodConfig, ThreatConfig

METHODS: dict[str, type[Method]] = {}


def register_method(name: str):
    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


@dataclass
class StepContext:
    model: torch.nn.Module  # the prepared (possibly DDP-wrapped) model: train forwards go through it
    attack_model: torch.nn.Module  # the unwrapped module: attack forwards, which have no weight backward, use it
    optimize: Callable[[torch.Tensor], None]  # backward + clip + lr + optimizer step + zero_grad
    autocast: Callable[[], contextlib.AbstractContextManager]


@dataclass
class StepResult:
    loss: torch.Tensor  # detached, mean over the minibatch (of the last replay for free)
    logits: torch.Tensor  # detached logits on the inputs the model was trained on


@contextlib.contextmanager
def batchnorm_mode(model: torch.nn.Module, mode: str) -> Iterator[None]:
    """Run the attack with BatchNorm layers in ``mode`` ('train' as in Fast AT, 'eval' as in Madry et al.)."""
    if mode == "train" or not model.training:
        yield
        return
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()


class Method:
    """Base class: subclasses implement :meth:`step`."""

    name = "base"

    def __init__(self, cfg: MethodConfig, threat: ThreatConfig):
        self.cfg = cfg
        self.threat = threat

    @property
    def optimizer_steps_per_batch(self) -> int:
        return 1

    @property
    def passes_per_batch(self) -> int:
        """Forward+backward passes per minibatch (the cost unit reported in metrics.json)."""
        return 1

    def epochs(self, requested: int) -> int:
        """How many passes over the data to make for ``requested`` epochs (free AT divides them by m)."""
        return requested

    def describe(self) -> dict:
        return {"name": self.name}

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        raise NotImplementedError

    def _train_on(self, ctx: StepContext, x_train: torch.Tensor, y: torch.Tensor) -> StepResult:
        with ctx.autocast():
            logits = ctx.model(x_train)
            loss = F.cross_entropy(logits.float(), y)
        ctx.optimize(loss)
        return StepResult(loss.detach(), logits.detach())


@register_method("natural")
class Natural(Method):
    """Plain training on clean inputs: the baseline and the cost unit."""

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        return self._train_on(ctx, x, y)


@register_method("fgsm-rs")
class FGSMRandomStart(Method):
    """Fast AT (Wong et al. 2020): a uniform random start in the eps-ball, one FGSM step of alpha = 1.25 eps."""

    @property
    def alpha(self) -> float:
        return self.cfg.alpha if self.cfg.alpha is not None else 1.25 * self.threat.eps

    @property
    def passes_per_batch(self) -> int:
        return 2

    def describe(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "random_start": True, "bn_mode": self.cfg.bn_mode}

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        with batchnorm_mode(ctx.attack_model, self.cfg.bn_mode), ctx.autocast():
            delta = attacks.fgsm(ctx.attack_model, x, y, self.threat.eps, self.alpha, self.threat.norm)
        return self._train_on(ctx, x + delta, y)


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
    def alpha(self) -> float:
        return self.cfg.alpha if self.cfg.alpha is not None else self.threat.eps

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
        eps, norm = self.threat.eps, self.threat.norm
        delta = attacks.clamp_to_image(x, self._carried_delta(x))
        for _ in range(self.cfg.replays):
            delta = delta.detach().requires_grad_(True)
            with ctx.autocast():
                logits = ctx.model(x + delta)
                loss = F.cross_entropy(logits.float(), y)
            ctx.optimize(loss)  # one backward: weight grads (stepped) and delta.grad
            grad = delta.grad.detach()
            with torch.no_grad():
                delta = attacks.ascent_step(x, delta, grad, self.alpha, eps, norm)
        self.delta = delta.detach()
        return StepResult(loss.detach(), logits.detach())

    def state_dict(self) -> dict:
        return {"delta": self.delta}

    def load_state_dict(self, state: dict) -> None:
        self.delta = state.get("delta")


def build_method(cfg: MethodConfig, threat: ThreatConfig) -> Method:
    return METHODS[cfg.name](cfg, threat)
