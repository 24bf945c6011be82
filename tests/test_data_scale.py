"""Data at the dimensions users run: ImageNet's 294 training shards on 3, 4, 8 and 16 processes (and nodes of 8),
the held-out probe at every world size, bounded decoded batches, and a 294-shard stand-in streamed over HTTP from the
test Hub server by gloo process groups of 3, 4 and 8 (see docs/data-at-scale.md)."""

from __future__ import annotations

from pathlib import Path

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


# ------------------------------------------------------------------------------------------ over HTTP, gloo
N_SHARDS, ROWS_PER_SHARD, N_VAL_SHARDS = 294, 2, 14


def _jpeg_shards(folder, split: str, n_shards: int, first_id: int, n_classes: int) -> None:
    """``n_shards`` parquet files in the Hub layout, each ROWS_PER_SHARD tiny JPEG rows whose label is the row's
    global id (so a test can tell exactly which rows a process trained on)."""
    import io

    import datasets
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(first_id)
    n = n_shards * ROWS_PER_SHARD
    images = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        images.append({"bytes": buf.getvalue(), "path": None})
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=n_classes)})
    table = datasets.Dataset.from_dict({"image": images, "label": list(range(first_id, first_id + n))},
                                       features=feats).data.table
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for k in range(n_shards):
        pq.write_table(table.slice(k * ROWS_PER_SHARD, ROWS_PER_SHARD),
                       str(folder / "data" / f"{split}-{k:05d}-of-{n_shards:05d}.parquet"))


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> Path:
    """A 294-shard train split and a 14-shard validation split, ImageNet's file layout on the Hub."""
    folder = tmp_path_factory.mktemp("in1k-294")
    n_train = N_SHARDS * ROWS_PER_SHARD
    _jpeg_shards(folder, "train", N_SHARDS, 0, n_train)
    _jpeg_shards(folder, "validation", N_VAL_SHARDS, 0, n_train)
    return folder


def stream_runs(tmp_path: Path, folder: Path, worlds: list[int], **spec) -> dict:
    """tests/stream_runs.py in a fresh interpreter (huggingface_hub reads HF_ENDPOINT at import)."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    full = {"hub_root": str(tmp_path / "hub"), "repo": "ILSVRC/imagenet-1k", "folder": str(folder), "worlds": worlds,
            "out": str(tmp_path), "probe_size": 8, "epochs": 2, **spec}
    full["data"] = {"name": "imagenet-1k", "batch_size": 4, "num_workers": 0, "shuffle_buffer": 4,
                    "cache_dir": str(tmp_path / "cache"), **spec.get("data", {})}
    (tmp_path / "spec.json").write_text(json.dumps(full))
    dropped = ("HF_", "HUGGINGFACE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(dropped)}
    env.update(HF_HOME=str(tmp_path / "home"), NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(root),
               TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-m", "tests.stream_runs", str(tmp_path / "spec.json")], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _split_bytes(folder: Path, split: str) -> int:
    return sum(f.stat().st_size for f in (folder / "data").glob(f"{split}-*.parquet"))


def test_294_shards_streamed_over_http_at_world_3_4_8(imagenet_like: Path, tmp_path: Path):
    """Streamed from the test Hub over HTTP (HfFileSystem), gloo groups of 1, 3, 4 and 8 processes: every process
    gets whole shards and the same batches, nothing is read twice, the probe is the same held-out rows at every world
    size, and each epoch the server sends about the split once in all (not once per process)."""
    out = stream_runs(tmp_path, imagenet_like, [1, 3, 4, 8], data={"shard_cache": "off"})
    split = _split_bytes(imagenet_like, "train")
    probes = set()
    for world, run in out["runs"].items():
        procs = run["processes"]
        assert len(procs) == int(world)
        probe = sorted(procs[0]["probe"])
        assert len(probe) == 8 and all(sorted(p["probe"]) == probe for p in procs)
        probes.add(tuple(probe))
        for e in range(2):
            rows = [p["epochs"][e]["rows"] for p in procs]
            shards = [set(p["epochs"][e]["shards"]) for p in procs]
            assert len({len(r) for r in rows}) == 1 and all(p["epochs"][e]["batches"] == p["n_batches"] for p in procs)
            flat = [r for rs in rows for r in rs]
            assert len(flat) == len(set(flat)) and not set(flat) & set(probe)  # nothing twice; the probe held out
            assert all(not a & b for i, a in enumerate(shards) for b in shards[i + 1:])  # whole shards per process
            # every shard a process trained on is one it opened, and only its own
            assert all({r // ROWS_PER_SHARD for r in rs} <= s for rs, s in zip(rows, shards, strict=True))
            per_epoch = run["bytes"][e + 2] - run["bytes"][e + 1]
            assert 0.9 * split <= per_epoch <= split, (world, e, per_epoch, split)  # about 1x the split in all
        assert set(procs[0]["epochs"][0]["rows"]) != set(procs[0]["epochs"][1]["rows"]) or world == "1"
    assert len(probes) == 1  # the same held-out rows at every world size
    w8 = out["runs"]["8"]["processes"]
    assert {len(p["epochs"][0]["shards"]) for p in w8} <= {36, 37}


def _cfg(folder: Path, **kw):
    from robustify.config import DataConfig

    return DataConfig(**{"name": f"parquet:{folder / 'data'}", "batch_size": 4, "num_workers": 0,
                         "shuffle_buffer": 4, "eval_split": "validation", **kw})


@pytest.mark.parametrize("streaming", ["true", "false"])
def test_probe_is_held_out_of_every_process_at_world_1_3_4_8(imagenet_like: Path, streaming: str):
    """The held-out probe is disjoint from every training row of every process, and the same rows, at world sizes
    1, 3, 4 and 8, streamed and map-style; the batch count is computed after the probe is removed."""
    from robustify.data import build_loaders

    probes = set()
    for world in (1, 3, 4, 8):
        trained: list[int] = []
        counts = set()
        for rank in range(world):
            loaders = build_loaders(_cfg(imagenet_like, streaming=streaming), {"input_size": (3, 16, 16)}, 4, 8,
                                    seed=5, rank=rank, world_size=world, probe_split="heldout")
            probe = tuple(sorted(loaders.probe[1].tolist()))
            probes.add(probe)
            assert loaders.train_size == N_SHARDS * ROWS_PER_SHARD - 8
            ys = [y for _, y in loaders.train_epoch(1)]
            counts.add(len(ys))
            assert len(ys) == loaders.batches_per_epoch
            trained += [int(v) for y in ys for v in y]
        assert len(counts) == 1 and len(trained) == len(set(trained))
        assert not set(trained) & set(next(iter(probes)))
        assert len(trained) >= loaders.train_size - world * (4 + (2 * ROWS_PER_SHARD if streaming == "true" else 0))
    assert len(probes) == 1 and len(next(iter(probes))) == 8



def test_decoded_batches_in_flight_are_bounded_with_a_slow_consumer(imagenet_like: Path):
    """Two decode workers and a consumer far slower than them: at most prefetch_factor (2) batches per worker are
    ever handed out ahead of the consumer (counted, not timed), and they are handed out (the bound is reached)."""
    import time

    from robustify.data import build_loaders

    cfg = _cfg(imagenet_like, streaming="true", num_workers=2, batch_size=2)
    loaders = build_loaders(cfg, {"input_size": (3, 16, 16)}, 4, 4, seed=0)
    train = loaders._train
    ahead = []
    for k, _ in enumerate(loaders.train_epoch(1)):
        time.sleep(0.02)  # a slow step: the workers could decode the whole epoch meanwhile if nothing bounded them
        ahead.append(train._loader.batch_sampler.handed - (k + 1))
        if k == 40:
            break
    assert max(ahead) <= 2 * 2 and train.peak_in_flight <= 2 * 2 + 1
    assert max(ahead) == 2 * 2 - 1 or max(ahead) == 2 * 2  # the workers did run ahead, as far as allowed


def test_resumed_epoch_skips_finished_windows_unopened(imagenet_like: Path):
    """start_batch=k opens only the windows from the one holding batch k on, and yields the uninterrupted tail."""
    import torch

    from robustify.data import build_loaders
    from robustify.data import shards as sh

    loaders = build_loaders(_cfg(imagenet_like, streaming="true", augment="flip-crop"), {"input_size": (3, 16, 16)},
                            4, 4, seed=1, rank=1, world_size=3)
    train = loaders._train
    full = list(loaders.train_epoch(2))
    k = len(full) // 2
    train.windows_opened.clear()
    tail = list(loaders.train_epoch(2, start_batch=k))
    plan = train.plan(2)
    first, _ = sh.locate(plan, k * 4)
    assert first > 0 and train.windows_opened == [w.shards for w in plan[first:]]
    assert len(tail) == len(full) - k
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[k:], tail, strict=True))


@pytest.fixture(scope="module")
def quickstart_shards(tmp_path_factory) -> Path:
    """The quickstart digits as parquet shards (8 train, 2 test), the Hub's file layout."""
    from robustify.data import get_dataset

    folder = tmp_path_factory.mktemp("qs-shards")
    for split, n in (("train", 8), ("test", 2)):
        ds = get_dataset("quickstart", split)
        for k in range(n):
            ds.shard(n, k, contiguous=True).to_parquet(str(folder / f"{split}-{k:05d}-of-{n:05d}.parquet"))
    return folder


def test_killed_streaming_run_resumes_mid_epoch_to_identical_weights(quickstart_shards: Path, tmp_path: Path):
    """kill -9 right after a mid-epoch checkpoint of a streamed run; --resume ends with bit-identical weights to the
    uninterrupted run (the position in the epoch comes from the checkpointed minibatch; finished windows are not
    read again)."""
    import json
    import signal
    import subprocess
    import sys

    from robustify.cli import main as cli
    from robustify.config import build_config
    from robustify.train.checkpoint import checkpoint_dirs
    from robustify.train.trainer import finetune
    from tests.test_resume import KILL_SCRIPT, SMALL, _same_weights

    sets = SMALL + [f"data.name=parquet:{quickstart_shards}", "data.streaming=true", "data.eval_split=test",
                    "data.num_workers=0", "data.shuffle_buffer=64", "train.checkpoint_every=2"]
    straight = tmp_path / "straight"
    finetune(build_config("quickstart", sets + [f"output_dir={straight}"]))
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), "SIGKILL", "2", *sets], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    state = json.loads((checkpoint_dirs(run)[-1] / "trainer_state.json").read_text())
    assert state["batch"] > 0
    # the checkpoint holds the process's position in its stream (window, next shard and row, the epoch's row order),
    # which the resume checks against the position it continues from
    from safetensors import safe_open

    with safe_open(str(checkpoint_dirs(run)[-1] / "method_rank0.safetensors"), framework="pt") as f:
        position = json.loads(f.metadata()["stream_position"])
    assert (position["epoch"], position["batch"]) == (state["epoch"] + 1, state["batch"])
    assert position["next"]["shard"].endswith(".parquet") and position["next"]["row"] >= 0
    assert len(position["order_sha256_16"]) == 16 and position["window_shards"]
    assert cli(["finetune", "--output-dir", str(run), "--resume"]) == 0
    _same_weights(straight, run)


def test_node_local_cache_downloads_each_shard_once_per_node(imagenet_like: Path, tmp_path: Path):
    """Two nodes of two processes with the node-local cache: each node downloads only its own shards (disjoint from
    the other node's), through hf_hub_download, at most once: epoch 2 reads from disk all it read in epoch 1 and
    downloads only the few shards no process of the node had opened yet (each process stops at its batch count)."""
    out = stream_runs(tmp_path, imagenet_like, [4], local_world=2, data={"shard_cache": "node"})
    run, split = out["runs"]["4"], _split_bytes(imagenet_like, "train")
    procs = run["processes"]
    epoch1, epoch2 = run["bytes"][2] - run["bytes"][1], run["bytes"][3] - run["bytes"][2]
    assert 0.8 * split <= epoch1 and epoch1 + epoch2 <= split and epoch2 < 0.1 * split, (epoch1, epoch2, split)
    nodes = [set().union(*(set(p["epochs"][e]["shards"]) for p in procs[n * 2:(n + 1) * 2] for e in range(2)))
             for n in range(2)]
    assert not nodes[0] & nodes[1]  # a node's shards stay on that node for the whole run
    first = [set(p["epochs"][0]["shards"]) for p in procs]
    second = [set(p["epochs"][1]["shards"]) for p in procs]
    assert first != second  # inside a node the shards move between its processes from epoch to epoch
    assert list((tmp_path / "cache").glob("datasets--ILSVRC--imagenet-1k/blobs/*"))
    assert not list((tmp_path / "cache").rglob("*.incomplete"))


def test_dry_run_states_bytes_per_node(monkeypatch):
    """ImageNet's 294 shards of ~0.48 GB on 4 nodes of 8: with the cache each node downloads about a quarter of the
    split once; pure streaming reads about a quarter of the split per node every epoch."""
    from robustify.config import DataConfig
    from robustify.data import stream

    fake = stream.ShardSet("imagenet-1k", "train", [f"hf://datasets/ILSVRC/imagenet-1k@abc/data/train-{k:05d}.parquet"
                                                    for k in range(294)], IMAGENET_ROWS, [480_000_000] * 294, None,
                           "image", "label")
    monkeypatch.setattr(stream, "shard_set", lambda *a, **k: fake)
    cached = stream.bytes_plan(DataConfig(name="imagenet-1k"), epochs=16, world=32, local_world=8)
    assert "294 shards, 1,280,932 rows, 141.12 GB; 4 node(s) x 8 process(es)" in cached
    assert "each node downloads at most 35.52 GB once" in cached  # 74 of the 294 shards
    streamed = stream.bytes_plan(DataConfig(name="imagenet-1k", shard_cache="off"), epochs=2, world=32, local_world=8)
    assert "nothing on disk" in streamed and "over 2 epoch(s)" in streamed


# ------------------------------------------------------------------------------------------------ bad input
def _small_shards(folder: Path, n: int = 3) -> Path:
    _jpeg_shards(folder, "train", n, 0, 64)
    _jpeg_shards(folder, "test", 1, 0, 64)
    return folder / "data"


def _load(folder: Path, probe_split: str = "heldout", **kw):
    from robustify.config import DataConfig
    from robustify.data import build_loaders

    cfg = DataConfig(**{"name": f"parquet:{folder}", "streaming": "true", "batch_size": 2, "num_workers": 0,
                        "eval_split": "test", "cache_dir": str(folder.parent / "meta"), **kw})
    loaders = build_loaders(cfg, {"input_size": (3, 16, 16)}, 2, 1, probe_split=probe_split)
    return list(loaders.train_epoch(1))


def test_bad_shards_are_one_line_naming_the_file(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from robustify.errors import UserError

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"parquet:.*empty"):
        _load(tmp_path / "empty")
    # shards of different schemas
    folder = _small_shards(tmp_path / "schemas")
    odd = folder / "train-00001-of-00003.parquet"
    pq.write_table(pq.read_table(odd).append_column("extra", pa.array([1] * ROWS_PER_SHARD)), str(odd))
    with pytest.raises(UserError, match=r"shard 'train-00001-of-00003.parquet' has a different schema"):
        _load(folder)
    # a truncated shard
    folder = _small_shards(tmp_path / "truncated")
    cut = folder / "train-00002-of-00003.parquet"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(UserError, match=r"shard 'train-00002-of-00003.parquet' is not a readable parquet file"):
        _load(folder)
    # an unreadable image in one row: the error names the file and the row, raised by the main process
    folder = _small_shards(tmp_path / "row")
    bad = folder / "train-00002-of-00003.parquet"  # the probe is shard 0's first row: this one fails in training
    table = pq.read_table(bad)
    images = table.column("image").to_pylist()
    images = [{"bytes": b"\xff\xd8 not a jpeg", "path": None}] * len(images)
    pq.write_table(table.set_column(0, "image", pa.array(images, type=table.schema.field("image").type)), str(bad))
    for workers in (0, 2):
        with pytest.raises(UserError, match=r"train-00002-of-00003.parquet row \d: the image cannot be decoded"):
            _load(folder, num_workers=workers, batch_size=1, probe_split="train")


def test_a_cache_that_cannot_fit_is_one_line_before_any_download(imagenet_like: Path, tmp_path: Path):
    """A real small disk (a 1 MB tmpfs; needs root, as CI runs) as data.cache_dir: the free-space check stops before
    downloading anything, in one line naming the folder and the sizes; nothing is left in the cache."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        out = stream_runs(tmp_path, imagenet_like, [], expect_error=True,
                          data={"shard_cache": "node", "cache_dir": str(mount)})
        err = out["error"]
        assert err and "\n" not in err and "node-local shard cache needs" in err and str(mount) in err, err
        assert "data.shard_cache=off" in err
        assert not list(mount.rglob("*.parquet")) and not list(mount.rglob("*.incomplete"))
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_bench_decode_figures_compare_the_pipelines_on_the_same_files(tmp_path: Path):
    """`robustify bench --data imagenet-like` makes its stand-ins and reports every pipeline (no timing asserted)."""
    import json

    from robustify.bench.data_pipeline import imagenet_like_jpegs
    from robustify.cli import main

    files = imagenet_like_jpegs(2)
    assert all(b[:2] == b"\xff\xd8" for b in files)
    assert main(["bench", "--data", "imagenet-like", "--data-images", "2", "--output", str(tmp_path / "d.json")]) == 0
    report = json.loads((tmp_path / "d.json").read_text())
    names = [r["pipeline"] for r in report["pipelines"]]
    assert len(names) == 8 and names[0].startswith("bare JPEG decode") and report["image_size"] == [500, 375]
    assert "torchvision" in names[1]
    assert any("rrc-flip" in n for n in names)
    assert report["pipelines"][0]["vs_bare_decode"] == 1.0


def test_rrc_flip_streams_uint8_batches_that_resume_exactly(imagenet_like: Path):
    """augment: rrc-flip on the streamed path: uint8 batches at the input size, a pure function of (seed, epoch),
    and start_batch=k yields exactly the uninterrupted epoch's tail."""
    import torch

    from robustify.data import build_loaders

    loaders = build_loaders(_cfg(imagenet_like, streaming="true", augment="rrc-flip"), {"input_size": (3, 16, 16)},
                            4, 4, seed=3, rank=0, world_size=4)
    full = list(loaders.train_epoch(1))
    assert full and all(x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, 16, 16) for x, _ in full)
    again = list(loaders.train_epoch(1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again, strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, loaders.train_epoch(2), strict=False))
    k = len(full) // 2
    tail = list(loaders.train_epoch(1, start_batch=k))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[k:], tail, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_rrc_flip_decoded_on_the_device_is_the_workers_batch(imagenet_like: Path, workers: int):
    """data.decode=device: the workers only draw the crop and flip and pass the JPEG bytes; the main process decodes,
    crops, resizes and flips on the model's device. On the CPU that is the workers' own torch path, so every batch of
    an epoch (and of a resumed epoch) is bit-identical to data.decode=workers; the batches arrive on the device."""
    import torch

    from robustify.data import build_loaders

    def batches(decode: str, start: int = 0) -> list:
        loaders = build_loaders(_cfg(imagenet_like, streaming="true", augment="rrc-flip", decode=decode,
                                     num_workers=workers), {"input_size": (3, 16, 16)}, 4, 4, seed=3, rank=1,
                                world_size=3, device=torch.device("cpu"))
        return list(loaders.train_epoch(2, start_batch=start))

    ref, dev = batches("workers"), batches("device")
    assert len(ref) == len(dev) > 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, dev, strict=True))
    assert all(x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16) and x.device.type == "cpu" for x, _ in dev)
    tail = batches("device", start=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ref[2:], tail, strict=True))


def test_device_decode_mixes_in_rows_the_device_cannot_decode_and_names_a_broken_one():
    """A PNG or CMYK row is decoded by the worker (the same crop and flip as the CPU route), a grayscale JPEG by the
    device; a JPEG that cannot be decoded is one line naming its row; large crops (which the CPU route decodes at
    reduced size) see what the CPU route sees; the refusals name the setting."""
    import io

    import torch
    from PIL import Image

    from robustify.bench.data_pipeline import imagenet_like_jpegs
    from robustify.config import ConfigError, FinetuneConfig, validate
    from robustify.data.device_decode import (
        EncodedBatch,
        _chunks,
        check_decoder,
        check_device,
        check_plan,
        decode_batch,
    )
    from robustify.data.preprocessing import rrc_flip
    from robustify.errors import UserError

    jpegs = imagenet_like_jpegs(3, seed=4, size=(64, 48))
    png, cmyk, gray = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.open(io.BytesIO(jpegs[0])).save(png, format="PNG")
    Image.open(io.BytesIO(jpegs[1])).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    Image.open(io.BytesIO(jpegs[2])).convert("L").save(gray, format="JPEG", quality=90)
    cells = [jpegs[0], png.getvalue(), cmyk.getvalue(), jpegs[2], gray.getvalue()]
    batch = EncodedBatch([], [], [], [], (40, 40), "bilinear")
    for i, b in enumerate(cells):
        batch.add({"bytes": b, "path": None}, seed=i, where=f"shard row {i}")
    assert sorted(batch.decoded) == [1, 2] and batch.data[1] is None and isinstance(batch.data[4], bytes)
    out = decode_batch(batch, "cpu")
    for i, b in enumerate(cells):
        assert torch.equal(out[i], rrc_flip(Image.open(io.BytesIO(b)), (40, 40), "bilinear", i, data=b)), i
    assert _chunks([0, 3], batch.pixels, 64 * 48) == [[0], [3]] and _chunks([0, 3], batch.pixels, 10**6) == [[0, 3]]
    assert torch.equal(decode_batch(batch, "cpu", budget=1), out)  # one image at a time: the same pixels
    # crops at least twice the output: the CPU route decodes at reduced size, the device at full size
    large = imagenet_like_jpegs(8, seed=1, size=(1000, 750))
    big = EncodedBatch([], [], [], [], (112, 112), "bilinear")
    for i, b in enumerate(large):
        big.add({"bytes": b, "path": None}, seed=i, where=f"row {i}")
    full = decode_batch(big, "cpu")
    for i, b in enumerate(large):
        cpu = rrc_flip(Image.open(io.BytesIO(b)), (112, 112), "bilinear", i, data=b)
        assert (full[i].float() - cpu.float()).abs().mean().item() < 1.0
    broken = EncodedBatch([], [], [], [], (40, 40), "bilinear")
    broken.add({"bytes": jpegs[0], "path": None}, 0, "train-00003-of-00294.parquet row 0")
    broken.add({"bytes": jpegs[1][:len(jpegs[1]) // 2], "path": None}, 1, "train-00003-of-00294.parquet row 1")
    with pytest.raises(UserError) as e:
        decode_batch(broken, "cpu")
    assert "train-00003-of-00294.parquet row 1" in str(e.value) and "\n" not in str(e.value)
    assert "truncated" in str(e.value) and ".cpp" not in str(e.value), str(e.value)
    cfg = FinetuneConfig()
    cfg.data.decode = "device"
    with pytest.raises(ConfigError, match="data.decode=device .* data.augment='none'"):
        validate(cfg)
    # what the decode needs of the data is its own check (device_decode.check_plan), asked by the preflight with the
    # recipe's values and by build_loaders with the resolved ones: the config leaves it alone
    cfg.data.augment, cfg.data.streaming, cfg.data.interpolation = "rrc-flip", "false", "nearest"
    validate(cfg)
    with pytest.raises(UserError, match="applies to streamed data sets; 'quickstart' is read map-style"):
        check_plan("quickstart", False, "bilinear")
    with pytest.raises(UserError, match="antialiased 'nearest'"):
        check_plan("imagenet-1k", True, "nearest")
    with pytest.raises(UserError, match="antialiased 'nearest'"):
        check_decoder("nearest")
    with pytest.raises(UserError, match="decodes on a CUDA GPU; this run is on cpu"):
        check_device("cpu")


def test_device_decode_refuses_a_map_style_set(imagenet_like: Path):
    from robustify.data import build_loaders
    from robustify.errors import UserError

    with pytest.raises(UserError, match="data.decode=device applies to streamed data sets"):
        build_loaders(_cfg(imagenet_like, streaming="false", augment="rrc-flip", decode="device"),
                      {"input_size": (3, 16, 16)}, 4, 4)


def test_rrc_flip_torch_path_sees_what_pil_sees():
    """Where no DCT reduction applies (500x375 JPEGs to 224 px, the common ImageNet case) rrc-flip decodes with
    torchvision and resizes with torch's antialiased uint8 kernel: the same crop and flip as the PIL reference, within
    a tenth of a level per pixel on average (measured: at most 0.05), for bilinear and bicubic."""
    import io

    import torch
    from PIL import Image

    from robustify.bench.data_pipeline import imagenet_like_jpegs
    from robustify.data.preprocessing import make_example, rrc_flip

    files = imagenet_like_jpegs(12, seed=2)
    for interpolation in ("bilinear", "bicubic"):
        for i, b in enumerate(files):
            fast = rrc_flip(Image.open(io.BytesIO(b)), (224, 224), interpolation, i, data=b)
            ref = rrc_flip(Image.open(io.BytesIO(b)), (224, 224), interpolation, i, draft=False)
            assert fast.dtype == ref.dtype and fast.shape == ref.shape == (3, 224, 224) and fast.is_contiguous()
            assert (fast.float() - ref.float()).abs().mean().item() < 0.1
    # what a decode worker runs on a data set's cell takes that path, and an undecodable JPEG falls back to PIL
    from robustify.data import Preprocessing

    pre = Preprocessing(input_size=(3, 224, 224), interpolation="bilinear", crop_pct=0.875)
    cell = make_example({"bytes": files[0], "path": None}, pre, "rrc-flip", 0, {})
    assert torch.equal(cell, rrc_flip(Image.open(io.BytesIO(files[0])), (224, 224), "bilinear", 0, data=files[0]))
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(files[0])).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    out = make_example({"bytes": cmyk.getvalue(), "path": None}, pre, "rrc-flip", 0, {})
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8


def test_rrc_flip_reduced_decoding_sees_what_the_full_decode_sees():
    """Where PIL's reduced-size JPEG decoding applies (a crop at least twice the output size), the model sees the
    same image as from the full decode: the mean absolute difference stays under 1 of 255 levels per pixel, on
    ImageNet-like JPEGs (1000x750, quality 90) cropped to 112 px; and the crop and flip are the same draws."""
    import io

    from PIL import Image

    from robustify.bench.data_pipeline import imagenet_like_jpegs
    from robustify.data.preprocessing import rrc_flip, rrc_params

    files = imagenet_like_jpegs(24, seed=1, size=(1000, 750))
    reduced, diffs = 0, []
    for i, b in enumerate(files):
        lazy = Image.open(io.BytesIO(b))
        (_, _, h, w), _ = rrc_params(lazy, i)
        fast = rrc_flip(Image.open(io.BytesIO(b)), (112, 112), "bilinear", i)
        full = rrc_flip(Image.open(io.BytesIO(b)), (112, 112), "bilinear", i, draft=False)
        assert fast.shape == full.shape == (3, 112, 112)
        reduced += min(h, w) >= 224
        diffs.append((fast.float() - full.float()).abs().mean().item())
    assert reduced >= 6  # the draws did reach the reduced decode often enough to test it
    assert max(diffs) < 1.0, diffs  # measured: 0.18-0.65


def test_resume_refuses_a_stream_position_that_moved():
    """The checkpointed stream position must be where the resumed stream continues (same world size); at another
    world size the rest of the epoch is assigned afresh, so positions are not compared."""
    from types import SimpleNamespace

    from robustify.errors import UserError
    from robustify.train.trainer import check_stream_position

    saved = {"epoch": 2, "batch": 3, "rank": 0, "world": 4, "next": {"shard": "train-00007.parquet", "row": 5}}
    moved = SimpleNamespace(stream_position=lambda e, b: dict(saved, next={"shard": "train-00008.parquet", "row": 0}))
    state, acc = SimpleNamespace(epoch=1, batch=3), SimpleNamespace(process_index=0, num_processes=1)
    with pytest.raises(UserError, match="stream position in ckpt_000000010 .*train-00008") as e:
        check_stream_position(saved, moved, state, acc, Path("ckpt_000000010"))
    assert "\n" not in str(e.value)
    check_stream_position(dict(saved, world=8), moved, state, acc, Path("ckpt_000000010"))
    check_stream_position(dict(saved, local_world=2), moved, state, acc, Path("ckpt_000000010"))  # another node layout
    same = SimpleNamespace(stream_position=lambda e, b: dict(saved))
    check_stream_position(saved, same, state, acc, Path("ckpt_000000010"))


def test_dry_run_says_the_gpu_decodes():
    from robustify.recipes import dry_run

    text = dry_run("imagenet-resnet50-linf4-fgsm-rs", ["data.decode=device"])
    assert "check: data.decode=device: the training JPEGs are decoded on the GPU" in text
    assert "data.decode=device" not in dry_run("imagenet-resnet50-linf4-fgsm-rs", [])
