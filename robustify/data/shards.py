"""Which rows of a sharded (parquet) split each process reads in an epoch, and in what order: pure functions.

This module owns the *plan* of a streamed epoch and nothing else: it never opens a file, never decodes, never
touches a process group. Everything is a pure function of (rows per shard, world size, processes per node, rank,
seed, epoch), so every process, every node and every resumed run computes the same plan without talking to the others.

The rules (see docs/data-at-scale.md):

- **Whole shards per process.** The shards (files) are dealt out, not rows: largest first, each to the bin of its
  group of ``L`` with the fewest rows so far; equal shards in a seeded permutation (a round robin when shards are
  equal), and the bins go to the processes in a seeded order. A group is the whole world (pure streaming: the
  assignment changes every epoch) or one node (``pinned``: the node-local cache, where a node keeps the same shards
  for the whole run and only the order inside the node changes per epoch, so a node downloads each of its shards
  once). 294 shards on 8 processes: six processes get 37 shards, two get 36.
- **The same number of batches everywhere.** The bins' row totals depend only on the shard sizes, so the smallest
  bin is the same in every epoch; the batch count per epoch is its rows divided by the batch size. A process stops
  reading once it has its batches: the rows past that bound in an epoch (at most about one shard per process) are
  not read at all, and a different permutation drops different rows next epoch.
- **Fewer shards than processes** in a group (or shards so uneven that dealing them would lose over half a process's
  share): each process of the group reads every shard of the group and keeps
  every ``L``-th row of the common order (the per-example split; each process then reads ``L`` times its share).
- **Shuffling.** Rows are shuffled inside *windows* of ``window`` consecutive shards of a process's list, with a
  permutation seeded by (seed, epoch, the window's shards). A window is the unit of reading, so the position in
  the epoch is (window, offset): a resumed run skips the finished windows without opening them.
- **Row identity.** A row is (shard, row in shard); its global id (the shard's offset plus the row) seeds its
  augmentation, so an example is augmented identically at every world size.

Must not: read any data: it only decides which shard goes where.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def active(shard_rows: list[int]) -> list[int]:
    """The shards with rows to train on (a limit or the probe can empty a shard; an empty shard is never dealt)."""
    return [s for s, n in enumerate(shard_rows) if n > 0]


def node_groups(shards: list[int], world: int, local_world: int, seed: int, epoch: int, pinned: bool
                ) -> list[list[int]]:
    """The shards of each group of processes: one group of all ``shards`` (a new permutation per epoch), or,
    ``pinned``, one group per node (``world / local_world`` nodes) with the same shards for the whole run (seeded by
    ``seed``), in a new order per epoch."""
    shards = list(shards)
    if not pinned or local_world >= world:
        return [[shards[i] for i in _rng(seed, epoch, 0x5A4D).permutation(len(shards))]]
    nodes = world // local_world
    perm = [shards[i] for i in _rng(seed, 0x4E0D).permutation(len(shards))]
    groups = [sorted(perm[k::nodes]) for k in range(nodes)]
    return [[g[i] for i in _rng(seed, epoch, k, 0x5A4D).permutation(len(g))] for k, g in enumerate(groups)]


def group_size(world: int, local_world: int, pinned: bool) -> int:
    """Processes per group: the node's (pinned) or the whole world's."""
    return local_world if pinned and local_world < world else world


def _whole_bound(rows: list[int], size: int) -> int:
    """Rows of the process that gets the fewest when a group's shards are dealt by :func:`deal`: the dealing depends
    only on the sorted shard sizes, so this is the same in every epoch, whatever the permutation."""
    return min(sum(rows[i] for i in b) for b in deal(list(range(len(rows))), rows, size))


def _group_mode(rows: list[int], size: int) -> bool:
    """True: whole shards (enough shards, and dealing them loses under half of a process's fair share)."""
    return len(rows) >= size and 2 * _whole_bound(rows, size) >= sum(rows) // size


def rows_bound(shard_rows: list[int], world: int, local_world: int, seed: int, pinned: bool) -> int:
    """Rows every process gets in every epoch, at least, the smallest over the groups: :func:`_whole_bound` with whole
    shards, ``rows_g // L`` in the per-example split. The groups' shards do not depend on the epoch (all shards, or
    pinned to a node by the seed), so the bound holds for every epoch whatever its permutation."""
    size = group_size(world, local_world, pinned)
    bound = None
    for g in node_groups(active(shard_rows), world, local_world, seed, 0, pinned):
        rows = [shard_rows[s] for s in g]
        b = _whole_bound(rows, size) if _group_mode(rows, size) else sum(rows) // size
        bound = b if bound is None else min(bound, b)
    return int(bound or 0)


def batches_per_epoch(shard_rows: list[int], batch_size: int, world: int, local_world: int | None = None,
                      seed: int = 0, pinned: bool = False) -> int:
    """Batches of ``batch_size`` every process trains on in every epoch (identical on all ranks)."""
    return rows_bound(shard_rows, world, local_world or world, seed, pinned) // batch_size


def per_example(shard_rows: list[int], world: int, local_world: int | None = None, seed: int = 0,
                pinned: bool = False) -> bool:
    """True when a group has too few shards for its processes, so rows (not shards) are split between them."""
    size = group_size(world, local_world or world, pinned)
    groups = node_groups(active(shard_rows), world, local_world or world, seed, 0, pinned)
    return not all(_group_mode([shard_rows[s] for s in g], size) for g in groups)


def deal(shards: list[int], shard_rows: list[int], size: int) -> list[list[int]]:
    """Shards dealt to ``size`` bins, largest first (longest-processing-time): each to the bin with the fewest rows so
    far (then the fewest shards, then the lowest index). Equal shards keep the given (permuted) order, so equal
    shards are dealt at random, and each bin lists its shards in that order; the bins' totals depend only on the
    sizes. Equal shards make this a round robin: 294 on 8 bins gives 37, 37, 37, 37, 37, 37, 36, 36."""
    bins: list[list[int]] = [[] for _ in range(size)]
    totals = [0] * size
    for s in sorted(shards, key=lambda k: -shard_rows[k]):
        j = min(range(size), key=lambda k: (totals[k], len(bins[k]), k))
        bins[j].append(s)
        totals[j] += shard_rows[s]
    rank_of = {s: i for i, s in enumerate(shards)}
    return [sorted(b, key=rank_of.__getitem__) for b in bins]


def process_shards(shard_rows: list[int], world: int, rank: int, seed: int, epoch: int,
                   local_world: int | None = None, pinned: bool = False) -> tuple[list[int], int, int]:
    """(shards this process reads in order, stride, offset): with whole shards, stride 1; in the per-example split,
    every shard of the group, of whose common row order the process keeps rows ``offset, offset + stride, ...``."""
    lw = local_world or world
    size = group_size(world, lw, pinned)
    group, j = divmod(rank, size)
    shards = node_groups(active(shard_rows), world, lw, seed, epoch, pinned)[group]
    if not _group_mode([shard_rows[s] for s in shards], size):
        return shards, size, j
    bins = deal(shards, shard_rows, size)
    which = _rng(seed, epoch, group, 0xB125).permutation(size)  # which bin each process reads this epoch
    return bins[int(which[j])], 1, 0


@dataclass(frozen=True)
class Window:
    """A run of consecutive shards of a process's list, read together; ``order`` holds the rows this process takes
    from them, in training order, as (shard, row in shard) pairs (shape (n, 2))."""

    shards: tuple[int, ...]
    order: np.ndarray


def epoch_plan(shard_rows: list[int], world: int, rank: int, seed: int, epoch: int, batch_size: int,
               window: int = 1, local_world: int | None = None, pinned: bool = False,
               excluded: dict[int, set[int]] | None = None) -> list[Window]:
    """This process's windows for ``epoch``, truncated to exactly ``batches_per_epoch * batch_size`` rows; windows
    past that are not listed (never opened). ``excluded``: rows held out of training (the probe), by shard; pass
    ``shard_rows`` already reduced by them so the batch count is computed after the probe is removed."""
    excluded = excluded or {}
    full = [n + len(excluded.get(s, ())) for s, n in enumerate(shard_rows)]
    need = batches_per_epoch(shard_rows, batch_size, world, local_world, seed, pinned) * batch_size
    shards, stride, offset = process_shards(shard_rows, world, rank, seed, epoch, local_world, pinned)
    out: list[Window] = []
    taken = 0
    for w in range(0, len(shards), max(1, window)):
        if taken >= need:
            break
        ids = shards[w: w + max(1, window)]
        pairs = [np.stack([np.full(full[s], s), np.arange(full[s])], 1) for s in ids]
        rows = np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)
        if any(excluded.get(s) for s in ids):
            drop = np.array([r in excluded.get(int(s), ()) for s, r in rows], dtype=bool)
            rows = rows[~drop]
        rows = rows[_rng(seed, epoch, *ids, 0x0DE5).permutation(len(rows))]
        rows = rows[offset::stride][: need - taken]
        taken += len(rows)
        out.append(Window(tuple(ids), rows.astype(np.int64)))
    return out


def locate(windows: list[Window], row: int) -> tuple[int, int]:
    """(window index, offset in it) of the ``row``-th row of the epoch: where a resumed epoch starts reading."""
    for i, w in enumerate(windows):
        if row < len(w.order):
            return i, row
        row -= len(w.order)
    return len(windows), 0


def probe_rows(shard_rows: list[int], probe_size: int, seed: int) -> dict[int, list[int]]:
    """The held-out probe: ``probe_size`` rows taken from as few shards as possible (the shards of a permutation seeded
    by ``seed`` alone, rows in a seeded order inside each), so every world size and every process holds out the same
    rows and reads only those shards to decode them."""
    out: dict[int, list[int]] = {}
    left = probe_size
    for s in _rng(seed, 0x960B).permutation(len(shard_rows)).tolist():
        if left <= 0:
            break
        take = min(left, shard_rows[s])
        if take:
            out[s] = sorted(_rng(seed, s, 0x960B).permutation(shard_rows[s])[:take].tolist())
            left -= take
    return out


def limit_rows(shard_rows: list[int], limit: int | None) -> list[int]:
    """``data.max_train_examples``: the first ``limit`` rows in file order (later shards get 0 rows, never read)."""
    if not limit:
        return list(shard_rows)
    out, left = [], int(limit)
    for n in shard_rows:
        out.append(min(n, left))
        left -= out[-1]
    return out


__all__ = ["Window", "active", "batches_per_epoch", "deal", "epoch_plan", "limit_rows", "locate", "node_groups",
           "per_example", "probe_rows", "process_shards", "rows_bound"]
