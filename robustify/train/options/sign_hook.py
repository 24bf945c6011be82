"""Sign-compressed gradient all-reduce: ``train.grad_compression: sign`` as a PyTorch DDP communication hook.

signSGD with majority vote (Bernstein et al. 2018, 2019) with error feedback (Karimireddy et al. 2019): each process
adds its error memory to the bucket's gradient, p = g + e, and sends only sign(p) as one int8 per element; the sum of
the signs over the processes is one int8 all-reduce (world sizes up to 127), its sign is the majority vote. One
fp32 scale per parameter tensor travels with it: the mean over processes of ||p||_1 / d for that tensor, so the
update keeps each layer's gradient size (Karimireddy's scaled sign). Every process applies scale * vote, identical
everywhere, so the weights stay in sync; each keeps e = p - its own scale * sign(p), the part its compressed message
left out, and adds it next step.

Bytes per step all-reduced per process: 1 per gradient element + 4 per parameter tensor, against 4 per element for
the fp32 all-reduce and 2 for fp16/bf16 (docs/seed-methods.md compares PowerSGD). Written here because PyTorch
ships fp16, bf16 and PowerSGD hooks but no sign or error-feedback hook. The error memory is per process and per
parameter (named, so it survives DDP's bucket rebuild after the first step) and is saved in every checkpoint for an
exact resume (:func:`SignState.state_dict`). This module must not step the optimizer or change anything but the
bucket's gradient.

Must not: drop the error-feedback memory across a resume.
"""

# no `from __future__ import annotations`: DDP checks the hook's annotations as objects (dist.GradBucket)

from typing import Any

import torch
import torch.distributed as dist

ERROR_PREFIX = "comm_error."  # keys of the error memory in a process's checkpointed method state


class SignState:
    """The hook's state: the error memory per parameter, and the payload bytes it all-reduced (counters)."""

    @property
    def bytes_per_step(self) -> float:
        return self.bytes_sent / max(self.backwards, 1)

    def __init__(self, model: torch.nn.Module, process_group: Any = None) -> None:
        module = getattr(model, "module", model)
        self.names = {id(p): name for name, p in module.named_parameters()}
        self.errors: dict[str, torch.Tensor] = {}
        self.process_group = process_group
        self.bytes_sent = 0  # payload bytes handed to all-reduce by this process since the start
        self.calls = 0  # all-reduce calls (two per bucket: signs and scale)
        self.backwards = 0  # backward passes whose gradients went through the hook (bucket 0 starts each)
        self.repeats: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}  # per bucket layout (_repeats)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {ERROR_PREFIX + k: v.detach().clone() for k, v in self.errors.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.errors = {k[len(ERROR_PREFIX):]: v.detach().clone() for k, v in state.items()
                       if k.startswith(ERROR_PREFIX) and isinstance(v, torch.Tensor)}


def _flat_error(state: SignState, params: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    parts = []
    for p in params:
        e = state.errors.get(state.names.get(id(p), ""))
        parts.append(e.to(like.device, like.dtype).flatten() if e is not None and e.numel() == p.numel()
                     else torch.zeros(p.numel(), dtype=like.dtype, device=like.device))
    return torch.cat(parts) if parts else torch.zeros_like(like)


def _repeats(state: SignState, sizes: list[int], device: torch.device) -> torch.Tensor:
    """The bucket's element counts per parameter tensor as a device tensor, built once per bucket layout (DDP
    rebuilds its buckets once, after the first step): ``torch.tensor(sizes, device=cuda)`` copies from pageable
    host memory, which blocks the host, so doing it per bucket and backward would stall the overlap of
    communication with the backward pass."""
    key = (str(device), tuple(sizes))
    t = state.repeats.get(key)
    if t is None:
        t = state.repeats[key] = torch.tensor(sizes, dtype=torch.long).to(device)
    return t


def sign_majority_vote_hook(state: SignState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Replace the bucket's fp32 all-reduce by a majority vote over error-corrected signs (module docstring).

    No host synchronisation per bucket: the per-tensor counts come from :func:`_repeats` (cached on the device) and
    every ``repeat_interleave`` is told its ``output_size`` (else it reads the counts' sum back from the GPU), in
    the hook and in the vote's callback alike."""
    buffer = bucket.buffer()
    params = bucket.parameters()
    sizes = [p.numel() for p in params]
    total = buffer.numel()
    repeats = _repeats(state, sizes, buffer.device)
    p = buffer + _flat_error(state, params, buffer)
    signs = torch.sign(p).to(torch.int8)
    # one scale per parameter tensor, not per bucket: DDP rebuilds its buckets after the first step (and again after
    # a resume), and a per-bucket scale would make the update depend on that layout
    scale = torch.stack([chunk.abs().mean() for chunk in p.split(sizes)]).float()
    expand = torch.repeat_interleave(scale.to(p.dtype), repeats, output_size=total)
    new_error = p - expand * signs.to(p.dtype)
    for param, err in zip(params, new_error.split(sizes), strict=True):
        state.errors[state.names.get(id(param), str(id(param)))] = err.detach().clone()
    group = state.process_group
    world = dist.get_world_size(group)
    dist.all_reduce(scale, group=group)  # small; on NCCL it orders the streams, it does not block the host
    state.bytes_sent += signs.numel() * signs.element_size() + scale.numel() * scale.element_size()
    state.calls += 2
    state.backwards += int(bucket.index() == 0)
    fut = dist.all_reduce(signs, group=group, async_op=True).get_future()

    def apply_vote(f: torch.futures.Future) -> torch.Tensor:
        vote = f.value()[0].sign().to(buffer.dtype)
        mean_scale = torch.repeat_interleave((scale / world).to(buffer.dtype), repeats, output_size=total)
        buffer.copy_(vote.mul_(mean_scale))
        return buffer

    return fut.then(apply_vote)


def register(model: torch.nn.Module) -> SignState | None:
    """Register the hook on a DDP-wrapped ``model``; None (nothing to compress) for a single process."""
    if not hasattr(model, "register_comm_hook"):
        return None
    world = dist.get_world_size()
    if world > 127:
        from ...errors import UserError

        raise UserError(f"train.grad_compression='sign' sums int8 votes, which holds at most 127 processes (this run "
                        f"has {world}); use train.grad_compression=bf16 or powersgd")
    state = SignState(model)
    model.register_comm_hook(state, sign_majority_vote_hook)
    return state
