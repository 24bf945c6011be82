"""Collectives that every process reaches, in the same order, and a one-line error when one does not.

A distributed evaluation or training step hangs as soon as one process skips a collective the others entered (a
process with no batch of a small subset, a dict of per-stage masks that is empty on one process). The rule here:
every collective is called unconditionally, on every process, with a fixed set of keys, whatever the process's
share of the examples. :func:`stage` is the safety net: a collective that does not complete within the process
group's timeout becomes a one-line :class:`CollectiveTimeout` naming the stage, never a silent wait.

This module owns the stage names, the timeout error and the buffer broadcast (BatchNorm running statistics, which
DDP broadcasts only at the next training forward). It must not decide *what* is evaluated or trained.

Must not: skip a collective on some process (every process reaches every one, in order).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UserError

# ``robustify eval`` under torchrun: how long a process waits in a collective before giving up (the trainer uses
# train.dist_timeout_minutes). Long enough for the slowest process's share of the subset, short of an endless hang.
TIMEOUT_ENV = "ROBUSTIFY_DIST_TIMEOUT_MINUTES"
DEFAULT_EVAL_TIMEOUT_MINUTES = 30.0


class CollectiveTimeout(UserError):
    """A collective that not every process reached in time: a process stopped, crashed or took another path.
    Reported on one line (the CLI's UserError path) with exit status 1: not a mistake in the input."""

    exit_code = 1


def eval_timeout() -> timedelta:
    """The process-group timeout for ``robustify eval`` (``ROBUSTIFY_DIST_TIMEOUT_MINUTES``, default 30)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        minutes = float(raw) if raw else DEFAULT_EVAL_TIMEOUT_MINUTES
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={raw!r} is not accepted; use a number of minutes such as 30") from None
    if minutes <= 0:
        raise UserError(f"{TIMEOUT_ENV}={raw!r} is not accepted; use a number of minutes > 0")
    return timedelta(minutes=minutes)


def distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def end_group() -> None:
    """At the end of a command that ran collectives (``robustify eval``): every process past its last one, then the
    process group destroyed, as PyTorch asks. On exit without it, gloo's worker threads can abort a process
    ("terminate called without an active exception") and torchrun then reports a finished evaluation as failed.
    The command calls it once its work is done; after an error the group is left alone. (Training does the same
    through Accelerate: ``trainer._end``.)"""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _is_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return "timed out" in text or "timeout" in text or type(error).__name__ == "DistStoreError"


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Run the collectives of ``name``; a timeout (or a peer that vanished) becomes one line naming the stage."""
    try:
        yield
    except (RuntimeError, OSError) as e:  # gloo / NCCL raise RuntimeError subclasses (DistBackendError, ...)
        gone = "connection closed by peer" in str(e).lower() or "connection reset" in str(e).lower()
        if not (_is_timeout(e) or gone) or not dist.is_initialized():
            raise
        rank = dist.get_rank()
        why = "did not reach it within the process-group timeout" if not gone else "stopped before reaching it"
        raise CollectiveTimeout(f"process {rank} waited in the collective of stage {name!r}, but another process "
                                f"{why}; the other processes' logs say why (a crash, a kill, or a process that took "
                                "another path)") from None


def summed(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all processes (itself for one process), as a new tensor on ``t``'s device. NCCL reduces
    CUDA tensors only, so a host tensor (a method's running sums before its first step, or restored from a
    checkpoint) travels through the process's GPU."""
    out = t.detach().clone()
    if not distributed():
        return out
    if dist.get_backend() == "nccl" and out.device.type != "cuda":
        moved = out.cuda()
        dist.all_reduce(moved)
        return moved.to(out.device)
    dist.all_reduce(out)
    return out


def broadcast_buffers(module: torch.nn.Module, name: str = "buffer broadcast") -> None:
    """Copy every buffer of ``module`` (BatchNorm running mean/var and batch counts) from process 0 to all processes.

    Every process calls it with the same module structure, so the broadcasts match one to one. Process 0's buffers
    are the ones DDP itself broadcasts at each training forward, so this only makes explicit what the next forward
    would do; the probe, evaluation, best-weights capture and export then see one model on every process.
    """
    if not distributed():
        return
    with stage(name), torch.no_grad():
        for buf in module.buffers():
            if dist.get_backend() == "nccl" and buf.device.type != "cuda":
                moved = buf.cuda()
                dist.broadcast(moved, src=0)
                buf.copy_(moved)
            else:
                dist.broadcast(buf, src=0)
