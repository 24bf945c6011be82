"""Data at the dimensions users run: ImageNet's 294 training shards on 3, 4, 8 and 16 processes (and nodes of 8),
the held-out probe at every world size, bounded decoded batches, and a 294-shard stand-in streamed over HTTP from the
test Hub server by gloo process groups of 3, 4 and 8 (see docs/data-at-scale.md)."""

from __future__ import annotations

import numpy as np
import pytest

from robustify.data import shards as sh

# ImageNet-1k's train split: 294 parquet shards of about 4,357 rows (the last one shorter); a stand-in row count
IMAGENET_ROWS = [4357] * 293 + [4331]


@pytest.mark.parametrize("world", [3, 4, 8, 16])
@pytest.mark.parametrize("pinned,local", [(False, None), (True, 8)])
def test_294_shards_whole_per_process_same_batches_nothing_twice(world: int, pinned: bool, local: int | None):
    rows = [5 + (s % 3) for s in range(294)]  # uneven shards, small enough to enumerate every row
    lw = min(local or world, world)
    bs = 4
    n_batches = sh.batches_per_epoch(rows, bs, world, lw, seed=7, pinned=pinned)
    assert not sh.per_example(rows, world, lw, seed=7, pinned=pinned)
    seen_epochs = []
    for epoch in (1, 2):
        owner: dict[int, int] = {}
        taken: set[tuple[int, int]] = set()
        for rank in range(world):
            plan = sh.epoch_plan(rows, world, rank, 7, epoch, bs, window=2, local_world=lw, pinned=pinned)
            order = np.concatenate([w.order for w in plan])
            assert len(order) == n_batches * bs  # the same number of batches on every process
            for s in {int(s) for w in plan for s in w.shards}:
                assert owner.setdefault(s, rank) == rank  # whole shards: no shard read by two processes
            pairs = {(int(a), int(b)) for a, b in order}
            assert len(pairs) == len(order) and not pairs & taken  # nothing read twice
            taken |= pairs
        # at most about one shard's rows per process go unused in an epoch
        assert len(taken) >= sum(rows) - world * max(rows) - bs * world
        seen_epochs.append(sorted(owner.items()))
    assert seen_epochs[0] != seen_epochs[1]  # the assignment (or, pinned, the order inside the node) changes


def test_imagenet_dimensions_batch_count_and_node_pinning():
    """294 real-size shards, 8 processes, batch 128: 1,225 batches per process per epoch; at 4 nodes of 8 each node
    keeps the same shards all run (cache them once) while the order changes every epoch."""
    assert sh.batches_per_epoch(IMAGENET_ROWS, 128, 8) == 36 * 4357 // 128 == 1225
    nodes = {e: sh.node_groups(sh.active(IMAGENET_ROWS), 32, 8, seed=0, epoch=e, pinned=True) for e in (1, 2)}
    assert [sorted(g) for g in nodes[1]] == [sorted(g) for g in nodes[2]] and nodes[1] != nodes[2]
    assert sorted(s for g in nodes[1] for s in g) == list(range(294))
    assert sorted(len(g) for g in nodes[1]) == [73, 73, 74, 74]
    free = sh.node_groups(sh.active(IMAGENET_ROWS), 32, 8, seed=0, epoch=1, pinned=False)
    assert len(free) == 1 and sorted(free[0]) == list(range(294))


def test_fewer_shards_than_processes_split_rows():
    rows = [10, 9, 11]
    assert sh.per_example(rows, 8)
    n_batches = sh.batches_per_epoch(rows, 2, 8)
    assert n_batches == 30 // 8 // 2
    got = []
    for rank in range(8):
        shards, stride, offset = sh.process_shards(rows, 8, rank, 0, 1)
        assert sorted(shards) == [0, 1, 2] and (stride, offset) == (8, rank)
        order = np.concatenate([w.order for w in sh.epoch_plan(rows, 8, rank, 0, 1, 2, window=3)])
        assert len(order) == n_batches * 2
        got += [tuple(p) for p in order.tolist()]
    assert len(set(got)) == len(got)


def test_limit_and_probe_remove_rows_before_counting():
    rows = sh.limit_rows([4] * 294, 50)
    assert sum(rows) == 50 and rows[12] == 2 and rows[13] == 0 and len(sh.active(rows)) == 13
    probe = sh.probe_rows(rows, 6, seed=3)
    assert sum(len(v) for v in probe.values()) == 6 and probe == sh.probe_rows(rows, 6, seed=3)
    left = [n - len(probe.get(s, ())) for s, n in enumerate(rows)]
    excluded = {s: set(v) for s, v in probe.items()}
    n_batches = sh.batches_per_epoch(left, 2, 4)
    assert n_batches == min(sum(left[s] for s in b) for b in sh.deal(sh.active(left), left, 4)) // 2 == 4
    for rank in range(4):
        plan = sh.epoch_plan(left, 4, rank, 3, 1, 2, window=2, excluded=excluded)
        assert sum(len(w.order) for w in plan) == n_batches * 2
        for w in plan:
            assert not any(int(r) in excluded.get(int(s), ()) for s, r in w.order)
            assert all(int(r) < rows[int(s)] for s, r in w.order)


def test_locate_gives_the_resume_window():
    plan = sh.epoch_plan([6] * 10, 2, 0, 0, 1, 3, window=2)
    assert [len(w.order) for w in plan] == [12, 12, 6]
    assert sh.locate(plan, 0) == (0, 0) and sh.locate(plan, 13) == (1, 1) and sh.locate(plan, 30) == (3, 0)
