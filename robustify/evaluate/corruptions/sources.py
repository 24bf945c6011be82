"""Where corrupted images come from: the published sets on the Hub (CIFAR-10-C, CIFAR-100-C, ImageNet-C) or
on-the-fly corruption of the evaluation subset itself (:mod:`.definitions`).

Only the published sets are RobustBench's protocol, so only their numbers may be set beside its leaderboard; the
report names the source either way. Their Hub layouts, as the authors published them:

- ``npy`` (CIFAR-10-C, CIFAR-100-C; Zenodo records 2535967 and 3555552): one file ``<corruption>.npy`` per
  corruption, uint8 (5 x N, H, W, 3) with the severities stacked (rows ``[(s-1) N, s N)`` are severity s), and one
  ``labels.npy``; each corruption's file is downloaded once (huggingface_hub's cache) and read memory-mapped;
- ``parquet`` (ImageNet-C): one data set per corruption and severity (a repo template), its ``validation`` split
  streamed through ``datasets``, so only the first N rows are read.

The published sets hold the corrupted test images in the test split's order, so the first N of each severity are
the corrupted evaluation subset; their labels are compared with the subset's and any difference is refused (not
the same images). Images go through the model's own preprocessing, as the clean subset did.

Must not: reach the network outside huggingface_hub/datasets, or report a published number for other images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import UserError, first_line


@dataclass(frozen=True)
class PublishedSet:
    """A published corrupted set: its name, Hub repo (or repo template), layout and severity block size."""

    name: str
    repo: str | None  # None: no known Hub copy; --corruption-data ORG/NAME names one
    layout: str  # "npy" | "parquet"
    per_severity: int  # images per severity (the test split's size)
    split: str = "validation"  # parquet only
    auto: bool = True  # taken by --corruption-source auto (else only when asked for: published)


PUBLISHED: dict[str, PublishedSet] = {
    # an unchanged copy of Zenodo record 2535967 (CC BY 4.0), in the authors' npy layout
    "cifar10-c": PublishedSet("cifar10-c", "YashP54/cifar10-c", "npy", 10_000),
    "cifar100-c": PublishedSet("cifar100-c", None, "npy", 10_000),
    # one parquet data set per corruption and severity, 50,000 validation images each; only with
    # --corruption-source published: its row order is not known to be the validation split's (a different order
    # is refused by the label check)
    "imagenet-c": PublishedSet("imagenet-c", "Tsomaros/ImageNet-C-{corruption}-severity_{severity}", "parquet",
                               50_000, auto=False),
}
# the clean data sets (robustify's --data spellings and their Hub ids) whose corrupted set is published
FOR_DATA = {"cifar10": "cifar10-c", "uoft-cs/cifar10": "cifar10-c", "cifar100": "cifar100-c",
            "uoft-cs/cifar100": "cifar100-c", "imagenet-1k": "imagenet-c", "ILSVRC/imagenet-1k": "imagenet-c"}
SOURCES = ("auto", "published", "on-the-fly")


def published_for(data: str) -> PublishedSet | None:
    name = FOR_DATA.get(data)
    return PUBLISHED[name] if name else None


def choose_source(data: str, source: str, repo: str | None) -> tuple[str, PublishedSet | None]:
    """("published", its set) or ("on-the-fly", None) for ``--corruption-source`` on ``data``; one line when the
    published set was asked for and there is none."""
    if source not in SOURCES:
        raise UserError(f"--corruption-source {source!r} is not accepted; choose from: {', '.join(SOURCES)}")
    pub = published_for(data)
    if pub is not None and repo:
        pub = PublishedSet(pub.name, repo, pub.layout, pub.per_severity, pub.split)
    if source == "on-the-fly" or (source == "auto" and pub is not None and not pub.auto and not repo):
        return "on-the-fly", None
    if pub is None or pub.repo is None:
        if source == "published":
            why = (f"{data!r} has no published corrupted set (cifar10, cifar100 and imagenet-1k have)" if pub is None
                   else f"no Hub copy of {pub.name} is known; give one with --corruption-data ORG/NAME (the "
                        "authors' files: <corruption>.npy and labels.npy)")
            raise UserError(f"--corruption-source published: {why}; or use --corruption-source on-the-fly")
        return "on-the-fly", None
    return "published", pub


class PublishedReader:
    """The first ``n`` images of one corruption and severity of a published set, decoded with ``transform`` (the
    model's preprocessing: PIL image -> float [0,1] tensor), as uint8 (N,C,H,W) with their labels."""

    def __init__(self, pub: PublishedSet, transform: Callable[[Any], torch.Tensor]) -> None:
        self.pub, self.transform = pub, transform
        self._arrays: dict[str, np.ndarray] = {}
        self._streams: dict[str, tuple[Any, int]] = {}  # parquet: repo -> (open iterator, rows read)

    def _npy(self, filename: str) -> np.ndarray:
        if filename not in self._arrays:
            from huggingface_hub import hf_hub_download

            try:
                path = hf_hub_download(self.pub.repo, filename, repo_type="dataset")
            except Exception as e:  # noqa: BLE001 - the hub client raises many types; one line for all
                raise UserError(f"{self.pub.name}: {filename} could not be read from the Hub data set "
                                f"{self.pub.repo!r} ({first_line(e)}); connect, or use --corruption-source "
                                "on-the-fly") from None
            self._arrays[filename] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._arrays[filename]

    def rows(self, corruption: str, severity: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[start, end)`` of the severity's block (uint8 N,C,H,W after preprocessing) and their labels."""
        from PIL import Image

        from ...data.preprocessing import decode_one

        if self.pub.layout == "npy":
            images = self._npy(f"{corruption}.npy")
            labels = self._npy("labels.npy")
            per = images.shape[0] // 5  # the severities stacked: 5 x the test split (10,000 for the published sets)
            base = (severity - 1) * per
            if images.shape[0] % 5 or labels.shape[0] != images.shape[0] or end > per:
                raise UserError(f"{self.pub.name}: {corruption}.npy holds {images.shape[0]} images and labels.npy "
                                f"{labels.shape[0]} labels; the published layout stacks 5 severities of the test "
                                f"split ({5 * self.pub.per_severity:,} of each), and examples up to {end} are asked "
                                "for")
            pil = [Image.fromarray(np.asarray(images[base + i])) for i in range(start, end)]
            y = torch.as_tensor(np.asarray(labels[base + start:base + end]), dtype=torch.long)
        else:
            pil, ys = self._parquet(corruption, severity, start, end)
            y = torch.tensor(ys, dtype=torch.long)
        x = [decode_one(im, self.transform) for im in pil]
        return (torch.stack(x) if x else torch.zeros((0, 3, 1, 1), dtype=torch.uint8)), y

    def _parquet(self, corruption: str, severity: int, start: int, end: int) -> tuple[list[Any], list[int]]:
        """Rows ``[start, end)`` of the streamed split: read on from where this reader's last call for the same
        corruption and severity stopped (a process asks for its batches in order), reopened only to go back."""
        import itertools

        import datasets

        repo = self.pub.repo.format(corruption=corruption, severity=severity)
        try:
            it, pos = self._streams.get(repo, (None, 0))
            if it is None or pos > start:
                it, pos = iter(datasets.load_dataset(repo, split=self.pub.split, streaming=True)), 0
            rows = list(itertools.islice(it, start - pos, end - pos))
            self._streams[repo] = (it, pos + (start - pos) + len(rows))
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{self.pub.name}: {repo!r} could not be streamed ({first_line(e)}); connect, or use "
                            "--corruption-source on-the-fly") from None
        image_key = next((k for k in ("image", "img", "jpg") if rows and k in rows[0]), "image")
        return [r[image_key] for r in rows], [int(r["label"]) for r in rows]
