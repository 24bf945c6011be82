"""Gradient compression (``train.grad_compression``): the DDP communication hook of a multi-process run.

``fp16`` / ``bf16`` (the all-reduce in half precision) are PyTorch's own hooks, handed to Accelerate
(:func:`ddp_kwargs`), which registers them when it wraps the model in DDP. ``sign`` (robustify's majority-vote hook
with error feedback, sign_hook.py) and ``powersgd`` (PowerSGD with torch's defaults and its memories per parameter,
powersgd_hook.py) are registered on the prepared model before its first backward, and their per-process state
(error memories, PowerSGD's warm-start matrices and counter) is saved with each process's checkpointed state, so a
resumed run goes on exactly as the uninterrupted one.

The option (:class:`GradCompression`) owns the Accelerator's kwargs, the registration and checkpointed state of the
hooks it registers and the cost block's ``comm_bytes_per_step``. Neither hook touches the global random generators
(torch's own ``powerSGD_hook`` reseeds every CUDA generator when it draws its matrices, one reason robustify registers
its own). Nothing happens for a single process.

Must not: change the gradients' value beyond what the chosen hook computes, or step the optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import DDPCommunicationHookType, DistributedDataParallelKwargs, KwargsHandler

from .base import Option

COMM_HOOKS = {"fp16": DDPCommunicationHookType.FP16, "bf16": DDPCommunicationHookType.BF16}


def ddp_kwargs(cfg: Any) -> list[KwargsHandler]:
    """Accelerate kwargs handlers for ``Accelerator(kwargs_handlers=...)``: ``train.grad_compression`` as a PyTorch
    DDP communication hook (fp16 / bf16 compression of the gradient all-reduce), registered by Accelerate when it
    wraps the model in DDP; nothing for a single process, nor for the hooks robustify registers itself (sign,
    PowerSGD: :func:`register_custom_hook`), whose state Accelerate would not hand back for a checkpoint."""
    hook = COMM_HOOKS.get(cfg.train.grad_compression)
    return [DistributedDataParallelKwargs(comm_hook=hook)] if hook is not None else []


def register_custom_hook(model: torch.nn.Module, cfg: Any) -> Any:
    """``train.grad_compression: sign`` or ``powersgd``: the DDP hook robustify registers itself (sign_hook.py,
    powersgd_hook.py) on the prepared model before its first backward; returns its state (what it checkpoints),
    None otherwise or for one process."""
    if cfg.train.grad_compression == "sign":
        from . import sign_hook

        return sign_hook.register(model)
    if cfg.train.grad_compression == "powersgd":
        from . import powersgd_hook

        return powersgd_hook.register(model)
    return None


class GradCompression(Option):
    """``train.grad_compression`` other than ``none``: the registered unit."""

    name = "grad_compression"
    keys = {"train.grad_compression": "fp16|bf16|powersgd|sign"}
    title = "a DDP communication hook"
    state: Any = None  # the sign or PowerSGD hook's state; None for fp16 / bf16 or one process

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return cfg.train.grad_compression != "none"

    @classmethod
    def accelerator_kwargs(cls, cfg: Any) -> list[Any]:
        return ddp_kwargs(cfg)

    def wrap(self, model: torch.nn.Module) -> None:
        self.state = register_custom_hook(model, self.cfg)  # sign, powersgd: per-process checkpointed state

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict() if self.state is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        """Restore the hook's state (a checkpoint of an earlier robustify has no PowerSGD state: the hook then starts
        afresh, as it did then) and hand back the rest, the method's."""
        from .powersgd_hook import PREFIX
        from .sign_hook import ERROR_PREFIX

        if self.state is not None:
            self.state.load_state_dict(state)
        return {k: v for k, v in state.items() if not k.startswith((ERROR_PREFIX, PREFIX))}

    def cost_fields(self, run: Any) -> dict[str, Any]:
        per_step = getattr(self.state, "bytes_per_step", None)  # the sign hook counts what it sends
        return {"comm_bytes_per_step": per_step} if per_step is not None else {}
