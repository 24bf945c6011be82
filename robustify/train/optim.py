"""The optimizer and the one optimizer step every method calls (shared by the trainer and ``bench``).

The step is on the hot path (once per minibatch, m times for free AT), so it does only what a plain PyTorch loop
does — ``loss.backward()``, ``optimizer.step()``, ``optimizer.zero_grad(set_to_none=True)`` — plus what the config
asks for (gradient accumulation, clipping) and a learning-rate update when the schedule changes it. Accelerate's
optimizer wrapper re-checks per call for loss scaling, XLA and LOMO optimizers (``is_lomo_available()`` searches
the installed packages on every ``step()``: about half a millisecond); when none of them applies, which
:func:`_plain_optimizer` decides once, the step goes to the wrapped torch optimizer directly.

Must not: decide which inputs a method trains on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..config import FinetuneConfig
from . import options
from .schedules import Schedule, build_schedule


def build_optimizer(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    own = options.build_optimizer(groups, cfg)  # an option's own (pure-bf16: Kahan-summed, train/options/)
    if own is not None:
        return own
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.schedule.lr)
    if o.name in ("lamb", "lars"):
        # layer-wise adaptive rates for large global batches (DAT uses LAMB); timm's implementations, on the same
        # decay / no-decay groups as the others
        from timm.optim import create_optimizer_v2

        extra = {"momentum": o.momentum, "nesterov": o.nesterov} if o.name == "lars" else {}
        return create_optimizer_v2(groups, opt=o.name, lr=cfg.schedule.lr, weight_decay=o.weight_decay, **extra)
    return torch.optim.SGD(groups, lr=cfg.schedule.lr, momentum=o.momentum, nesterov=o.nesterov)


def step_autocast(accelerator: Accelerator) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast context for training steps: Accelerate's when mixed precision is on, else a no-op context."""
    return contextlib.nullcontext if accelerator.mixed_precision == "no" else accelerator.autocast


def _plain_optimizer(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's wrapper when the wrapper would add nothing to step/zero_grad:
    no gradient scaler (fp16), no XLA, not DeepSpeed/Megatron (they own the step), and no gradient accumulation
    (``train.grad_accum`` > 1 keeps the wrapper, whose ``step`` also waits for ``sync_gradients``; the stepper
    below already does, so this only spares a check, never changes what is stepped)."""
    inner = getattr(optimizer, "optimizer", None)
    plain_types = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    if (inner is None or accelerator.scaler is not None or accelerator.distributed_type not in plain_types
            or accelerator.gradient_accumulation_steps != 1):
        return optimizer
    return inner


class OptimizerStepper:
    """What a method calls once per training loss: the backward pass and, when an accumulation group is complete,
    the schedule's learning rate, gradient clipping, the optimizer step and zero_grad. Shared by the trainer and
    ``bench``, so the benchmark times exactly the training step.

    Gradient accumulation is Accelerate's: the trainer runs each minibatch inside ``accelerator.accumulate(model)``,
    which skips DDP's all-reduce on the micro-steps that do not end a group, ``accelerator.backward`` divides the
    loss by ``train.grad_accum``, and ``accelerator.sync_gradients`` says when the group is complete.
    """

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 cfg: FinetuneConfig, total_opt_steps: int, opt_steps: int = 0, lr: float | None = None,
                 schedule: Schedule | None = None) -> None:
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.lr = cfg.schedule.lr if lr is None else lr  # the peak lr, after any global-batch scaling
        self.clip = cfg.optim.grad_clip
        # the lr's shape over the run: the recipe's, or the trainer's with a warm-up for a scaled-up lr
        self.schedule = build_schedule(cfg.schedule) if schedule is None else schedule
        self.total = max(total_opt_steps, 1)  # optimizer steps in the whole run
        self.opt_steps = opt_steps
        self.after_step: Callable[[], None] | None = None  # called after each optimizer step (weight averaging)
        self.after_backward: Callable[[], None] | None = None  # after every backward, before any step (an option's)
        # the schedule's position in [0, 1] when the trainer sets it per minibatch (the share of the stage's
        # minibatches done: methods whose optimizer steps per minibatch vary, deat); None: optimizer steps done /
        # planned, the usual case
        self.progress: float | None = None
        self._step_optimizer = _plain_optimizer(accelerator, optimizer)
        self._lr_set: float | None = None  # the lr last written into the param groups

    def __call__(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)
        if self.after_backward is not None:
            self.after_backward()
        if not self.accelerator.sync_gradients:
            return
        t = self.progress if self.progress is not None else self.opt_steps / self.total
        lr = self.lr * self.schedule(min(t, 1.0))
        if lr != self._lr_set:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._lr_set = lr
        if self.clip:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.clip)
        self._step_optimizer.step()
        self._step_optimizer.zero_grad(set_to_none=True)
        self.opt_steps += 1
        if self.after_step is not None:
            self.after_step()
