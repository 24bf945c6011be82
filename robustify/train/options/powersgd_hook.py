"""PowerSGD (``train.grad_compression: powersgd``, Vogels et al. 2019) as a DDP communication hook whose state is kept
per parameter and saved in each process's checkpoint, so a resumed run goes on bit-identical to the uninterrupted one.

The algorithm and its defaults are torch's ``powerSGD_hook`` with ``PowerSGDState`` as Accelerate builds it (rank 1,
compression from the 1,001st step on, error feedback and warm start on, ``min_compression_rate`` 2): per bucket, the
error memory is added to the gradients; tensors not worth compressing are averaged whole; each matrix M is sent as
P = M Q (all-reduced, orthogonalised) and Q = M^T P (all-reduced, averaged), M ~ P Q^T; the error memory keeps what
this process's message left out, and Q is reused (orthogonalised) next step. Written here rather than registering
torch's hook because torch keys its memories by DDP bucket index and computes on views at offsets in the bucket:
DDP lays its buckets out at construction in parameter order and rebuilds them after the first backward in the order
gradients became ready, so a resumed run's first step runs under another layout than the uninterrupted run, and
both the memories' meaning and the matrix products' rounding (BLAS kernels depend on the operands' alignment)
change. Here every memory (error, P, Q) is a tensor per parameter name, and every matrix product runs on a fresh
copy, so neither depends on the layout. Fresh Q matrices (the first compressed step) come from a generator seeded
per parameter, not from the global ones (torch's hook reseeds every CUDA generator to draw them), and the
blocking waits torch's hook makes inside its future callbacks (which deadlock gloo with more than one bucket in
flight) are avoided: only the last all-reduce of a bucket is awaited in a callback.

Must not: touch the global random generators, or change anything but the bucket's gradients.
"""

# no `from __future__ import annotations`: DDP checks the hook's annotations as objects (dist.GradBucket)

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _orthogonalize, _should_compress

PREFIX = "powersgd."  # keys of the hook's state in a process's checkpointed method state
META = PREFIX + "state"  # the iteration counter (JSON)
KINDS = ("error", "p", "q")  # the per-parameter memories: error feedback, the last P and Q


class PowerSGDMemory:
    """The hook's settings (torch's defaults), its iteration counter and its memories per parameter name."""

    rank = 1  # matrix_approximation_rank
    start_iter = 1000  # start_powerSGD_iter: plain all-reduce before (DDP rebuilds its buckets after the first)
    min_compression_rate = 2  # a matrix is compressed when (n + m) * rank * 2 < n * m
    seed = 0  # of the first Q matrices, per parameter

    def __init__(self, model: torch.nn.Module, process_group: Any = None) -> None:
        module = getattr(model, "module", model)
        self.names = {id(p): name for name, p in module.named_parameters()}
        self.index = {name: i for i, name in enumerate(self.names.values())}
        self.process_group = process_group
        self.iter = 0  # backward passes through the hook (one per optimizer step), as torch's state counts them
        self.memory: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in KINDS}

    def first_q(self, name: str, m: int, r: int, like: torch.Tensor) -> torch.Tensor:
        """A random (m, r) matrix, the same on every process and whatever the bucket layout."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.index.get(name, len(self.index)))
        return torch.randn(m, r, generator=gen, dtype=like.dtype).to(like.device)

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"{PREFIX}{kind}.{name}": t.detach().clone()
                               for kind, memory in self.memory.items() for name, t in memory.items()}
        out[META] = {"iter": self.iter}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore what :meth:`state_dict` saved; False (the hook starts afresh) for a checkpoint without it."""
        meta = state.get(META)
        if not isinstance(meta, dict):
            return False
        self.iter = int(meta["iter"])
        self.memory = {kind: {} for kind in KINDS}
        for key, value in state.items():
            kind, _, name = key[len(PREFIX):].partition(".")
            if key.startswith(PREFIX) and kind in KINDS and isinstance(value, torch.Tensor):
                self.memory[kind][name] = value.detach().clone()
        return True


def _orthogonal(matrix: torch.Tensor) -> torch.Tensor:
    _orthogonalize(matrix.unsqueeze(0))  # torch's Gram-Schmidt (rank <= 2) or QR, in place
    return matrix


def _split(flat: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Fresh copies (not views at layout-dependent offsets) of consecutive pieces of ``flat``."""
    out, offset = [], 0
    for n, m in shapes:
        out.append(flat[offset:offset + n * m].view(n, m).clone())
        offset += n * m
    return out


def checkpointed_powerSGD_hook(state: PowerSGDMemory,
                               bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """PowerSGD on one bucket (module docstring); a plain averaging all-reduce before ``start_iter``."""
    if state.iter < state.start_iter:
        state.iter += int(bucket.is_last())
        return allreduce_hook(state.process_group, bucket)
    group = state.process_group
    world = dist.get_world_size(group)
    buffer = bucket.buffer()
    grads = bucket.gradients()  # views into the buffer
    names = [state.names.get(id(p), str(id(p))) for p in bucket.parameters()]
    errors, ps, qs = (state.memory[kind] for kind in KINDS)
    for name, g in zip(names, grads, strict=True):
        e = errors.get(name)
        if e is not None and e.numel() == g.numel():
            g.add_(e.view_as(g))
    sent = buffer.detach().clone()  # what this process meant to send (error feedback keeps what it did not)
    compressed, plain = [], []
    for name, g in zip(names, grads, strict=True):
        n = g.shape[0] if g.dim() else 1
        m = g.numel() // max(n, 1)
        r = min(n, m, state.rank)
        if g.dim() and _should_compress(n, m, r, state.min_compression_rate)[0]:
            compressed.append((name, g, n, m, r))
        else:
            plain.append(g)
    if plain:
        flat = torch.cat([g.reshape(-1) for g in plain])
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        for g, piece in zip(plain, _split(flat, [(g.numel(), 1) for g in plain]), strict=True):
            g.copy_(piece.view_as(g))
    # fresh copies: the products' rounding then does not depend on where the bucket layout put each gradient
    mats = [g.reshape(n, m).clone() for _, g, n, m, _ in compressed]
    qs_now = []
    for (name, _, _, m, r), mat in zip(compressed, mats, strict=True):
        q = qs.get(name)
        warm = q is not None and q.shape == (m, r)  # the last step's Q (warm start), or a first one
        qs_now.append(_orthogonal(q.to(mat.device, mat.dtype).clone() if warm else state.first_q(name, m, r, mat)))
    p_flat = torch.cat([(mat @ q).reshape(-1) for mat, q in zip(mats, qs_now, strict=True)]) if mats else None
    if p_flat is not None:
        dist.all_reduce(p_flat, group=group)
        p_now = [_orthogonal(p) for p in _split(p_flat, [(n, r) for _, _, n, _, r in compressed])]
        q_flat = torch.cat([(mat.T @ p).reshape(-1) for mat, p in zip(mats, p_now, strict=True)])
    else:
        p_now, q_flat = [], buffer.new_empty(0)

    def decompress(fut: torch.futures.Future) -> torch.Tensor:
        q_avg = _split(fut.value()[0].div_(world), [(m, r) for _, _, _, m, r in compressed])
        for (name, g, _, _, _), p, q in zip(compressed, p_now, q_avg, strict=True):
            g.copy_((p @ q.T).view_as(g))
            ps[name], qs[name] = p, q
        offset = 0
        for name, g in zip(names, grads, strict=True):
            errors[name] = sent[offset:offset + g.numel()] - g.reshape(-1)
            offset += g.numel()
        state.iter += int(bucket.is_last())
        return buffer

    return dist.all_reduce(q_flat, group=group, async_op=True).get_future().then(decompress)


def register(model: torch.nn.Module) -> PowerSGDMemory | None:
    """Register the hook on a DDP-wrapped ``model``; None (nothing to compress) for a single process."""
    if not hasattr(model, "register_comm_hook"):
        return None
    state = PowerSGDMemory(model)
    model.register_comm_hook(state, checkpointed_powerSGD_hook)
    return state
