"""Streamed data from parquet shards (the Hub's layout: ``data/train-00000-of-00294.parquet``, local parquet files):
what the shards are, reading them, and this process's training batches, decoded with bounded memory.

This module owns the I/O of a streamed split; *which* rows a process reads, in which order, is
:mod:`robustify.data.shards` (pure functions), and the node-local copy of the shards is
:mod:`robustify.data.shard_cache`. It never touches a process group: every process derives everything it needs from
the shards' metadata and (seed, epoch, rank, world size).

- :func:`shard_set`: the split's files, with the rows, bytes and schema of each from the parquet footers (a few KB
  per shard through HTTP ``Range`` requests on the Hub; kept in a small JSON in the cache folder, so the processes
  of a node read each footer once per run), checked: no shards, or shards of different schemas, is one line.
- :class:`ShardStore`: one shard as an Arrow table, from local disk, streamed from the Hub (``HfFileSystem``, one
  GET per shard, nothing on disk) or from the node-local cache (``hf_hub_download``).
- :class:`StreamTrain`: this process's batches of an epoch. The main process reads whole windows of shards (the next
  window in a background thread) and hands the undecoded rows of each batch to a torch ``DataLoader`` whose workers
  decode and augment them. The DataLoader keeps at most ``prefetch_factor`` (2) batches per worker in flight, so
  decoded batches in host memory are bounded whatever the step speed. Written around the DataLoader rather than over
  ``datasets.IterableDataset``: the DataLoader's workers would each read shards of their own (the order would depend
  on the worker count), and a streamed ``IterableDataset`` loses its shuffle buffer on ``load_state_dict`` — the
  resumed epoch would differ from the uninterrupted one. Here the position in an epoch is (window, offset), a pure
  function of the minibatch the trainer checkpointed, so a resumed epoch skips the finished windows without opening
  them and is bit-identical.

Must not: read a shard another process of the node is assigned, or re-read rows already trained on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError, first_line
from . import shards as sh
from .device_decode import EncodedBatch, decode_batch
from .preprocessing import Preprocessing, example_seed, make_example

Batch = tuple[torch.Tensor, torch.Tensor]


def note(msg: str) -> None:
    print(f"robustify: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------- the files
def _hub_repo(spec: str) -> str | None:
    from .sources import ALIASES

    if spec in ALIASES:
        return ALIASES[spec].repo
    if "/" in spec and ":" not in spec and not Path(spec).expanduser().exists():
        return spec
    return None


@functools.lru_cache(maxsize=32)
def _split_files(spec: str, split: str) -> tuple[str, ...]:
    return tuple(split_files_uncached(spec, split))


def split_files(spec: str, split: str) -> list[str]:
    """:func:`split_files_uncached`, once per process (every process of a run lists the same files)."""
    return list(_split_files(spec, split))


def split_files_uncached(spec: str, split: str) -> list[str]:
    """The parquet files of ``split`` (local paths, or ``hf://datasets/REPO@SHA/...`` URLs), through ``datasets``'
    own resolution of a data set's files (split names by the Hub's conventions and synonyms)."""
    import datasets

    from .sources import SPLIT_SYNONYMS, is_gated, local_path

    repo = _hub_repo(spec)
    try:
        if repo is not None:
            builder = datasets.load_dataset_builder(repo)
        elif spec.startswith("parquet:"):
            pattern = str(local_path(spec, "parquet:"))
            if os.path.isdir(pattern):
                builder = datasets.load_dataset_builder("parquet", data_dir=pattern)
            else:
                import glob

                files = sorted(glob.glob(pattern))
                if not files:
                    raise UserError(f"data {spec!r}: no file matches {pattern!r}; give parquet:FILE, a glob or a "
                                    "folder")
                return files if split == "train" else []
        else:
            raise UserError(f"data {spec!r} cannot be streamed: streaming reads parquet shards (a Hub data set or "
                            "parquet:PATH); set data.streaming=false")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets/hub raise many types; reported in one line
        if is_gated(e):
            raise UserError(f"data set {repo!r} is gated: request access at https://huggingface.co/datasets/{repo} "
                            "with your account, then log in with 'hf auth login' (or set HF_TOKEN)") from None
        raise UserError(f"data {spec!r}: its files could not be listed: {first_line(e)}") from None
    data_files = builder.config.data_files or {}
    by_name = {str(k): [str(f) for f in v] for k, v in data_files.items()}
    for s in SPLIT_SYNONYMS.get(split, (split,)):
        if s in by_name:
            files = by_name[s]
            bad = [f for f in files if not f.endswith(".parquet")]
            if bad:
                raise UserError(f"data {spec!r} split {s!r}: {Path(bad[0]).name!r} is not a parquet shard; streaming "
                                "reads parquet (the Hub's refs/convert/parquet revision has it for most sets), or set "
                                "data.streaming=false")
            return files
    if not by_name:
        raise UserError(f"data {spec!r} has no data files (no shards); give a data set with parquet shards")
    raise UserError(f"data {spec!r} has no split {split!r}; splits there: {', '.join(by_name)}")


def _hffs():
    from huggingface_hub import HfFileSystem

    return HfFileSystem()


def _footer(path: str, remote: bool) -> tuple[int, int, Any]:
    """(rows, bytes, arrow schema) of one parquet file from its footer only: local, or two ranged HTTP reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = Path(path).name
    try:
        if remote:  # one ranged read of the file's tail holds the footer (a second one when it is longer)
            fs = _hffs()
            size = int(fs.info(path)["size"])
            start = max(0, size - 64 * 1024)
            tail = fs.cat_file(path, start=start, end=size)
            if size < 12 or tail[-4:] != b"PAR1":
                raise ValueError("no parquet footer (truncated or not parquet)")
            n = struct.unpack("<I", tail[-8:-4])[0]
            if n + 12 > size:
                raise ValueError("footer longer than the file (truncated)")
            if n + 8 > len(tail):
                tail = fs.cat_file(path, start=size - 8 - n, end=size)
            meta = pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-8 - n:]))
        else:
            size = os.path.getsize(path)
            meta = pq.read_metadata(path)
    except FileNotFoundError:
        raise UserError(f"shard {name!r} ({path}) does not exist") from None
    except Exception as e:  # noqa: BLE001 - pyarrow/fsspec raise many types
        raise UserError(f"shard {name!r} is not a readable parquet file ({first_line(e)}); re-upload or remove "
                        "it") from None
    return int(meta.num_rows), int(size), meta.schema.to_arrow_schema()


def cache_root(cache_dir: str | None) -> Path:
    """Where robustify keeps shard metadata and (node-local cache) shards: ``data.cache_dir`` or the HF datasets
    cache."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE)


@dataclass
class ShardSet:
    """A split's shards and what their footers say; ``image_column``/``label_column`` are the files' own names."""

    spec: str
    split: str
    files: list[str]
    rows: list[int]
    nbytes: list[int]
    features: Any
    image_column: str
    label_column: str

    @property
    def remote(self) -> bool:
        return any(f.startswith("hf://") for f in self.files)

    def name(self, i: int) -> str:
        return Path(self.files[i]).name

    @property
    def offsets(self) -> list[int]:
        """Each shard's first global row id (what seeds a row's augmentation)."""
        return np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(int).tolist() if self.rows else []

    @property
    def label_feature(self):
        return self.features[self.label_column]


def _metadata(spec: str, split: str, files: list[str], remote: bool, cache_dir: str | None) -> list[dict[str, Any]]:
    """Footers of every shard, kept in ``<cache>/robustify-shards/<hash>.json`` (Hub URLs carry the commit, local files
    their size and mtime, so the record never goes stale)."""
    from ..fileio import atomic_write_json

    ident = files if remote else [f"{f}:{os.path.getsize(f)}:{os.path.getmtime(f)}" for f in files if os.path.exists(f)]
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:20]
    path = cache_root(cache_dir) / "robustify-shards" / f"{key}.json"
    if path.is_file():
        try:
            got = json.loads(path.read_text())
            if [m["file"] for m in got] == files:
                return got
        except (OSError, ValueError, KeyError):
            pass
    with ThreadPoolExecutor(8 if remote else 1, thread_name_prefix="robustify-footers") as pool:
        footers = list(pool.map(lambda f: _footer(f, remote), files))
    out = [{"file": f, "rows": rows, "bytes": size, "schema": schema.serialize().to_pybytes().hex()}
           for f, (rows, size, schema) in zip(files, footers, strict=True)]
    with contextlib.suppress(OSError):  # a read-only cache: the footers are read again next time
        atomic_write_json(path, out)
    return out


def shard_set(spec: str, split: str, image_column: str | None = None, label_column: str | None = None,
              cache_dir: str | None = None) -> ShardSet:
    """The shards of a streamed split, checked (at least one; one schema for all; an image and a ClassLabel column)."""
    import datasets
    import pyarrow as pa

    from .sources import pick_columns

    files = split_files(spec, split)
    if not files:
        raise UserError(f"data {spec!r} split {split!r} has no shards (no parquet files); give a split with data")
    remote = any(f.startswith("hf://") for f in files)
    meta = _metadata(spec, split, files, remote, cache_dir)
    schemas = [pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(m["schema"]))) for m in meta]
    feats = datasets.Features.from_arrow_schema(schemas[0])
    img, lab = pick_columns(feats, spec, image_column, label_column)
    want = schemas[0].remove_metadata()
    for f, sch in zip(files, schemas, strict=True):
        got = sch.remove_metadata()
        if not got.equals(want):
            differ = sorted(set(map(str, got)) ^ set(map(str, want)))
            raise UserError(f"shard {Path(f).name!r} has a different schema from {Path(files[0]).name!r} "
                            f"({'; '.join(differ)[:200]}); every shard of a split must have the same columns")
    if not isinstance(feats[lab], datasets.ClassLabel):
        raise UserError(f"data {spec!r}: label column {lab!r} is a plain integer, not a ClassLabel, so the number of "
                        "classes is unknown while streaming; set data.streaming=false")
    return ShardSet(spec, split, files, [m["rows"] for m in meta], [m["bytes"] for m in meta], feats, img, lab)


# --------------------------------------------------------------------------------------------------- reading
class ShardStore:
    """One shard as an Arrow table of its image and label columns: local files as they are; Hub shards streamed (one
    GET, nothing written) or, with ``cache``, through the node-local cache (:mod:`robustify.data.shard_cache`)."""

    def __init__(self, shards: ShardSet, cache: Any = None) -> None:
        self.shards, self.cache = shards, cache

    def table(self, i: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path, cols = self.shards.files[i], [self.shards.image_column, self.shards.label_column]
        try:
            if self.cache is not None and path.startswith("hf://"):
                source: Any = self.cache.local_path(i)
            elif path.startswith("hf://"):
                with _hffs().open(path, "rb", block_size=0) as f:  # one streamed GET of the whole shard
                    source = pa.BufferReader(f.read())
            else:
                source = path
            table = pq.read_table(source, columns=cols)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - pyarrow/fsspec raise many types
            raise UserError(f"shard {self.shards.name(i)!r} could not be read ({first_line(e)}); it may be "
                            "truncated: re-download or remove it") from None
        if table.num_rows != self.shards.rows[i]:
            raise UserError(f"shard {self.shards.name(i)!r} has {table.num_rows} rows but its footer said "
                            f"{self.shards.rows[i]}; it changed while reading")
        return table

    def rows(self, i: int, table, rows) -> list[tuple[dict, int, str]]:
        """Undecoded rows (image {bytes, path}, label, where) of shard ``i``."""
        img, lab = table.column(self.shards.image_column), table.column(self.shards.label_column)
        name = self.shards.name(i)
        return [(img[int(r)].as_py(), lab[int(r)].as_py(), f"{name} row {int(r)}") for r in rows]


def read_rows(store: ShardStore, wanted: dict[int, list[int]]) -> list[tuple[dict, int, str]]:
    """The undecoded rows ``{shard: [rows]}``, in shard then row order (the probe; the evaluation subset)."""
    out: list[tuple[dict, int, str]] = []
    for i in sorted(wanted):
        out += store.rows(i, store.table(i), wanted[i])
    return out


# --------------------------------------------------------------------------------------------------- decoding
_DECODE: dict[str, Any] = {}


def decode_rows(keys: list[tuple[dict, int, int, str]], record: dict, augment: str,
                decode: str = "workers") -> tuple[Any, Any, str]:
    """Decode and augment a batch of undecoded rows (image, label, seed, where): (x, y, "") or, for a row that cannot
    be used, (None, None, one line naming it), raised as a :class:`UserError` by the main process (an exception inside
    a DataLoader worker would come back as a traceback). ``decode="device"`` (rrc-flip only): x is an
    :class:`~robustify.data.device_decode.EncodedBatch` (boxes, flips and JPEG bytes) for the main process to decode
    on the accelerator."""
    import datasets

    key = repr(record)
    if _DECODE.get("key") != key:
        _DECODE.update(key=key, pre=Preprocessing.from_record(record), transforms={}, image=datasets.Image())
    pre, transforms, image = _DECODE["pre"], _DECODE["transforms"], _DECODE["image"]
    encoded = EncodedBatch([], [], [], [], tuple(pre.input_size[1:]), pre.interpolation) if decode == "device" else None
    xs, ys = [], []
    for value, label, seed, where in keys:
        if label is None or int(label) < 0:
            return None, None, f"{where} has label {label}: unlabelled examples; labels must be class indices 0..K-1"
        try:
            if encoded is not None:
                encoded.add(value, seed, where)
            else:  # rrc-flip decodes the cell itself, at reduced size where the crop allows
                img = value if augment == "rrc-flip" else image.decode_example(value)
                xs.append(make_example(img, pre, augment, seed, transforms))
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken image
            return None, None, f"{where}: the image cannot be decoded ({first_line(e)}); remove or fix that row"
        ys.append(int(label))
    return encoded if encoded is not None else torch.stack(xs), torch.tensor(ys, dtype=torch.long), ""


def decode_inline(rows: list[tuple[dict, int, str]], pre: Preprocessing) -> Batch:
    """Rows decoded in this process without augmentation (uint8), as evaluation and the probe need them."""
    if not rows:
        c, h, w = pre.input_size
        return torch.empty((0, c, h, w), dtype=torch.uint8), torch.empty((0,), dtype=torch.long)
    x, y, err = decode_rows([(v, lab, 0, where) for v, lab, where in rows], pre.record(), "none")
    if err:
        raise UserError(err)
    return x, y


class _DecodeRows(torch.utils.data.Dataset):
    """The DataLoader's data set: a "key" is a whole batch of undecoded rows, decoded in a worker (``__getitems__``)."""

    def __init__(self, record: dict, augment: str, decode: str = "workers") -> None:
        self.record, self.augment, self.decode = record, augment, decode

    def __len__(self) -> int:  # never used for sampling: the batch sampler hands out the rows themselves
        return 0

    def __getitem__(self, key):
        raise TypeError("_DecodeRows is read in whole batches")

    def __getitems__(self, keys: list) -> tuple[Any, Any, str]:
        return decode_rows(keys, self.record, self.augment, self.decode)


def _whole(batch):
    return batch


class _RowBatches(torch.utils.data.Sampler):
    """The batch sampler: yields this epoch's batches of undecoded rows, set before each pass; counts what it handed
    out so that the number of batches in flight (handed out, not yet consumed) can be checked."""

    def __init__(self) -> None:
        self.source: Iterator[list] = iter(())
        self.handed = 0

    def __iter__(self):
        for keys in self.source:
            self.handed += 1
            yield keys

    def __len__(self) -> int:
        return 0


@dataclass
class StreamTrain:
    """This process's training batches of a streamed split (see the module docstring and :mod:`.shards`)."""

    store: ShardStore
    pre: Preprocessing
    augment: str
    batch_size: int
    shard_rows: list[int]  # rows to train on per shard (after the limit and the probe)
    excluded: dict[int, set[int]]
    seed: int
    rank: int
    world: int
    local_world: int
    window: int
    pinned: bool
    num_workers: int
    prefetch: int = 2
    decode: str = "workers"  # data.decode: workers | device (rrc-flip's JPEGs decoded on ``device``: device_decode.py)
    device: Any = "cpu"
    peak_in_flight: int = 0  # most decoded (or decoding) batches at once, seen so far
    windows_opened: list[tuple[int, ...]] = field(default_factory=list)
    _loader: Any = None

    @property
    def batches_per_epoch(self) -> int:
        return sh.batches_per_epoch(self.shard_rows, self.batch_size, self.world, self.local_world, self.seed,
                                    self.pinned)

    def plan(self, epoch: int) -> list[sh.Window]:
        return sh.epoch_plan(self.shard_rows, self.world, self.rank, self.seed, epoch, self.batch_size, self.window,
                             self.local_world, self.pinned, self.excluded)

    def _windows(self, plan: list[sh.Window], first: int) -> Iterator[tuple[sh.Window, dict[int, Any]]]:
        """The windows from ``first`` on with their tables; the next window loads in a background thread."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="robustify-shards")

        def load(w: sh.Window) -> dict[int, Any]:
            return {i: self.store.table(i) for i in w.shards}

        try:
            ahead: Future | None = pool.submit(load, plan[first]) if first < len(plan) else None
            for k in range(first, len(plan)):
                tables = ahead.result()
                ahead = pool.submit(load, plan[k + 1]) if k + 1 < len(plan) else None
                self.windows_opened.append(plan[k].shards)
                yield plan[k], tables
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _keys(self, epoch: int, start_batch: int) -> Iterator[list]:
        plan = self.plan(epoch)
        first, offset = sh.locate(plan, start_batch * self.batch_size)
        offsets = self.store.shards.offsets
        img_col, lab_col = self.store.shards.image_column, self.store.shards.label_column
        name = self.store.shards.name
        chunk: list = []
        for w, tables in self._windows(plan, first):
            cols = {i: (t.column(img_col), t.column(lab_col)) for i, t in tables.items()}
            for s, r in w.order[offset:]:
                s, r = int(s), int(r)
                img, lab = cols[s]
                chunk.append((img[r].as_py(), lab[r].as_py(), example_seed(self.seed, epoch, offsets[s] + r),
                              f"{name(s)} row {r}"))
                if len(chunk) == self.batch_size:
                    yield chunk
                    chunk = []
            offset = 0
            del tables, cols

    def _make_loader(self) -> torch.utils.data.DataLoader:
        workers = max(0, self.num_workers)
        kw: dict[str, Any] = {"prefetch_factor": self.prefetch, "persistent_workers": True} if workers else {}
        # its own generator: starting workers must not draw from (and shift) the global RNG that attacks use
        return torch.utils.data.DataLoader(_DecodeRows(self.pre.record(), self.augment, self.decode),
                                           batch_sampler=_RowBatches(),
                                           num_workers=workers, collate_fn=_whole,
                                           pin_memory=torch.cuda.is_available(),
                                           generator=torch.Generator().manual_seed(0), **kw)

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        if self._loader is None:
            self._loader = self._make_loader()
        sampler: _RowBatches = self._loader.batch_sampler
        sampler.source, sampler.handed = self._keys(epoch, start_batch), 0
        for consumed, (x, y, err) in enumerate(self._loader):
            self.peak_in_flight = max(self.peak_in_flight, sampler.handed - consumed)
            if err:
                raise UserError(err)
            yield (decode_batch(x, self.device) if isinstance(x, EncodedBatch) else x), y

    def position(self, epoch: int, start_batch: int) -> dict[str, Any]:
        """Where this process's stream stands before minibatch ``start_batch`` of ``epoch``: the window to open, the
        shard and row read next, and a digest of the epoch's whole row order (the shuffle state, a pure function of
        (seed, epoch, rank, world)). Stored in every checkpoint and checked on resume
        (``train.trainer.check_stream_position``)."""
        plan = self.plan(epoch)
        first, offset = sh.locate(plan, start_batch * self.batch_size)
        order = hashlib.sha256(b"".join(w.order.astype(np.int64).tobytes() for w in plan)).hexdigest()[:16]
        nxt = None
        if first < len(plan):
            shard, row = (int(v) for v in plan[first].order[offset])
            nxt = {"shard": self.store.shards.name(shard), "row": row}
        return {"epoch": epoch, "batch": start_batch, "rank": self.rank, "world": self.world,
                "local_world": self.local_world, "pinned": self.pinned, "window": first, "windows": len(plan),
                "window_shards": [self.store.shards.name(int(s)) for s in plan[first].shards] if nxt else [],
                "next": nxt, "order_sha256_16": order}


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def bytes_plan(cfg: Any, epochs: int, seed: int = 0, world: int | None = None, local_world: int | None = None
               ) -> str:
    """What the dry run says about a streamed split: shards, bytes per node (downloaded once into the node-local
    cache, or streamed every epoch), the disk the cache needs. World size: ``WORLD_SIZE``/``LOCAL_WORLD_SIZE`` when set
    (under torchrun/accelerate), else one node with one process per GPU (at least one)."""
    from .shard_cache import hub_cache_dir

    if world is None:
        world = int(os.environ.get("WORLD_SIZE") or max(1, torch.cuda.device_count()))
    local = local_world or local_world_size(world)
    try:
        train = shard_set(cfg.name, cfg.train_split, cfg.image_column, cfg.label_column, cfg.cache_dir)
    except UserError as e:
        return f"streaming {cfg.name}: shard sizes not known ({e})"
    rows = sh.limit_rows(train.rows, cfg.max_train_examples)
    pinned = train.remote and str(cfg.shard_cache) != "off"
    nodes = world // sh.group_size(world, local, True)
    total = sum(train.nbytes[s] for s in sh.active(rows))
    head = (f"streaming {cfg.name}/{cfg.train_split}: {len(train.files)} shards, {sum(rows):,} rows, "
            f"{_size(total)}; {nodes} node(s) x {local} process(es)")
    if sh.per_example(rows, world, local, seed, pinned):
        head += " (too few shards: every process reads every shard of its group and keeps its share of the rows)"
    if not train.remote:
        return head + ": local files, read in place"
    per_node = []
    for n in range(nodes):
        ranks = range(n * local, (n + 1) * local)
        if pinned:
            group = sh.node_groups(sh.active(rows), world, local, seed, 0, True)[n if nodes > 1 else 0]
            per_node.append(sum(train.nbytes[s] for s in group))
        else:
            opened = [{s for r in ranks for s in sh.process_shards(rows, world, r, seed, e, local)[0]}
                      for e in range(1, epochs + 1)]
            per_node.append(sum(train.nbytes[s] for o in opened for s in o))
    most = max(per_node)
    if pinned:
        return (head + f": each node downloads at most {_size(most)} once (node-local cache in "
                f"{hub_cache_dir(cfg.cache_dir)}, needs that much free disk), then every epoch reads from disk")
    return head + (f": each node streams at most {_size(most)} over {epochs} epoch(s) "
                   f"(~{_size(most / max(1, epochs))} per epoch), nothing on disk (data.shard_cache=off)")


def local_world_size(world: int) -> int:
    """Processes per node: torchrun/accelerate's ``LOCAL_WORLD_SIZE``, else the whole world (one node)."""
    try:
        lw = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        lw = world
    return lw if 0 < lw <= world and world % lw == 0 else world


__all__ = ["ShardSet", "ShardStore", "StreamTrain", "bytes_plan", "decode_inline", "local_world_size", "read_rows",
           "shard_set", "split_files"]
