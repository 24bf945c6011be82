"""Training batches, the fixed evaluation subset and the probe, for one process of a (possibly distributed) run.

Three ways to serve training batches, chosen by :func:`build_loaders`:

- **in memory** (small sets, ``augment`` none or flip-crop, under ``data.cache_mb``): every image decoded once into a
  uint8 tensor; batches are index slices;
- **map-style through DataLoader workers** (larger sets held by ``datasets`` on disk, or ``augment: timm``): each
  worker decodes and augments its examples;
- **streaming** (``data.streaming``: huge sets such as ImageNet): the split's parquet shards, whole shards per
  process (:mod:`.shards`), read by the main process and decoded by DataLoader workers with a bounded number of
  batches in flight (:mod:`.stream`); from the Hub either streamed or through a node-local copy
  (:mod:`.shard_cache`).

Every path follows one order rule, so that a resumed epoch is bit-identical to an uninterrupted one: the order is a
pure function of (seed, epoch, rank, world_size) (streaming: and the processes per node), and each example's random
augmentation is seeded from (seed, epoch, example) — never from a worker's or the process's RNG.

Must not: hold more decoded batches than its bound, or give processes different batch counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserError
from .examples import Examples
from .preprocessing import Preprocessing, decode_all, example_seed, flip_crop, make_example, to_unit
from .sources import default_eval_split, get_dataset, is_large, label_names, num_classes
from .stream import ShardStore, StreamTrain, decode_inline, local_world_size, note, read_rows, shard_set

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


@dataclass
class Loaders:
    """What one process of a run trains and evaluates on (the contract the trainer codes against).

    - ``train_epoch(epoch, start_batch=0)``: THIS process's training batches ``(x, y)``: x uint8 or float in [0,1],
      CPU (the model's device with ``data.decode=device``), NCHW at ``input_size`` (augmented); y long. Already
      sharded by (rank, world_size), every process getting ``batches_per_epoch`` batches (the tail of the epoch is
      dropped). The order is a pure function of (seed, epoch, rank, world_size) and each example's augmentation is
      seeded from (seed, epoch, example), so
      ``start_batch=k`` yields exactly batches k.. of the uninterrupted epoch, bit-identical, whatever the worker
      count. Streaming: the finished windows of shards are skipped without being opened.
    - ``batches_per_epoch``: per process, identical on all ranks (streaming: from the shards' footers, after the
      limit and the probe are removed).
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

    def stream_position(self, epoch: int, start_batch: int) -> dict[str, Any] | None:
        """Streaming: where this process's stream stands before minibatch ``start_batch`` of ``epoch`` (window,
        shard and row read next, a digest of the epoch's row order), which checkpoints store; None for map-style
        data (a row index is the whole position there)."""
        return self._train.position(epoch, start_batch) if self.streaming else None

    def eval_examples(self, rank: int = 0, world_size: int = 1) -> Batch:
        n = self.eval_size
        return self.eval_block(rank * n // world_size, (rank + 1) * n // world_size)

    def eval_block(self, start: int, end: int) -> Batch:
        """Examples ``[start, end)`` of the evaluation subset, decoded alone (only the shards that hold them are
        read): what one process attacks, see ``robustify.evaluate.kernel.shard_range``."""
        start, end = max(0, start), min(end, self.eval_size)
        if start >= end:  # a process whose block is empty (fewer eval batches than processes) still takes part
            return _empty(self.preprocessing)
        if (start, end) not in self._eval_cache:
            self._eval_cache[(start, end)] = self._eval_rows(start, end)
        return self._eval_cache[(start, end)]

    def eval_record(self) -> dict[str, Any]:
        x, y = self.eval_examples()
        return Examples(x, y, self.data, self.eval_split, self.num_classes, self.label_names).record()


def use_streaming(cfg: Any) -> bool:
    """``data.streaming``: true | false | auto (auto streams the sets known to be large, e.g. imagenet-1k)."""
    mode = str(getattr(cfg, "streaming", "auto")).lower()
    return is_large(cfg.name) if mode == "auto" else mode in ("true", "1", "yes")


def _first_rows(rows: list[int], start: int, end: int) -> dict[int, list[int]]:
    """Rows ``start..end-1`` of a split in file order, by shard (the fixed evaluation subset; a probe of training
    examples): only the shards that hold them are read."""
    out: dict[int, list[int]] = {}
    base = 0
    for s, n in enumerate(rows):
        lo, hi = max(start, base), min(end, base + n)
        if lo < hi:
            out[s] = list(range(lo - base, hi - base))
        base += n
        if base >= end:
            break
    return out


def evaluation_block(spec: str, split: str, n_examples: int, pre: Preprocessing,
                     block: Callable[[int], tuple[int, int]] | None = None,
                     main_process_first: Callable[[], Any] | None = None, desc: str | None = None) -> Examples:
    """This process's block of the fixed evaluation subset (the first ``n_examples`` of ``split``), decoded alone:
    ``block(n)`` gives ``[start, end)`` once the subset's size ``n`` is known (None: all of it). What ``robustify
    eval`` attacks under several processes, so no process decodes examples another one attacks.

    The large sets (``data.streaming: auto``, e.g. imagenet-1k) are streamed: only the shards that hold the block are
    read, from the shards' footers' row counts; nothing is converted to Arrow. The others load through ``datasets``
    (prepared once by the main process under ``main_process_first``, which only wraps the preparation: the blocks
    are then decoded by every process at once)."""
    first = main_process_first if main_process_first is not None else contextlib.nullcontext
    rows: Callable[[int, int], Batch]
    if is_large(spec):
        with first():  # the main process reads the footers first; the others find them in the cache
            shards = shard_set(spec, split)
        size, rows = sum(shards.rows), _shard_rows(shards, pre)
        feat = shards.label_feature
        classes, names = int(feat.num_classes), list(feat.names)
    else:
        with first():
            ds = get_dataset(spec, split)
        transform = pre.transform()
        size, classes, names = len(ds), num_classes(ds), label_names(ds)

        def rows(start: int, end: int) -> Batch:
            return decode_all(ds.select(range(start, end)), transform, desc=desc)

    n = min(n_examples, size)
    if n == 0:
        raise UserError(f"data {spec!r} split {split!r} has no examples to evaluate on")
    start, end = block(n) if block is not None else (0, n)
    x, y = rows(start, end) if end > start else _empty(pre)
    return Examples(x, y, spec, split, classes, names, offset=start, total=n)


def _shard_rows(shards: Any, pre: Preprocessing) -> Callable[[int, int], Batch]:
    """Rows ``[start, end)`` of a streamed split in file order, decoded: only the shards that hold them are read (the
    evaluation subset of a run, or of ``robustify eval``)."""
    store = ShardStore(shards)

    def rows(start: int, end: int) -> Batch:
        return decode_inline(read_rows(store, _first_rows(shards.rows, start, end)), pre)

    return rows


def _empty(pre: Preprocessing) -> Batch:
    return torch.zeros((0, *pre.input_size), dtype=torch.uint8), torch.zeros(0, dtype=torch.long)


def _streamed(cfg: Any, pre: Preprocessing, eval_split: str, eval_examples: int, probe_size: int, probe_split: str,
              seed: int, rank: int, world: int, device: Any = "cpu"):
    """The streaming path: this process's :class:`StreamTrain`, the sizes, the evaluation rows and the probe."""
    from . import shards as sh
    from .shard_cache import ShardCache

    train_set = shard_set(cfg.name, cfg.train_split, cfg.image_column, cfg.label_column, cfg.cache_dir)
    eval_set = shard_set(cfg.name, eval_split, cfg.image_column, cfg.label_column, cfg.cache_dir)
    rows = sh.limit_rows(train_set.rows, cfg.max_train_examples)
    local = local_world_size(world)
    pinned = train_set.remote and str(cfg.shard_cache) != "off"
    cache = None
    if pinned:  # this node's shards, for the whole run
        groups = sh.node_groups(sh.active(rows), world, local, seed, 0, True)
        cache = ShardCache(train_set, groups[rank // sh.group_size(world, local, True)], cfg.cache_dir)
    store = ShardStore(train_set, cache)
    if probe_split == "heldout":
        wanted = sh.probe_rows(rows, probe_size, seed)
        if sum(map(len, wanted.values())) < probe_size or probe_size >= sum(rows):
            raise UserError(f"train.probe_size={probe_size} cannot be held out of {sum(rows)} training examples; use a "
                            f"value between 1 and {sum(rows) - 1}, or train.probe_split=train")
        excluded = {s: set(v) for s, v in wanted.items()}
        rows = [n - len(excluded.get(s, ())) for s, n in enumerate(rows)]
        record = {"probe_split": "heldout", "seed": seed, "train_examples": sum(rows), "probe_examples": probe_size,
                  "rule": "seeded rows of seeded shards (robustify.data.shards.probe_rows)",
                  "probe_rows_sha256": hashlib.sha256(json.dumps(sorted((int(k), v) for k, v in wanted.items()))
                                                      .encode()).hexdigest()[:16]}
    else:
        wanted, excluded = _first_rows(rows, 0, probe_size), {}
        record = {"probe_split": "train", "probe_examples": probe_size, "rule": "first training examples"}
    px, py = decode_inline(read_rows(store, wanted), pre)
    if sh.per_example(rows, world, local, seed, pinned):
        note(f"{len(sh.active(rows))} shard(s) of {cfg.name!r} for {world} processes: too few to give each process "
             "whole shards, so every process reads every shard and keeps its share of the rows")
    window = max(1, -(-cfg.shuffle_buffer // max(1, max(rows))))
    decode = getattr(cfg, "decode", "workers")
    train = StreamTrain(store, pre, cfg.augment, cfg.batch_size, rows, excluded, seed, rank, world, local, window,
                        pinned, cfg.num_workers, decode=decode, device=device)
    n_eval = min(eval_examples, sum(eval_set.rows))
    return train, sum(rows), n_eval, _shard_rows(eval_set, pre), px, py, record


def build_loaders(cfg: Any, data_config: dict, eval_examples: int, probe_size: int, seed: int = 0, rank: int = 0,
                  world_size: int = 1, main_process_first: Callable[[], Any] | None = None,
                  probe_split: str = "train", device: Any = "cpu") -> Loaders:
    """Everything one process needs from the data (see :class:`Loaders` for the contract).

    ``cfg`` is the recipe's ``data`` section (:class:`robustify.config.DataConfig`), ``data_config`` the backbone's
    timm data config (``resolve_data_config``); ``main_process_first`` (e.g. ``accelerator.main_process_first``) lets
    the main process download and prepare a map-style set into the ``datasets`` cache before the others read it.
    ``probe_split="heldout"`` (Rice et al. 2020) takes the probe examples out of training (``robustify.data.heldout``;
    streaming: seeded rows of seeded shards, :func:`robustify.data.shards.probe_rows`, the same at every world size);
    ``"train"`` probes the first training examples. Streaming: the main process reads the shards' footers first.
    ``device``: where ``data.decode=device`` decodes the training JPEGs (the model's device; training batches then
    arrive there rather than on the CPU).
    """
    from .heldout import record as heldout_record
    from .heldout import split_indices

    pre = Preprocessing.from_data_config(data_config, cfg)
    probe_record: dict[str, Any] = {"probe_split": "train", "probe_examples": probe_size,
                                    "rule": "first training examples"}
    streaming = use_streaming(cfg)
    eval_split = cfg.eval_split or default_eval_split(cfg.name)
    if getattr(cfg, "decode", "workers") == "device":  # before any data is read
        from .device_decode import check_plan

        check_plan(cfg.name, streaming, pre.interpolation)
    if streaming:  # the main process reads the shards' footers first (kept in the cache folder for the others)
        with (main_process_first or contextlib.nullcontext)():
            for split in (cfg.train_split, eval_split):
                shard_set(cfg.name, split, cfg.image_column, cfg.label_column, cfg.cache_dir)
    kw = {"image_column": cfg.image_column, "label_column": cfg.label_column, "holdout": cfg.holdout, "seed": 0}
    first = main_process_first if main_process_first is not None else contextlib.nullcontext
    bs = cfg.batch_size
    if streaming and cfg.per_class is not None:
        raise UserError(f"data.per_class={cfg.per_class} needs a map-style data set; {cfg.name!r} streams (set "
                        "data.streaming=false, or take a smaller split)")
    if streaming:
        train, n_train, n_eval, eval_rows, px, py, probe_record = _streamed(cfg, pre, eval_split, eval_examples,
                                                                           probe_size, probe_split, seed, rank,
                                                                           world_size, device)
        n_batches = train.batches_per_epoch
        epoch_index = None
        feat = train.store.shards.label_feature
        n_classes, names = int(feat.num_classes), list(feat.names)
    else:
        with first():
            train_ds = get_dataset(cfg.name, cfg.train_split, **kw)
            eval_ds = get_dataset(cfg.name, eval_split, **kw)
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

        # timm and rrc-flip augment the original image (a random crop of it), so they cannot start from the cache
        in_memory = cfg.augment not in ("timm", "rrc-flip") and _estimated_mb(n_train, pre.input_size) <= cfg.cache_mb
        if in_memory:
            xtr, ytr = decode_all(train_ds, transform)
            train = _MemoryTrain(xtr, ytr, cfg.augment)
        else:
            train = _MapTrain(train_ds, pre, cfg.augment, cfg.num_workers)
        px, py = decode_all(probe_ds, transform)
        n_classes, names = num_classes(train_ds), label_names(train_ds)
    if n_eval == 0:
        raise UserError(f"data {cfg.name!r} split {eval_split!r} is empty; give a split with examples to evaluate on")
    if n_batches == 0:
        raise UserError(f"data.batch_size={bs} x {world_size} process(es) is larger than the training split "
                        f"({n_train} examples); use a smaller batch size")
    # the model, the probe, evaluation and export: the same preprocessing without the training-only policy
    return Loaders(data=cfg.name, train_split=cfg.train_split, eval_split=eval_split,
                   preprocessing=dataclasses.replace(pre, auto_augment=None),
                   num_classes=n_classes, label_names=names, train_size=n_train,
                   eval_size=n_eval, batches_per_epoch=n_batches, probe=(to_unit(px), py), streaming=streaming,
                   _seed=seed, _rank=rank, _world=world_size, _epoch_index=epoch_index, _train=train,
                   _eval_rows=eval_rows, eval_batch_size=cfg.eval_batch_size, probe_record=probe_record)


__all__ = ["Loaders", "build_loaders", "epoch_batches", "use_streaming"]
