"""The held-out probe split (Rice et al. 2020): examples of the training split that the optimizer never sees.

Robust overfitting makes the training examples a poor judge of which epoch is the most robust: their robust
accuracy keeps rising while the test one falls. The per-epoch probe (best-robust selection and the
catastrophic-overfitting guard) therefore measures examples held out of training: the last ``probe_size``
examples of a seeded permutation of the training split. The split is a pure function of (number of examples,
probe_size, seed), so every process and every resumed run computes the same one, and :func:`record` gives what
the run folder stores about it. ``datasets.Dataset.train_test_split`` would do the shuffling too, but it returns
copies of the data rather than the indices that the record and the disjointness check need.

Must not: depend on the world size or the process count (the same rows everywhere).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..errors import UserError


def train_size(n: int, probe_size: int) -> int:
    """How many of ``n`` examples are trained on once ``probe_size`` are held out (the plan needs only the count:
    shuffling ImageNet's 1.28M indices for it took seconds per recipe)."""
    if not 0 < probe_size < n:
        raise UserError(f"train.probe_size={probe_size} cannot be held out of {n} training examples; use a value "
                        f"between 1 and {n - 1}, or train.probe_split=train")
    return n - probe_size


def split_indices(n: int, probe_size: int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, probe indices) of ``n`` examples: disjoint, both sorted, together ``range(n)``."""
    train_size(n, probe_size)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[: n - probe_size]), sorted(perm[n - probe_size:])


def heldout_split(ds, probe_size: int, seed: int) -> tuple[list[int], list[int]]:
    """The split of a ``datasets.Dataset`` (or anything with ``len``): (train indices, probe indices)."""
    return split_indices(len(ds), probe_size, seed)


def record(train_idx: list[int], probe_idx: list[int], seed: int) -> dict[str, Any]:
    """What the run record keeps: the rule, its inputs and a fingerprint of the probe indices."""
    digest = hashlib.sha256(",".join(map(str, probe_idx)).encode()).hexdigest()[:16]
    return {"probe_split": "heldout", "seed": seed, "train_examples": len(train_idx),
            "probe_examples": len(probe_idx), "probe_indices_sha256": digest}
