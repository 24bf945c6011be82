"""Common-corruption accuracy on the fixed evaluation subset: per corruption x severity, the mean corruption
accuracy, and mCE / relative mCE against a named baseline model (by default the run's own base model).

Sharded like the attack kernel: each process corrupts and classifies only its :func:`shard_range` block of whole
batches, and the correct counts are summed across processes at the end (exact integers), so any world size reports
the single process's numbers. On-the-fly corruption seeds each example from its content digest
(:func:`definitions.example_seed`), so the images do not depend on the world size, the batch or the run either.
Always fp32 (:func:`kernel.fp32_math`, :class:`kernel.FP32`). Corrupting is CPU work: when the model runs on an
accelerator, ``workers`` DataLoader processes corrupt batches ahead of it (at most two batches each in flight, so
memory stays bounded) while the device classifies.

mCE follows Hendrycks & Dietterich: CE_c = sum_s E(c, s) / sum_s E_base(c, s), mCE = mean_c CE_c; relative mCE
subtracts each model's clean error first. Both are percentages (the baseline scores 100).

Must not: count an example for a model it was not classified by, or depend on the number of processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ...data.examples import Examples
from ...errors import UserError
from .. import collectives
from ..kernel import FP32, bar_for, fp32_math, shard_range
from .definitions import CORRUPTIONS, FAMILIES, SEVERITIES, corrupt_batch, example_seed, table_for
from .sources import PublishedReader, choose_source


def parse_corruptions(text: str | None) -> tuple[str, ...]:
    """``--corruptions``: names and family names (noise, blur, weather, digital), comma-separated, or ``all``."""
    if text is None or text.strip() in ("", "all"):
        return CORRUPTIONS
    out: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        names = FAMILIES.get(part) or ((part,) if part in CORRUPTIONS else None)
        if names is None:
            raise UserError(f"--corruptions {part!r} is not accepted; choose from: all, {', '.join(FAMILIES)}, "
                            f"{', '.join(CORRUPTIONS)}")
        out += [n for n in names if n not in out]
    return tuple(c for c in CORRUPTIONS if c in out)


def parse_severities(text: str | None) -> tuple[int, ...]:
    """``--severities``: comma-separated severities 1-5 or a range (``1-3``), or ``all``."""
    if text is None or text.strip() in ("", "all"):
        return SEVERITIES
    found: set[int] = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            a = b = 0
        if not (1 <= a <= b <= 5):
            raise UserError(f"--severities {part!r} is not accepted; use severities 1-5, e.g. 1,3,5 or 1-5 or all")
        found.update(range(a, b + 1))
    return tuple(sorted(found))


@dataclass
class CorruptionSettings:
    """What ``--attack corruptions`` runs (``robustify eval`` flags of the same names)."""

    corruptions: tuple[str, ...] = CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    source: str = "auto"  # auto | published | on-the-fly
    data_repo: str | None = None  # another Hub copy of the published set (its layout)
    baseline: str | None = None  # model spec; None: the run's base model; "none": no baseline
    seed: int = 0
    workers: int | None = None  # corrupting processes beside an accelerator (None: 0 on CPU, else up to 8)
    batch_size: int = 250
    extra: dict[str, Any] = field(default_factory=dict)


def default_workers(device: torch.device) -> int:
    """No worker processes when the model runs on the CPU (they would compete for its cores); beside an accelerator,
    one per free core up to 8."""
    if device.type == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class _Batches(torch.utils.data.IterableDataset):
    """The (corruption, severity, batch) tasks of one process, corrupted in order (split over DataLoader workers
    round-robin and put back in order by the DataLoader)."""

    def __init__(self, ex: Examples, tasks: list[tuple[str, int, int, int]], digests: list[bytes], seed: int,
                 reader: PublishedReader | None, first: int) -> None:
        self.ex, self.tasks, self.digests, self.seed, self.reader, self.first = ex, tasks, digests, seed, reader, first

    def make(self, task: tuple[str, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        c, s, i, j = task
        x, y = self.ex.rows(i, j)
        if self.reader is not None:
            xc, yc = self.reader.rows(c, s, i, j)
            if not torch.equal(yc, y):
                raise UserError(f"{self.reader.pub.name} {c} severity {s}: the labels of examples {i}..{j} differ "
                                f"from the evaluation subset's, so they are not the same images (the published set "
                                "holds the test split in order)")
            return xc, y
        seeds = [example_seed(self.digests[k - self.first], c, s, self.seed) for k in range(i, j)]
        return corrupt_batch(x, c, s, seeds), y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        for t, task in enumerate(self.tasks):
            if t % n == k:
                yield self.make(task)


def evaluate_corruptions(models: dict[str, torch.nn.Module], ex: Examples, s: CorruptionSettings,
                         transform: Any, device: torch.device | str = "cpu", state: Any = None,
                         progress: bool = True) -> dict[str, Any]:
    """Accuracy of each of ``models`` (name -> model; the first is the one evaluated, a second the baseline) on
    every corruption x severity of this process's block of ``ex``; returns the JSON-ready result (every process
    returns the same). ``transform``: the model's preprocessing (PIL -> [0,1] tensor) for the published images."""
    t0 = time.perf_counter()
    device = torch.device(device)
    world = state.num_processes if state is not None else 1
    rank = state.process_index if state is not None else 0
    source, pub = choose_source(ex.data, s.source, s.data_repo)
    first, end = shard_range(ex.n, s.batch_size, rank, world)
    xs, ys = ex.rows(first, end)
    digests = Examples(xs, ys, ex.data, ex.split, ex.num_classes).example_digests() if source == "on-the-fly" else b""
    per = [digests[k:k + 32] for k in range(0, len(digests), 32)]
    reader = PublishedReader(pub, transform) if pub is not None else None
    tasks = [(c, sev, i, min(i + s.batch_size, end)) for c in s.corruptions for sev in s.severities
             for i in range(first, end, s.batch_size)]
    workers = default_workers(device) if s.workers is None else s.workers
    data = _Batches(ex, tasks, per, s.seed, reader, first)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers,
                                         **({"prefetch_factor": 2, "persistent_workers": False} if workers else {}))
    names = list(models)
    nets = {k: FP32(m).eval().to(device) for k, m in models.items()}
    counts = torch.zeros(len(names), len(s.corruptions) + 1, len(s.severities), dtype=torch.long, device=device)
    index = {(c, sev): (ci + 1, si) for ci, c in enumerate(s.corruptions) for si, sev in enumerate(s.severities)}
    with fp32_math(), torch.no_grad():
        for i in range(first, end, s.batch_size):  # clean accuracy on the same block (row 0, severity column 0)
            x, y = ex.rows(i, min(i + s.batch_size, end))
            for m, k in enumerate(names):
                counts[m, 0, 0] += (nets[k](x.to(device).float().div_(255)).argmax(1) == y.to(device)).sum()
        with bar_for(len(tasks) * s.batch_size, "corruptions", progress and rank == 0) as bar:
            for task, (x, y) in zip(tasks, loader, strict=True):
                ci, si = index[task[:2]]
                xd, yd = x.to(device, non_blocking=True).float().div_(255), y.to(device, non_blocking=True)
                for m, k in enumerate(names):
                    counts[m, ci, si] += (nets[k](xd).argmax(1) == yd).sum()
                bar.update(y.numel())
    if world > 1:
        from accelerate.utils import reduce

        with collectives.stage("eval: corruption counts"):
            counts = reduce(counts, reduction="sum")
    counts = counts.cpu()
    n = ex.n
    results = {k: _accuracies(counts[m], n, s) for m, k in enumerate(names)}
    main = results[names[0]]
    out: dict[str, Any] = {
        "source": source, "published_set": pub.name if pub else None,
        "repo": pub.repo if pub else None,
        "definitions": None if pub else (f"robustify's own implementation of Hendrycks & Dietterich (2019), "
                                          f"{table_for(min(ex.x.shape[-2:]))} severity table; frost procedural"),
        "corruptions": list(s.corruptions), "severities": list(s.severities), "n_examples": n,
        "data": ex.data, "split": ex.split, "seed": s.seed, "precision": "fp32", "processes": world,
        "workers": workers, "batch_size": s.batch_size, **main,
    }
    if len(names) > 1:
        base = results[names[1]]
        out["baseline"] = {"model": names[1], **base}
        out |= mce(main, base, s)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _accuracies(c: torch.Tensor, n: int, s: CorruptionSettings) -> dict[str, Any]:
    acc = {name: {str(sev): int(c[ci + 1, si]) / n for si, sev in enumerate(s.severities)}
           for ci, name in enumerate(s.corruptions)}
    per = {name: sum(v.values()) / len(v) for name, v in acc.items()}
    fams = {f: sum(per[x] for x in names) / len(names) for f, names in FAMILIES.items()
            if all(x in per for x in names)}
    return {"clean_acc": int(c[0, 0]) / n, "accuracy": acc, "per_corruption": per, "per_family": fams,
            "mean_corruption_acc": sum(per.values()) / len(per)}


def mce(main: dict[str, Any], base: dict[str, Any], s: CorruptionSettings) -> dict[str, Any]:
    """mCE and relative mCE (percent) against the baseline; a corruption the baseline gets all right is left out
    (its ratio is undefined) and named."""
    ce, rel, undefined = {}, {}, []
    for c in s.corruptions:
        e = sum(1 - a for a in main["accuracy"][c].values())
        eb = sum(1 - a for a in base["accuracy"][c].values())
        k = len(s.severities)
        rb = eb - k * (1 - base["clean_acc"])
        if eb <= 0:
            undefined.append(c)
            continue
        ce[c] = 100 * e / eb
        if rb > 0:
            rel[c] = 100 * (e - k * (1 - main["clean_acc"])) / rb
    out: dict[str, Any] = {"ce": ce, "mce": sum(ce.values()) / len(ce) if ce else None,
                           "relative_mce": sum(rel.values()) / len(rel) if rel else None}
    if undefined:
        out["mce_undefined_for"] = undefined
    return out
