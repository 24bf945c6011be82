"""PowerSGD (``train.grad_compression: powersgd``): PyTorch's ``powerSGD_hook``, registered by robustify so that its
state is saved in each process's checkpoint and a resumed run goes on exactly where the uninterrupted one is.

torch's ``PowerSGDState`` holds an iteration counter (compression starts at ``start_powerSGD_iter``, 1,000 by
default), a numpy generator (the seeds of fresh low-rank matrices), the error-feedback memory and the warm-start P
and Q matrices. A fresh state after a resume would run 1,000 more uncompressed steps, then draw new matrices.

torch keys the memories by DDP bucket index, and a bucket index names different parameters over a run: DDP lays its
buckets out at construction in parameter order, then rebuilds them once, after the first backward, in the order
the gradients became ready. A resumed run's first step therefore runs under the layout the uninterrupted run used
only for its very first step. The memories are saved per parameter name instead (the error memory sliced at each
gradient's offset in its bucket, P and Q at each compressed matrix's offset, in the order torch's hook lays them
out), and :func:`checkpointed_powerSGD_hook` lays them out again for whichever bucket DDP hands it: after a load,
and when a rebuild moved a bucket's parameters. Slicing and concatenating copies values, so the hook computes on the
same numbers either way.

Must not: change what torch's hook computes, or draw fresh low-rank matrices where restored ones exist.
"""

# no `from __future__ import annotations`: DDP checks the hook's annotations as objects (dist.GradBucket)

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState, _should_compress, powerSGD_hook

PREFIX = "powersgd."  # keys of the hook's state in a process's checkpointed method state
META = PREFIX + "state"  # the counter, the numpy generator and the statistics (JSON)
KINDS = ("error", "p", "q")  # the per-parameter memories: error feedback, warm-start P and Q


class Layout:
    """Where each parameter of one bucket sits in torch's memories for it: (offset, length) in the flat error
    memory (the bucket's buffer) and, for a matrix the hook compresses, in the P and Q memories (grouped by matrix
    shape in order of first appearance, as ``powerSGD_hook`` packs them)."""

    def __init__(self, names: tuple[str, ...], shapes: list[torch.Size], rank: int, min_rate: float) -> None:
        self.names = names
        self.slots: dict[str, dict[str, tuple[int, int]]] = {name: {} for name in names}
        offset = 0
        groups: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
        for name, shape in zip(names, shapes, strict=True):
            numel = shape.numel()
            self.slots[name]["error"] = (offset, numel)
            offset += numel
            n = shape[0] if len(shape) else 1  # as the hook views it: shape[0] rows (a 0-d tensor fails there too)
            m = numel // max(n, 1)
            r = min(n, m, rank)
            if _should_compress(n, m, r, min_rate)[0]:
                groups.setdefault((n, m), []).append((name, n * r, m * r))
        self.sizes = {"error": offset, "p": 0, "q": 0}
        for members in groups.values():
            for name, p_len, q_len in members:
                self.slots[name]["p"] = (self.sizes["p"], p_len)
                self.slots[name]["q"] = (self.sizes["q"], q_len)
                self.sizes["p"] += p_len
                self.sizes["q"] += q_len

    def split(self, kind: str, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The memory ``flat`` of one kind as copies per parameter."""
        return {name: flat[s[kind][0]:s[kind][0] + s[kind][1]].detach().clone()
                for name, s in self.slots.items() if kind in s}

    def join(self, kind: str, pieces: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor | None:
        """The bucket's memory of one kind built from ``pieces`` (popped), or None when a piece is missing or the wrong
        size: the error memory then starts at zero for that parameter; P and Q are drawn afresh by the hook."""
        slots = [(name, s[kind]) for name, s in self.slots.items() if kind in s]
        if not slots or not any(name in pieces for name, _ in slots):
            return None
        complete = all(name in pieces and pieces[name].numel() == n for name, (_, n) in slots)
        if kind != "error" and not complete:
            for name, _ in slots:
                pieces.pop(name, None)
            return None
        flat = torch.zeros(self.sizes[kind], dtype=like.dtype, device=like.device)
        for name, (offset, n) in slots:
            piece = pieces.pop(name, None)
            if piece is not None and piece.numel() == n:
                flat[offset:offset + n] = piece.to(like.device, like.dtype).flatten()
        return flat


class CheckpointedPowerSGD:
    """torch's ``PowerSGDState`` (Accelerate's defaults: rank 1, start after 1,000 iterations, error feedback and
    warm start), the bucket layouts its memories were written in, and restored memories awaiting their bucket."""

    def __init__(self, model: torch.nn.Module, process_group: Any = None) -> None:
        module = getattr(model, "module", model)
        self.names = {id(p): name for name, p in module.named_parameters()}
        self.psgd = PowerSGDState(process_group)
        self.layouts: dict[int, Layout] = {}  # bucket index -> the layout of its memories
        self.cache: dict[tuple[str, ...], Layout] = {}
        self.pending: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in KINDS}  # restored, per parameter

    def memories(self) -> tuple[dict[int, torch.Tensor], ...]:
        return self.psgd.error_dict, self.psgd.p_memory_dict, self.psgd.q_memory_dict

    def layout(self, bucket: dist.GradBucket) -> Layout:
        params = bucket.parameters()
        names = tuple(self.names.get(id(p), str(id(p))) for p in params)
        found = self.cache.get(names)
        if found is None:
            found = self.cache[names] = Layout(names, [p.shape for p in params], self.psgd.matrix_approximation_rank,
                                               self.psgd.min_compression_rate)
        return found

    def split(self, index: int) -> None:
        """Move bucket ``index``'s memories out of torch's state into per-parameter pieces."""
        layout = self.layouts.pop(index)
        for kind, memory in zip(KINDS, self.memories(), strict=True):
            flat = memory.pop(index, None)
            if flat is not None:
                self.pending[kind].update(layout.split(kind, flat))

    def align(self, bucket: dist.GradBucket) -> None:
        """Before torch's hook sees ``bucket``: if DDP rebuilt its buckets since this index's memories were written,
        move them, and those of every later bucket, to per-parameter pieces (DDP reduces buckets in index order, so
        the later ones are not in flight; an earlier one whose layout changed was caught at its own turn); then
        build the bucket's memories from any pieces of its parameters."""
        index = bucket.index()
        layout = self.layout(bucket)
        old = self.layouts.get(index)
        if old is not layout:
            if old is not None:
                for i in [i for i in self.layouts if i >= index]:
                    self.split(i)
            self.layouts[index] = layout
        if any(self.pending.values()):
            buffer = bucket.buffer()
            for kind, memory in zip(KINDS, self.memories(), strict=True):
                if index not in memory:
                    flat = layout.join(kind, self.pending[kind], buffer)
                    if flat is not None:
                        memory[index] = flat

    def state_dict(self) -> dict[str, Any]:
        """The memories per parameter (copies: the live state is untouched), the counter, the numpy generator's
        state and the compression statistics."""
        out: dict[str, Any] = {}
        for kind, memory in zip(KINDS, self.memories(), strict=True):
            for name, piece in self.pending[kind].items():
                out[f"{PREFIX}{kind}.{name}"] = piece.detach().clone()
            for index, flat in memory.items():
                if index in self.layouts:
                    out.update({f"{PREFIX}{kind}.{name}": piece
                                for name, piece in self.layouts[index].split(kind, flat).items()})
        s = self.psgd
        name, keys, pos, has_gauss, cached = s.rng.get_state()
        out[META] = {"iter": s.iter, "rng": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                     "numel_before": s.total_numel_before_compression,
                     "numel_after": s.total_numel_after_compression, "next_stats_report": s.next_stats_report}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore what :meth:`state_dict` saved; False (the hook starts fresh) for a checkpoint without it."""
        meta = state.get(META)
        if not isinstance(meta, dict):
            return False
        import numpy as np

        s = self.psgd
        s.iter = int(meta["iter"])
        name, keys, pos, has_gauss, cached = meta["rng"]
        s.rng.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        s.total_numel_before_compression = meta["numel_before"]
        s.total_numel_after_compression = meta["numel_after"]
        s.next_stats_report = meta["next_stats_report"]
        for memory in self.memories():
            memory.clear()
        self.layouts.clear()
        self.pending = {kind: {} for kind in KINDS}
        for key, value in state.items():
            kind, _, param = key[len(PREFIX):].partition(".")
            if key.startswith(PREFIX) and kind in KINDS and isinstance(value, torch.Tensor):
                self.pending[kind][param] = value.detach().clone()
        return True


def checkpointed_powerSGD_hook(state: CheckpointedPowerSGD,
                               bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """torch's ``powerSGD_hook``, on memories laid out for this bucket's parameters (``CheckpointedPowerSGD.align``)."""
    state.align(bucket)
    return powerSGD_hook(state.psgd, bucket)


def register(model: torch.nn.Module) -> CheckpointedPowerSGD | None:
    """Register the hook on a DDP-wrapped ``model``; None (nothing to compress) for a single process."""
    if not hasattr(model, "register_comm_hook"):
        return None
    state = CheckpointedPowerSGD(model)
    model.register_comm_hook(state, checkpointed_powerSGD_hook)
    return state
