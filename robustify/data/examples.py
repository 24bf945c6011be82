"""The fixed, recorded evaluation subset (:class:`Examples`): decoded images and labels with a digest of their bytes.

Owned here, below evaluation and training, because the loaders build it and the evaluation wing attacks it; it
holds tensors and their provenance only, never a model or an attack.

Must not: hold a model or an attack.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Examples:
    """The fixed, recorded subset: the first ``n`` examples of ``split``, as uint8 (N,C,H,W) at the input size."""

    x: torch.Tensor
    y: torch.Tensor
    data: str
    split: str
    num_classes: int
    label_names: list[str] | None = None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def record(self) -> dict[str, Any]:
        digest = hashlib.sha256(self.x.numpy().tobytes() + self.y.numpy().tobytes()).hexdigest()[:16]
        return {"data": self.data, "split": self.split, "first_n": self.n, "input_size": list(self.x.shape[1:]),
                "sha256_16": digest}
