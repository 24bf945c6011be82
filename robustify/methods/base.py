"""The method registry and what every training-step strategy shares.

A method turns one minibatch into one or more optimizer steps. It gets a :class:`StepContext` from the trainer,
whose ``optimize(loss)`` does the backward pass, gradient clipping, learning-rate update and optimizer step
(through Accelerate), so a method only decides *which inputs* the model is trained on and how often.
Each method also says what one minibatch costs in forward/backward passes, which ``metrics.json`` reports.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MethodConfig, ThreatConfig

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


_NORMS: weakref.WeakKeyDictionary[torch.nn.Module, list[torch.nn.Module]] = weakref.WeakKeyDictionary()


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's BatchNorm layers, found once per model (a module walk per minibatch is wasted time)."""
    norms = _NORMS.get(model)
    if norms is None:
        norms = _NORMS[model] = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return norms


@contextlib.contextmanager
def batchnorm_mode(model: torch.nn.Module, mode: str) -> Iterator[None]:
    """Run the attack with BatchNorm layers in ``mode`` ('train' as in Fast AT, 'eval' as in Madry et al.)."""
    if mode == "train" or not model.training:
        yield
        return
    norms = _batchnorms(model)
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


def build_method(cfg: MethodConfig, threat: ThreatConfig) -> Method:
    return METHODS[cfg.name](cfg, threat)
