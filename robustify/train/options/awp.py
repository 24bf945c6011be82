"""Adversarial weight perturbation (AWP; Wu, Xia, Wang 2020, "Adversarial Weight Perturbation Helps Robust
Generalization"): ``train.awp``, ``train.awp_gamma``, ``train.awp_warmup_epochs``.

Before each optimizer step, on the adversarial minibatch the method has just made, the weights are moved layer by
layer in the direction that increases the training loss (the method's own objective: cross-entropy, or TRADES),
by ``gamma`` times each layer's weight norm: ``v_l = gamma * ||w_l|| * g_l / ||g_l||`` (one normalised ascent step,
as the reference code's proxy does; tensors with one dimension or fewer — biases, norm layers — are not perturbed,
also as there). The training gradient is then taken at ``w + v``, the weights are put back *bit-exactly* (copied
from a saved copy, not ``w + v - v``), and the optimizer steps with that gradient.

Cost: one extra forward+backward per minibatch for the perturbation (two with TRADES: its clean and perturbed
halves), counted in ``passes_per_batch`` and in the dry-run plan; none during the warm-up epochs.

Under several processes each process perturbs from the gradient of its own share of the minibatch (no extra
collective, as data-parallel SAM does); the training gradient is all-reduced as usual and the weights are restored
before the step, so every process steps identical weights. The perturbation's own forward leaves BatchNorm running
statistics untouched (``attacks.frozen_batchnorm_stats``), like the reference code's separate proxy model.

Hand-written because timm, torch and accelerate ship no AWP; it is short, and it only touches the parameters
through ``torch.no_grad`` copies. Not with ``free``/``deat`` (see :data:`REFUSED`).

Must not: leave the weights perturbed after the step (they are restored bit-exactly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...attacks import frozen_batchnorm_stats
from ...errors import ConfigError
from .base import Option

METHODS = ("fgsm-rs", "n-fgsm", "pgd", "apgd")
REFUSED = {
    "free": "free AT steps the weights on every replay of a minibatch, with one backward serving both the weight "
            "and the input gradient, so there is no single weight gradient to take at perturbed weights",
    "deat": "DEAT replays each minibatch as free AT does, stepping the weights on every replay, so there is no single "
            "weight gradient to take at perturbed weights",
    "natural": "AWP perturbs the weights towards a higher adversarial loss, and natural training has no adversary",
}


def validate(cfg: Any) -> None:
    """``train.awp_gamma`` and ``train.awp_warmup_epochs`` in range; ``train.awp`` combines with fgsm-rs, n-fgsm and
    pgd (CE or TRADES); a one-line refusal otherwise."""
    if cfg.train.awp_gamma <= 0:
        raise ConfigError(f"train.awp_gamma={cfg.train.awp_gamma:g} is not accepted; use a value > 0 such as 5e-3 "
                          "(relative to each layer's weight norm)")
    if cfg.train.awp_gamma > 1:
        raise ConfigError(f"train.awp_gamma={cfg.train.awp_gamma:g} would move each layer by more than its own norm; "
                          "use a value in (0, 1] such as 5e-3")
    if cfg.train.awp_warmup_epochs < 0:
        raise ConfigError(f"train.awp_warmup_epochs={cfg.train.awp_warmup_epochs} is not accepted; use 0 or more")
    if cfg.train.awp and cfg.method.name not in METHODS:
        why = REFUSED.get(cfg.method.name, "it is not an attack-then-train method")
        raise ConfigError(f"train.awp=true with method.name={cfg.method.name!r} is not accepted: {why}; use "
                          f"{', '.join(METHODS)} (method.loss ce or trades)")


def extra_passes(cfg: Any) -> int:
    """Forward+backward passes AWP adds to each minibatch while active (TRADES perturbs on clean + adversarial)."""
    if not cfg.train.awp:
        return 0
    return 2 if cfg.method.loss == "trades" else 1


def active_epochs(cfg: Any, epochs: int) -> int:
    """Of a stage's ``epochs``, how many train with AWP (after ``train.awp_warmup_epochs``)."""
    return max(epochs - cfg.train.awp_warmup_epochs, 0) if cfg.train.awp else 0


class AWP:
    """The weight perturbation of one model: :meth:`perturb` before the training forward, :meth:`restore` right after
    the training backward (the trainer's optimizer stepper calls it), before the optimizer step."""

    def __init__(self, model: torch.nn.Module, gamma: float, warmup_epochs: int, passes: int) -> None:
        self.model = model  # the unwrapped module: the perturbation's forward must not run DDP's gradient hooks
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs
        self.passes = passes  # extra forward+backward passes per minibatch when active
        self.active = False  # set per epoch by the trainer (after the warm-up epochs)
        self._saved: list[torch.Tensor] | None = None
        self._params: list[torch.nn.Parameter] | None = None

    def params(self) -> list[torch.nn.Parameter]:
        """The perturbed tensors: trainable weights with more than one dimension (found once per stage)."""
        if self._params is None:
            self._params = [p for p in self.model.parameters() if p.requires_grad and p.ndim > 1]
        return self._params

    def set_epoch(self, epoch: int) -> None:
        self.active = epoch > self.warmup_epochs

    @property
    def passes_now(self) -> int:
        return self.passes if self.active else 0

    def perturb(self, loss_fn: Callable[[torch.nn.Module], torch.Tensor]) -> None:
        """Move each perturbed tensor by ``gamma * ||w|| * g / ||g||``, ``g`` the gradient of ``loss_fn(model)`` (the
        method's training objective on the adversarial minibatch). No host sync: all on the device."""
        if not self.active:
            return
        if self._saved is not None:
            raise RuntimeError("AWP perturbation applied twice without a restore in between")
        params = self.params()
        with torch.enable_grad(), frozen_batchnorm_stats(self.model):
            loss = loss_fn(self.model)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            self._saved = [p.detach().clone() for p in params]
            live = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
            if not live:
                return
            ps, gs = [p for p, _ in live], [g.to(p.dtype) for p, g in live]
            w_norms = torch._foreach_norm(ps)
            g_norms = torch._foreach_norm(gs)
            for p, g, w_norm, g_norm in zip(ps, gs, w_norms, g_norms, strict=True):  # 0-d scales: no host sync
                p.add_(g * (self.gamma * w_norm / (g_norm + 1e-12)))

    def restore(self) -> None:
        """Put the weights back bit-exactly (from the saved copy), after the gradient at ``w + v`` was taken."""
        if self._saved is None:
            return
        with torch.no_grad():
            torch._foreach_copy_(self.params(), self._saved)
        self._saved = None


def build(cfg: Any, model: torch.nn.Module) -> AWP | None:
    """The stage's AWP (``train.awp``), or None."""
    if not cfg.train.awp:
        return None
    return AWP(model, cfg.train.awp_gamma, cfg.train.awp_warmup_epochs, extra_passes(cfg))


class AwpOption(Option):
    """``train.awp``: the registered unit (checks, plan, hooks, history, record and card of AWP)."""

    name = "awp"
    keys = {"train.awp": "true", "train.awp_gamma": "5e-3", "train.awp_warmup_epochs": "N"}
    title = "adversarial weight perturbation"
    adversarial_only = {"train.awp": False}  # a natural stage (LP-FT's linear probe) trains without it

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return bool(cfg.train.awp)

    @classmethod
    def check(cls, cfg: Any) -> None:
        validate(cfg)

    @classmethod
    def extra_passes(cls, cfg: Any, data_passes: int) -> tuple[int, int]:
        return extra_passes(cfg), active_epochs(cfg, data_passes)

    @classmethod
    def plan_notes(cls, stage: str, cfg: Any, data_passes: int) -> list[str]:
        return [f"stage {stage}: AWP (gamma {cfg.train.awp_gamma:g}) adds {extra_passes(cfg)} pass(es) per minibatch "
                f"in {active_epochs(cfg, data_passes)} of {data_passes} epochs (after {cfg.train.awp_warmup_epochs} "
                "warm-up), included above"]

    @classmethod
    def record(cls, cfg: Any) -> dict[str, Any]:
        return {"awp": {"gamma": cfg.train.awp_gamma, "warmup_epochs": cfg.train.awp_warmup_epochs}} \
            if cfg.train.awp else {}

    @classmethod
    def card_lines(cls, record: Any) -> list[str]:
        awp = (record.training.options or {}).get("awp")
        if awp is None:
            return []
        return [f"- Adversarial weight perturbation (AWP, Wu et al. 2020): gamma {awp.get('gamma'):g} of each layer's "
                f"weight norm, after {awp.get('warmup_epochs', 0)} warm-up epoch(s); its extra forward/backward pass "
                "is in the cost below."]

    def attach(self, ctx: Any, stepper: Any, model: torch.nn.Module) -> None:
        self.awp = build(self.cfg, model)
        ctx.perturb_weights = self.awp.perturb  # the method perturbs before its training forward
        stepper.after_backward = self.awp.restore  # the weights back before the optimizer steps

    def steady_state(self) -> None:
        self.awp.active = True

    def begin_epoch(self, run: Any, epoch: int) -> None:
        self.awp.set_epoch(epoch)  # off during train.awp_warmup_epochs

    def passes_now(self) -> int:
        return self.awp.passes_now

    def passes_per_batch(self) -> int:
        return self.awp.passes

    def history_fields(self, run: Any, epoch: int) -> dict[str, Any]:
        return {"awp": self.awp.active}
