"""Local SGD (Stich 2019; Lin et al. 2020, "Don't use large mini-batches, use local SGD"): ``train.local_sgd_steps: K``
trains each process on its own for K optimizer steps, then averages the models, instead of all-reducing gradients
every step. Built on Accelerate's ``LocalSGD`` (which keeps DDP in ``no_sync`` for the whole context and counts the
steps); this module only changes what one synchronisation does: one coalesced all-reduce of the parameters *and*
the optimizer's state (SGD momentum, Adam moments), instead of Accelerate's barrier plus one all-reduce per
parameter; in place, in chunks of at most ``CHUNK_ELEMENTS`` (one all-reduce for a small model). Averaging the
optimizer state too (rather than keeping it per process) makes every process identical at each synchronisation
point, which is where robustify takes its checkpoints, so a resume is exact with the one copy of the optimizer state
that Accelerate saves.

One context per epoch: its exit synchronises, so every epoch ends (and is probed, selected and checkpointed) at a
synchronisation point. Signals are acted on only at synchronisation points. This module must not take optimizer
steps or change the learning rate.

The option (:class:`LocalSgdOption`) owns the key's check and the pairings it refuses, the epoch's context (its
``begin_epoch`` / ``finish_epoch`` hooks), where a checkpoint or a stop is exact (its ``after_batch`` hook), its cost
field and the model card's clause on it (``config_cost``, ``cost_text``).

Must not: checkpoint between model averages.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.local_sgd import LocalSGD

from ...config import spelled
from ...errors import ConfigError
from .base import Option


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's floating-point state tensors in a fixed order (param groups, then sorted keys); step counters
    are skipped (they are equal on every process)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    out = []
    for group in inner.param_groups:
        for p in group["params"]:
            state = inner.state.get(p, {})
            for key in sorted(state):
                v = state[key]
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() > 1 and key != "step":
                    out.append(v)
    return out


CHUNK_ELEMENTS = 2**25  # 128 MB of fp32 per all-reduce: bounded transient memory, few collectives


def _chunks(tensors: list[torch.Tensor], limit: int) -> list[list[torch.Tensor]]:
    """``tensors`` in order, grouped so each group holds at most ``limit`` elements (a larger tensor alone)."""
    groups: list[list[torch.Tensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.numel() > limit:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.numel()
    return [g for g in groups if g]


class AveragingLocalSGD(LocalSGD):
    """Accelerate's LocalSGD whose synchronisation averages parameters and optimizer state in one all-reduce."""

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 local_sgd_steps: int) -> None:
        super().__init__(accelerator=accelerator, model=model, local_sgd_steps=local_sgd_steps, enabled=True)
        self.optimizer = optimizer
        self.syncs = 0  # synchronisations in this context (one collective each)

    def _sync_and_avg_model_params(self) -> None:
        if not self.enabled:
            return
        tensors = [p.data for p in self.model.parameters()] + _optimizer_tensors(self.optimizer)
        world = self.accelerator.num_processes
        for chunk in _chunks(tensors, CHUNK_ELEMENTS):
            # one fp32 buffer per chunk, summed in place (Accelerate's ``reduce`` clones its input: a whole flat
            # copy of weights and optimizer state was two transient copies, ~7 GB for ViT-L with AdamW)
            flat = torch.cat([t.reshape(-1).to(torch.float32) for t in chunk])
            torch.distributed.all_reduce(flat, torch.distributed.ReduceOp.SUM)
            flat /= world  # the mean, as Accelerate's reduce computes it (sum, then divide)
            offset = 0
            for t in chunk:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n
            del flat
        self.syncs += 1

    def advance(self, optimizer_steps: int) -> None:
        """Count the optimizer steps a minibatch took (free AT takes several), synchronising every K."""
        for _ in range(optimizer_steps):
            self.step()

    def at_sync(self) -> bool:
        """True right after a synchronisation (or before the first step): every process holds the same state."""
        return self.num_steps % self.local_sgd_steps == 0


def for_epoch(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              steps: int | None) -> AveragingLocalSGD | None:
    """The epoch's local SGD context, or None (option off, or a single process: nothing to average)."""
    if not steps or accelerator.num_processes == 1:
        return None
    return AveragingLocalSGD(accelerator, model, optimizer, steps)


class LocalSgdOption(Option):
    """``train.local_sgd_steps: K``: DDP in no_sync for each epoch, the models averaged every K optimizer steps."""

    name = "local_sgd"
    keys = {"train.local_sgd_steps": "K"}
    title = "local SGD: the models averaged every K optimizer steps"
    local: AveragingLocalSGD | None = None  # the epoch's context (None: a single process, nothing to average)

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return bool(cfg.train.local_sgd_steps)

    @classmethod
    def check(cls, cfg: Any) -> None:
        """train.local_sgd_steps: K >= 1, and the combinations it refuses (each in one line)."""
        k = cfg.train.local_sgd_steps
        if k is None:
            return
        if k < 1:
            raise ConfigError(f"train.local_sgd_steps={k} is not accepted; use a whole number >= 1 (optimizer steps "
                              "between model averages), or null to switch local SGD off")
        clash = {"train.grad_accum": (cfg.train.grad_accum, 1),
                 "train.grad_compression": (cfg.train.grad_compression, "none"),
                 "train.checkpoint_every": (cfg.train.checkpoint_every, None),
                 "train.ema": (cfg.train.ema, False)}  # a per-process weight average would drift between averages
        for key, (value, off) in clash.items():
            if value != off:
                raise ConfigError(f"train.local_sgd_steps={k} with {key}={spelled(value)} is not accepted: local SGD "
                                  "sends no gradients and checkpoints only where the models are averaged; set "
                                  f"{key}={spelled(off)}")

    @classmethod
    def config_cost(cls, cfg: Any) -> dict[str, Any]:
        return {"local_sgd_steps": cfg.train.local_sgd_steps}  # null when off, as every run records it

    @classmethod
    def cost_text(cls, cost: Any) -> str:
        k = cost.get("local_sgd_steps")
        return f"; local SGD: models averaged every {k} optimizer steps" if k else ""

    def begin_epoch(self, run: Any, epoch: int) -> None:
        self.local = for_epoch(run.accelerator, run.model, run.optimizer, self.cfg.train.local_sgd_steps)
        if self.local is not None:
            self.local.__enter__()  # left in finish_epoch; an Interrupted stop happens where the models were averaged

    def after_batch(self, run: Any, optimizer_steps: int, exact: bool) -> bool:
        if self.local is None:
            return exact
        # exact only where the models were just averaged; agree at each of those
        self.local.advance(optimizer_steps)
        return self.local.at_sync() and optimizer_steps != 0

    def finish_epoch(self, run: Any) -> None:
        if self.local is not None:
            self.local.__exit__(None, None, None)  # the epoch's last average: it ends at a synchronisation point
            self.local = None
