"""Few-shot training subsets (``data.per_class: K``): K training examples of every class, seeded and balanced.

Transfer and few-shot studies train on a small labelled subset and compare methods on the same one; the subset is
a pure function of (the labels, K, seed), so every process and every resumed run take the same examples, and
:func:`record` is what the run record keeps (K, classes, size, seed and a fingerprint of the indices). It is drawn
*after* the held-out probe is taken out, so the probe stays disjoint from training. Written here because
``datasets`` has no per-class sampler (``train_test_split(stratify_by_column=...)`` keeps proportions, not a fixed
count per class).

Must not: look at evaluation or probe rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import UserError


def per_class_indices(labels: Sequence[int], k: int, seed: int, num_classes: int) -> list[int]:
    """Sorted indices of ``k`` examples of each of the ``num_classes`` classes (a seeded permutation per class)."""
    y = torch.as_tensor(list(labels), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c in range(num_classes):
        idx = (y == c).nonzero().flatten()
        if len(idx) < k:
            raise UserError(f"data.per_class={k}: class {c} has only {len(idx)} training examples (after the held-out "
                            f"probe); use data.per_class={max(len(idx), 1)} or less")
        chosen += idx[torch.randperm(len(idx), generator=g)[:k]].tolist()
    return sorted(chosen)


def record(indices: list[int], k: int, num_classes: int, seed: int) -> dict[str, Any]:
    """What the run record keeps about the subset."""
    digest = hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()[:16]
    return {"per_class": k, "classes": num_classes, "examples": len(indices), "seed": seed,
            "indices_sha256": digest}
