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
    """The fixed, recorded subset: the first ``n`` examples of ``split``, as uint8 (N,C,H,W) at the input size.

    Under several processes each one may hold only its block of it (``offset``: the subset index of ``x[0]``;
    ``total``: the subset's size), decoded alone; :meth:`rows` reads by subset index either way."""

    x: torch.Tensor
    y: torch.Tensor
    data: str
    split: str
    num_classes: int
    label_names: list[str] | None = None
    offset: int = 0
    total: int | None = None  # None: x and y are the whole subset

    @property
    def n(self) -> int:
        """The subset's size (all processes' blocks together)."""
        return int(self.y.shape[0]) if self.total is None else self.total

    def rows(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Subset examples ``[start, end)``, which must lie in this process's block."""
        a, b = start - self.offset, end - self.offset
        if a < 0 or b > self.y.shape[0]:
            raise IndexError(f"examples {start}..{end} are outside this process's block {self.offset}.."
                             f"{self.offset + self.y.shape[0]}")
        return self.x[a:b], self.y[a:b]

    def example_digests(self) -> bytes:
        """sha256 of each example held here (image bytes, then the label as int64), concatenated in order."""
        return b"".join(hashlib.sha256(xi.contiguous().numpy().tobytes() + yi.to(torch.int64).numpy().tobytes())
                        .digest() for xi, yi in zip(self.x, self.y, strict=True))

    def record(self, digests: bytes | None = None) -> dict[str, Any]:
        """data, split, first_n, input_size and the subset's hash: sha256 over the per-example digests (of the whole
        subset: ``digests`` gathered from every process's block in order), so it does not depend on how many
        processes decoded the subset."""
        if digests is None:
            if self.total is not None and self.total != self.y.shape[0]:
                raise ValueError("a block of the subset needs every block's digests to be recorded")
            digests = self.example_digests()
        digest = hashlib.sha256(digests).hexdigest()[:16]
        return {"data": self.data, "split": self.split, "first_n": self.n, "input_size": list(self.x.shape[1:]),
                "sha256_16": digest}
