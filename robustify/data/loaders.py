"""Training batches, the fixed evaluation subset and the probe, for one process of a (possibly distributed) run.

Three ways to serve training batches, chosen by :func:`build_loaders`:

- **in memory** (small sets, ``augment`` none or flip-crop, under ``data.cache_mb``): every image decoded once into a
  uint8 tensor; batches are index slices;
- **map-style through DataLoader workers** (larger sets held by ``datasets`` on disk, or ``augment: timm``): each
  worker decodes and augments its examples;
- **streaming** (``data.streaming``: huge sets such as ImageNet): ``datasets`` streams the split, split between
  processes with ``split_dataset_by_node`` and shuffled through a buffer; the main process reads undecoded rows, and a
  pool of worker processes decodes and augments whole batches in order (``Pool.imap``). Written by hand rather than
  with DataLoader workers over the IterableDataset: those read disjoint shards each, which would make the order
  depend on the worker count and rule out an exact mid-epoch restart. Nothing is written to disk.

Every path follows one order rule, so that a resumed epoch is bit-identical to an uninterrupted one: the order is a
pure function of (seed, epoch, rank, world_size), and each example's random augmentation is seeded from (seed,
epoch, example) — never from a worker's or the process's RNG.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserError
from .examples import Examples
from .preprocessing import Preprocessing, decode_all, decode_one, example_seed, flip_crop, seeded_transform, to_unit
from .sources import default_eval_split, get_dataset, is_large, label_names, num_classes, streamed_size

Batch = tuple[torch.Tensor, torch.Tensor]


def _estimated_mb(n: int, input_size: tuple[int, int, int]) -> float:
    c, h, w = input_size
    return n * c * h * w / 2**20


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> list[torch.Tensor]:
    """This process's batches of example indices for ``epoch``: one permutation of all ``n`` examples per (seed,
    epoch), cut into global batches of ``world_size * batch_size`` (the tail is dropped), each shared out by rank.

    On one process this is exactly the order of ``DataLoader(shuffle=True, drop_last=True, generator=g)`` with ``g``
    seeded as below (the DataLoader draws its workers' base seed from ``g`` first), which robustify used before, so
    earlier runs reproduce and resume with the same batches."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    torch.empty((), dtype=torch.int64).random_(generator=gen)  # the DataLoader's base-seed draw
    perm = torch.randperm(n, generator=gen)
    per_step = batch_size * world_size
    steps = n // per_step
    return [perm[b * per_step + rank * batch_size: b * per_step + (rank + 1) * batch_size] for b in range(steps)]


def make_example(img, pre: Preprocessing, augment: str, seed: int, transforms: dict[str, Any]) -> torch.Tensor:
    """One training example: uint8 (no augmentation) or float in [0,1] (flip-crop, timm), seeded by ``seed``."""
    if augment == "timm":
        tf = transforms.setdefault("train", pre.train_transform())
        return seeded_transform(tf, img, seed)
    tf = transforms.setdefault("eval", pre.transform())
    x = decode_one(img, tf)
    return flip_crop(x[None], seeds=[seed])[0] if augment == "flip-crop" else x


class _MemoryTrain:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: str):
        self.x, self.y, self.augment = x, y, augment

    def batches(self, idx: list[torch.Tensor], seed: int, epoch: int) -> Iterator[Batch]:
        for b in idx:
            x = self.x[b]
            if self.augment == "flip-crop":
                x = flip_crop(x, seeds=[example_seed(seed, epoch, int(i)) for i in b])
            yield x, self.y[b]


class _Rows(torch.utils.data.Dataset):
    """Map-style access for DataLoader workers; each key is (example index, seed of its augmentation)."""

    def __init__(self, ds, pre: Preprocessing, augment: str):
        self.ds, self.pre, self.augment = ds, pre, augment
        self.transforms: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = key
        row = self.ds[int(i)]
        return make_example(row["image"], self.pre, self.augment, seed, self.transforms), int(row["label"])


class _KeyBatches(torch.utils.data.Sampler):
    """A batch sampler whose batches are set before each pass (so persistent workers survive across epochs)."""

    def __init__(self) -> None:
        self.keys: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class _MapTrain:
    def __init__(self, ds, pre: Preprocessing, augment: str, num_workers: int):
        self.sampler = _KeyBatches()
        # its own generator: starting the workers draws a seed, which must not come from (and shift) the global RNG
        # that the attacks' random starts use, or a run resumed mid-epoch would differ from the uninterrupted one
        self.loader = torch.utils.data.DataLoader(_Rows(ds, pre, augment), batch_sampler=self.sampler,
                                                  num_workers=num_workers, persistent_workers=num_workers > 0,
                                                  pin_memory=torch.cuda.is_available(),
                                                  generator=torch.Generator().manual_seed(0))

    def batches(self, idx: list[torch.Tensor], seed: int, epoch: int) -> Iterator[Batch]:
        self.sampler.keys = [[(int(i), example_seed(seed, epoch, int(i))) for i in b] for b in idx]
        yield from self.loader


_WORKER: dict[str, Any] = {}


def _decode_batch(args: tuple[list, dict, str]) -> Batch:
    """Decode one batch of undecoded rows (in a pool worker, or inline): (image value, label, seed) each."""
    import datasets

    rows, record, augment = args
    key = repr(record)
    if _WORKER.get("key") != key:
        _WORKER.update(key=key, pre=Preprocessing.from_record(record), transforms={}, image=datasets.Image())
    pre, transforms, image = _WORKER["pre"], _WORKER["transforms"], _WORKER["image"]
    xs = [make_example(image.decode_example(v), pre, augment, s, transforms) for v, _, s in rows]
    labels = [int(lab) for _, lab, _ in rows]
    if min(labels) < 0:
        raise UserError(f"a training example has label {min(labels)}: unlabelled data; labels must be 0..K-1")
    return torch.stack(xs), torch.tensor(labels, dtype=torch.long)


def _worker_init() -> None:
    torch.set_num_threads(1)


class _StreamTrain:
    def __init__(self, make_stream: Callable[[], Any], pre: Preprocessing, augment: str, batch_size: int,
                 batches_per_epoch: int, seed: int, rank: int, world_size: int, buffer: int, num_workers: int):
        self.make_stream, self.pre, self.augment = make_stream, pre, augment
        self.bs, self.n_batches, self.seed = batch_size, batches_per_epoch, seed
        self.rank, self.world, self.buffer, self.workers = rank, world_size, buffer, num_workers

    def _rows(self, epoch: int) -> Iterator[tuple[Any, int]]:
        """This process's undecoded rows for ``epoch`` in order, wrapping around if its shard runs short."""
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(self.make_stream(), rank=self.rank, world_size=self.world)
        ds = ds.shuffle(seed=self.seed, buffer_size=self.buffer)
        while True:
            ds.set_epoch(epoch)
            empty = True
            for row in ds:
                empty = False
                yield row["image"], row["label"]
            if empty:
                raise UserError("a process's share of the streamed training split is empty; use fewer processes")

    def batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        record = self.pre.record()
        start, stop = start_batch * self.bs, self.n_batches * self.bs
        rows = itertools.islice(self._rows(epoch), start, stop)  # skipped rows are read, never decoded
        pos = itertools.count(start)

        def grouped() -> Iterator[tuple[list, dict, str]]:
            while True:
                chunk = [(v, lab, example_seed(self.seed, epoch, next(pos), self.rank))
                         for v, lab in itertools.islice(rows, self.bs)]
                if len(chunk) < self.bs:
                    return
                yield chunk, record, self.augment

        if self.workers <= 0:
            yield from map(_decode_batch, grouped())
            return
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = ctx.Pool(self.workers, initializer=_worker_init)
        try:
            yield from pool.imap(_decode_batch, grouped(), chunksize=1)
        finally:
            pool.terminate()
            pool.join()


@dataclass
class Loaders:
    """What one process of a run trains and evaluates on (the contract the trainer codes against).

    - ``train_epoch(epoch, start_batch=0)``: THIS process's training batches ``(x, y)``: x uint8 or float in [0,1],
      CPU, NCHW at ``input_size`` (augmented); y long. Already sharded by (rank, world_size), every process getting
      ``batches_per_epoch`` batches (the tail of the epoch is dropped). The order is a pure function of (seed, epoch,
      rank, world_size) and each example's augmentation is seeded from (seed, epoch, example), so
      ``start_batch=k`` yields exactly batches k.. of the uninterrupted epoch, bit-identical, whatever the worker
      count. Streaming: the skipped rows are read but not decoded.
    - ``batches_per_epoch``: per process, identical on all ranks (streaming: from the split's size in its metadata).
    - ``eval_examples(rank, world_size)``: the contiguous shard for ``rank`` of the fixed first-``eval_size``
      examples of the eval split, uint8 (n,C,H,W) at ``input_size`` and labels; the shards in rank order concatenate
      to the single-process subset. ``eval_record()``: data, split, first_n, input_size and the subset's hash.
    - ``probe``: a fixed float [0,1] batch of the first ``probe_size`` training examples (no augmentation).
    - ``preprocessing``: the one :class:`Preprocessing` (build the model with ``models.build_robust_model``).
    """

    data: str
    train_split: str
    eval_split: str
    preprocessing: Preprocessing
    num_classes: int
    label_names: list[str] | None
    train_size: int
    eval_size: int
    batches_per_epoch: int
    probe: Batch
    streaming: bool
    _seed: int
    _rank: int
    _world: int
    _epoch_index: Callable[[int], list[torch.Tensor]] | None
    _train: Any
    _eval_rows: Callable[[int, int], Batch]
    eval_batch_size: int = 256
    probe_record: dict[str, Any] | None = None  # how the probe examples were chosen (held out or not)

    def __post_init__(self) -> None:
        self._eval_cache: dict[tuple[int, int], Batch] = {}

    @property
    def input_size(self) -> tuple[int, int, int]:
        """The size images are decoded to and attacked at."""
        return tuple(self.preprocessing.input_size)

    def train_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch={start_batch} is outside 0..{self.batches_per_epoch}")
        if self.streaming:
            return self._train.batches(epoch, start_batch)
        return self._train.batches(self._epoch_index(epoch)[start_batch:], self._seed, epoch)

    def eval_examples(self, rank: int = 0, world_size: int = 1) -> Batch:
        key = (rank, world_size)
        if key not in self._eval_cache:
            n = self.eval_size
            self._eval_cache[key] = self._eval_rows(rank * n // world_size, (rank + 1) * n // world_size)
        return self._eval_cache[key]

    def eval_record(self) -> dict[str, Any]:
        x, y = self.eval_examples()
        return Examples(x, y, self.data, self.eval_split, self.num_classes, self.label_names).record()


def use_streaming(cfg: Any) -> bool:
    """``data.streaming``: true | false | auto (auto streams the sets known to be large, e.g. imagenet-1k)."""
    mode = str(getattr(cfg, "streaming", "auto")).lower()
    return is_large(cfg.name) if mode == "auto" else mode in ("true", "1", "yes")


def _decode_rows_inline(rows: list, pre: Preprocessing) -> Batch:
    if not rows:
        c, h, w = pre.input_size
        return torch.empty((0, c, h, w), dtype=torch.uint8), torch.empty((0,), dtype=torch.long)
    return _decode_batch(([(v, lab, 0) for v, lab in rows], pre.record(), "none"))


def build_loaders(cfg: Any, data_config: dict, eval_examples: int, probe_size: int, seed: int = 0, rank: int = 0,
                  world_size: int = 1, main_process_first: Callable[[], Any] | None = None,
                  probe_split: str = "train") -> Loaders:
    """Everything one process needs from the data (see :class:`Loaders` for the contract).

    ``cfg`` is the recipe's ``data`` section (:class:`robustify.config.DataConfig`), ``data_config`` the backbone's
    timm data config (``resolve_data_config``); ``main_process_first`` (e.g. ``accelerator.main_process_first``) lets
    the main process download and prepare a map-style set into the ``datasets`` cache before the others read it.
    ``probe_split="heldout"`` (Rice et al. 2020) takes the probe examples out of training (``robustify.data.heldout``;
    streaming: the first ``probe_size`` streamed examples); ``"train"`` probes the first training examples.
    """
    import datasets

    from .heldout import record as heldout_record
    from .heldout import split_indices

    pre = Preprocessing.from_data_config(data_config, cfg)
    probe_record: dict[str, Any] = {"probe_split": "train", "probe_examples": probe_size,
                                    "rule": "first training examples"}
    streaming = use_streaming(cfg)
    eval_split = cfg.eval_split or default_eval_split(cfg.name)
    kw = {"image_column": cfg.image_column, "label_column": cfg.label_column, "holdout": cfg.holdout, "seed": 0}
    first = main_process_first if (main_process_first is not None and not streaming) else contextlib.nullcontext
    with first():
        train_ds = get_dataset(cfg.name, cfg.train_split, streaming=streaming, **kw)
        eval_ds = get_dataset(cfg.name, eval_split, streaming=streaming, **kw)
    bs = cfg.batch_size
    if streaming and cfg.per_class is not None:
        raise UserError(f"data.per_class={cfg.per_class} needs a map-style data set; {cfg.name!r} streams (set "
                        "data.streaming=false, or take a smaller split)")
    if streaming:
        raw_train = train_ds.cast_column("image", datasets.Image(decode=False))
        raw_eval = eval_ds.cast_column("image", datasets.Image(decode=False))
        total = streamed_size(train_ds, cfg.name, cfg.train_split)
        n_train = min(total, cfg.max_train_examples) if cfg.max_train_examples else total
        n_batches = n_train // world_size // bs
        if probe_split == "heldout":  # the first probe_size streamed rows are the probe, never trained on
            n_train -= probe_size
            probe_record = {"probe_split": "heldout", "probe_examples": probe_size, "rule": "first streamed rows"}
        head = list(itertools.islice(iter(raw_eval), eval_examples))
        n_eval = len(head)
        del head

        def eval_rows(start: int, end: int) -> Batch:
            return _decode_rows_inline([(r["image"], r["label"]) for r in itertools.islice(iter(raw_eval), start, end)],
                                       pre)

        probe_rows = [(r["image"], r["label"]) for r in itertools.islice(iter(raw_train), probe_size)]
        px, py = _decode_rows_inline(probe_rows, pre)
        stream = raw_train.skip(probe_size) if probe_split == "heldout" else raw_train
        train: Any = _StreamTrain(lambda: stream, pre, cfg.augment, bs, n_batches, seed, rank, world_size,
                                  cfg.shuffle_buffer, cfg.num_workers)
        epoch_index = None
    else:
        if cfg.max_train_examples:
            train_ds = train_ds.select(range(min(cfg.max_train_examples, len(train_ds))))
        probe_ds = train_ds.select(range(min(probe_size, len(train_ds))))
        if probe_split == "heldout":
            train_idx, probe_idx = split_indices(len(train_ds), probe_size, seed)
            probe_ds, train_ds = train_ds.select(probe_idx), train_ds.select(train_idx)
            probe_record = heldout_record(train_idx, probe_idx, seed)
        if cfg.per_class is not None:  # few-shot: K per class of what is left for training (data/few_shot.py)
            from .few_shot import per_class_indices
            from .few_shot import record as few_shot_record

            classes = num_classes(train_ds)
            chosen = per_class_indices(train_ds["label"], cfg.per_class, seed, classes)
            train_ds = train_ds.select(chosen)
            probe_record = {**probe_record, "few_shot": few_shot_record(chosen, cfg.per_class, classes, seed)}
        n_train = len(train_ds)
        sub = eval_ds.select(range(min(eval_examples, len(eval_ds))))  # the first N: a fixed, recorded subset
        n_eval = len(sub)
        transform = pre.transform()

        def eval_rows(start: int, end: int) -> Batch:
            return decode_all(sub.select(range(start, end)), transform)

        n_batches = n_train // world_size // bs

        def epoch_index(epoch: int) -> list[torch.Tensor]:
            return epoch_batches(n_train, bs, seed, epoch, rank, world_size)

        in_memory = cfg.augment != "timm" and _estimated_mb(n_train, pre.input_size) <= cfg.cache_mb
        if in_memory:
            xtr, ytr = decode_all(train_ds, transform)
            train = _MemoryTrain(xtr, ytr, cfg.augment)
        else:
            train = _MapTrain(train_ds, pre, cfg.augment, cfg.num_workers)
        px, py = decode_all(probe_ds, transform)
    if n_eval == 0:
        raise UserError(f"data {cfg.name!r} split {eval_split!r} is empty; give a split with examples to evaluate on")
    if n_batches == 0:
        raise UserError(f"data.batch_size={bs} x {world_size} process(es) is larger than the training split "
                        f"({n_train} examples); use a smaller batch size")
    return Loaders(data=cfg.name, train_split=cfg.train_split, eval_split=eval_split, preprocessing=pre,
                   num_classes=num_classes(train_ds), label_names=label_names(train_ds), train_size=n_train,
                   eval_size=n_eval, batches_per_epoch=n_batches, probe=(to_unit(px), py), streaming=streaming,
                   _seed=seed, _rank=rank, _world=world_size, _epoch_index=epoch_index, _train=train,
                   _eval_rows=eval_rows, eval_batch_size=cfg.eval_batch_size, probe_record=probe_record)


__all__ = ["Loaders", "build_loaders", "epoch_batches", "use_streaming"]
