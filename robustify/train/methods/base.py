"""The method registry and what every training-step strategy shares.

A method turns one minibatch into one or more optimizer steps. It gets a :class:`StepContext` from the trainer,
whose ``optimize(loss)`` does the backward pass, gradient clipping, learning-rate update and optimizer step
(through Accelerate), so a method only decides *which inputs* the model is trained on and how often.
Each method also says what one minibatch costs in forward/backward passes, which ``metrics.json`` reports.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ... import attacks, sections
from ...config import FinetuneConfig, MethodConfig, ThreatConfig
from ...errors import ConfigError
from . import trades as trades_mod

METHODS: dict[str, type[Method]] = {}
# methods sound under the L1 threat model: multi-step PGD and APGD (sparse L1 steps, exact projection; Croce & Hein
# 2021)
L1_METHODS = ("natural", "pgd", "apgd")


def register_method(name: str):
    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def validate_section(cfg: FinetuneConfig) -> None:
    """The ``method`` section's checks that belong to the registry: a registered name, and each method's own keys
    and combinations (called by :func:`robustify.config.validate`)."""
    if cfg.method.name not in METHODS:
        raise ConfigError(f"method.name={cfg.method.name!r} is not accepted; choose one of: {', '.join(METHODS)}")
    for key, value in {"method.max_strength": cfg.method.max_strength, "method.gamma": cfg.method.gamma,
                       "method.beta": cfg.method.beta}.items():
        if value <= 0:
            raise ConfigError(f"{key}={value:g} is not accepted; use a value > 0")
    if cfg.method.noise_factor < 0:
        raise ConfigError(f"method.noise_factor={cfg.method.noise_factor:g} is negative; use 2 (N-FGSM) or 0 (no "
                          "noise: plain FGSM from the clean input)")
    if cfg.method.loss == "trades" and cfg.method.name not in ("fgsm-rs", "n-fgsm", "pgd"):
        raise ConfigError(f"method.loss='trades' with method.name={cfg.method.name!r}; TRADES needs an attack-based "
                          "method: fgsm-rs, n-fgsm or pgd")
    if cfg.threat.norm == "L1" and cfg.method.name not in L1_METHODS:
        raise ConfigError(f"method.name={cfg.method.name!r} with threat.norm='L1' is not accepted: single-step L1 "
                          "training overfits catastrophically (Jiang et al. 2023) and no sound single-step variant is "
                          f"implemented; use one of: {', '.join(L1_METHODS)}")
    if cfg.method.name == "free" and cfg.train.grad_accum > 1:
        raise ConfigError(f"train.grad_accum={cfg.train.grad_accum} with method.name='free' is not accepted: free AT "
                          "takes one optimizer step per replay by definition; use train.grad_accum=1")


sections.register("method", validate_section)  # config.validate runs it (robustify/sections.py)
# the method keys that only mean something against an adversary, with their off value (a natural stage runs without
# them when they are set for the whole run: robustify.config.expand_stages)
sections.declare("adversarial_only", {"method.loss": "ce"})


@dataclass
class StepContext:
    model: torch.nn.Module  # the prepared (possibly DDP-wrapped) model: train forwards go through it
    attack_model: torch.nn.Module  # the unwrapped module: attack forwards, which have no weight backward, use it
    optimize: Callable[[torch.Tensor], None]  # backward + clip + lr + optimizer step + zero_grad
    autocast: Callable[[], contextlib.AbstractContextManager]
    # an option's weight perturbation before the training forward (train/options/), given the method's
    # training objective as a function of the model; None: the weights are trained as they are
    perturb_weights: Callable[[Callable[[torch.nn.Module], torch.Tensor]], None] | None = None
    # the share of threat.eps this step trains at (an option's: eps warm-up ramps it from 0 to 1); a method reads its
    # step's radius and step size through :meth:`Method.budget`, so no option ever changes a method's attributes
    eps_share: float = 1.0
    # the training loss, (fp32 logits, targets) -> batch mean, as every method computes it (the cross-entropy of the
    # training inputs, TRADES' clean term, free/DEAT's replays); an option swaps it (train/options/: timm's label
    # smoothing, or Mixup's soft-target CE with soft targets). The attacks keep their own objective.
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    # an option's replacement for the PGD attack of the methods that run one (pgd), with :func:`attacks.pgd`'s
    # leading arguments, (attack model, x, y, eps, alpha, steps, norm) -> delta (e.g. an attack that stops some
    # examples early and keeps statistics of its own); None: the method's own, attacks.pgd
    pgd_attack: Callable[..., torch.Tensor] | None = None


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
    # True when the optimizer steps per minibatch change during the run (deat): the trainer then positions the
    # learning-rate schedule by minibatches done instead of by optimizer steps against a fixed plan
    dynamic_steps = False
    # whether the step accepts soft targets (an (N, classes) float tensor from mixup/CutMix, train/options/mixup.py)
    # wherever it uses ``y``: its training loss goes through ``ctx.loss`` and its attack only feeds ``y`` to a
    # cross-entropy (torch's takes probability targets). A method that reads ``y`` as class indices (success
    # checks, margins) sets False, and mixup is refused with it before anything loads.
    soft_targets = True

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

    def alpha_for(self, eps: float) -> float:
        """The method's own step size at radius ``eps``, used when ``method.alpha`` is not set (1.25 eps, eps,
        2.5 eps / steps, ...)."""
        return eps

    @property
    def alpha(self) -> float:
        """The step size at the threat's full eps: ``method.alpha``, else the method's rule (:meth:`alpha_for`)."""
        return self.cfg.alpha if self.cfg.alpha is not None else self.alpha_for(self.threat.eps)

    def budget(self, ctx: StepContext) -> tuple[float, float]:
        """This step's (eps, alpha): the threat's eps and the step size, both scaled by ``ctx.eps_share`` (eps
        warm-up): a rule-derived alpha follows the scaled eps, an explicit ``method.alpha`` scales with it."""
        share = ctx.eps_share
        if share >= 1.0:
            return self.threat.eps, self.alpha
        eps = self.threat.eps * share
        return eps, self.cfg.alpha * share if self.cfg.alpha is not None else self.alpha_for(eps)

    def describe(self) -> dict:
        return {"name": self.name}

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        raise NotImplementedError

    def on_epoch_end(self, epoch: int) -> dict:
        """Called by the trainer on every process after each epoch; returns extra fields for that epoch's history
        entry (DEAT: the attack strength it used). Methods that adapt between epochs decide here."""
        return {}

    def _train_on(self, ctx: StepContext, x_train: torch.Tensor, y: torch.Tensor,
                  x_clean: torch.Tensor | None = None) -> StepResult:
        if self.trades and x_clean is not None:
            return self._train_on_trades(ctx, x_train, y, x_clean)
        with ctx.autocast():
            if ctx.perturb_weights is not None:  # the weights at w + v for this forward; the stepper restores them
                ctx.perturb_weights(lambda m: ctx.loss(m(x_train).float(), y))
            logits = ctx.model(x_train)
            loss = ctx.loss(logits.float(), y)
        ctx.optimize(loss)
        return StepResult(loss.detach(), logits.detach())

    # --- method.loss: the TRADES objective for the attack-based methods (see trades.py) -------------------------
    @property
    def trades(self) -> bool:
        return self.cfg.loss == "trades"

    @property
    def loss_passes(self) -> int:
        """Extra forward+backward passes per minibatch that the training objective adds to the attack's."""
        return trades_mod.EXTRA_PASSES if self.trades else 0

    def describe_loss(self) -> dict:
        return {"loss": "trades", "beta": self.cfg.beta} if self.trades else {}

    def attack_objective(self, ctx: StepContext, x: torch.Tensor,
                         y: torch.Tensor) -> tuple[attacks.LossFn, torch.Tensor]:
        """What the attack maximises and against what: CE against the labels, or KL against the clean prediction."""
        if not self.trades:
            return attacks.cross_entropy, y
        return trades_mod.kl_to_clean, trades_mod.clean_probs(ctx.attack_model, x)

    def _train_on_trades(self, ctx: StepContext, x_adv: torch.Tensor, y: torch.Tensor,
                         x_clean: torch.Tensor) -> StepResult:
        # one forward of clean and perturbed inputs together: one backward, and DDP sees a single forward
        with ctx.autocast():
            if ctx.perturb_weights is not None:  # perturbed against the TRADES objective
                ctx.perturb_weights(lambda m: trades_mod.trades_loss(*m(torch.cat([x_clean, x_adv])).chunk(2), y,
                                                                     self.cfg.beta, ctx.loss))
            logits_clean, logits_adv = ctx.model(torch.cat([x_clean, x_adv])).chunk(2)
            loss = trades_mod.trades_loss(logits_clean, logits_adv, y, self.cfg.beta, ctx.loss)
        ctx.optimize(loss)
        return StepResult(loss.detach(), logits_adv.detach())


def replay(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, times: int, alpha: float,
           eps: float, norm: str) -> tuple[torch.Tensor, torch.Tensor, StepResult]:
    """Free AT's replay (shared by ``free`` and ``deat``): ``times`` forward/backward passes on ``x + delta``, each
    giving the weight gradient (an optimizer step) and the input gradient (an ascent step on delta).

    Returns the last perturbation, the last input gradient and the last replay's loss and logits.
    """
    for _ in range(times):
        delta = delta.detach().requires_grad_(True)
        with ctx.autocast():
            logits = ctx.model(x + delta)
            loss = ctx.loss(logits.float(), y)
        ctx.optimize(loss)  # one backward: weight grads (stepped) and delta.grad
        grad = delta.grad.detach()
        with torch.no_grad():
            delta = attacks.ascent_step(x, delta, grad, alpha, eps, norm)
    return delta.detach(), grad, StepResult(loss.detach(), logits.detach())


def build_method(cfg: MethodConfig, threat: ThreatConfig) -> Method:
    return METHODS[cfg.name](cfg, threat)
