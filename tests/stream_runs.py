"""Driver for the streamed-data tests at real shapes (tests/test_data_scale.py): run in a fresh interpreter, because
``huggingface_hub`` reads ``HF_ENDPOINT`` at import.

``python -m tests.stream_runs SPEC.json`` starts a :class:`tests.hub_server.LocalHub`, uploads a parquet folder to it
as a Hub data set, then, for each world size asked for, forks that many processes that join a gloo process group,
build robustify's loaders on the Hub data set (streamed over HTTP), read epochs, and gather what each process read:
the rows (their labels are their global row ids), the shards it opened, and the bytes the server sent between the
phases (setup, epoch 1, epoch 2). Prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any


def _child(rank: int, world: int, port: int, spec: dict[str, Any], url: str, out: str) -> None:
    import torch.distributed as dist

    os.environ["LOCAL_WORLD_SIZE"] = str(spec.get("local_world", world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    import urllib.request

    from robustify.config import DataConfig
    from robustify.data import build_loaders

    def served() -> int:
        with urllib.request.urlopen(f"{url}/_test/bytes-served") as r:
            return sum(json.loads(r.read()).values())

    @contextlib.contextmanager
    def main_first():
        if rank != 0:
            dist.barrier()
        yield
        if rank == 0:
            dist.barrier()

    cfg = DataConfig(**spec["data"])
    dist.barrier()
    before = served() if rank == 0 else 0
    loaders = build_loaders(cfg, {"input_size": (3, 16, 16)}, spec.get("eval_examples", 8), spec["probe_size"],
                            seed=spec.get("seed", 0), rank=rank, world_size=world, main_process_first=main_first,
                            probe_split=spec.get("probe_split", "heldout"))
    marks = []
    dist.barrier()
    marks.append(served() if rank == 0 else 0)
    dist.barrier()  # nobody reads on before rank 0 has the count
    epochs = []
    for epoch in range(1, spec.get("epochs", 1) + 1):
        train = loaders._train
        opened = len(train.windows_opened)
        ys = [y.tolist() for _, y in loaders.train_epoch(epoch)]
        shards = sorted({s for w in train.windows_opened[opened:] for s in w})
        epochs.append({"rows": [r for b in ys for r in b], "batches": len(ys), "shards": shards})
        dist.barrier()
        marks.append(served() if rank == 0 else 0)
        dist.barrier()
    mine = {"rank": rank, "epochs": epochs, "probe": loaders.probe[1].tolist(), "n_batches": loaders.batches_per_epoch,
            "train_size": loaders.train_size, "eval": loaders.eval_examples(rank, world)[1].tolist(),
            "peak_in_flight": loaders._train.peak_in_flight}
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        Path(out).write_text(json.dumps({"processes": gathered, "bytes": [before] + marks}))
    dist.barrier()
    dist.destroy_process_group()


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    from tests.hub_server import LocalHub

    hub = LocalHub(Path(spec["hub_root"]))
    url = hub.start()
    os.environ.update(HF_ENDPOINT=url, HF_TOKEN=hub.token, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                      HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    import datasets
    import torch.multiprocessing as mp
    from huggingface_hub import HfApi

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0.0
    hub.seed_repo(spec["repo"], Path(spec["folder"]), repo_type="dataset")
    results: dict[str, Any] = {"files": HfApi().list_repo_files(spec["repo"], repo_type="dataset"), "runs": {}}
    import socket

    import timm.data  # noqa: F401 - imported once here, before the fork, not in every process

    import robustify.data  # noqa: F401

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    if spec.get("expect_error"):  # one process, in this interpreter: the one-line error a user would see
        from robustify.config import DataConfig
        from robustify.data import build_loaders
        from robustify.errors import UserError

        try:
            loaders = build_loaders(DataConfig(**spec["data"]), {"input_size": (3, 16, 16)}, 4, spec["probe_size"])
            list(loaders.train_epoch(1))
            results["error"] = None
        except UserError as e:
            results["error"] = str(e)
        hub.stop()
        print(json.dumps(results))
        return
    import time

    results["seconds"] = {}
    for world in spec["worlds"]:
        t0 = time.perf_counter()
        out = Path(spec["out"]) / f"world{world}.json"
        before = hub.served()
        mp.start_processes(_child, args=(world, free_port(), spec, url, str(out)), nprocs=world, start_method="fork")
        got = json.loads(out.read_text())
        got["total_bytes"] = hub.served() - before
        results["runs"][str(world)] = got
        results["seconds"][str(world)] = time.perf_counter() - t0
    results["served"] = dict(hub.bytes_served)
    hub.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
