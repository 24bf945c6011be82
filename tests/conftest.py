"""Shared fixtures. Everything runs offline on CPU; the quickstart run is trained once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: each worker (and every process a test launches, which inherits this)
    # uses one thread, so the workers never oversubscribe the cores
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _shared(tmp_path_factory: pytest.TempPathFactory, name: str, make) -> Path:
    """A folder made once per test session, also under pytest-xdist: the workers share the session's base temp
    folder's parent, and the first to arrive makes the folder under a file lock while the others wait for it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder every worker's base temp folder lives in
    folder = root / f"shared-{name}"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not (folder / "done").exists():
            if folder.exists():
                import shutil

                shutil.rmtree(folder)  # a worker that died half-way
            folder.mkdir()
            make(folder)
            (folder / "done").write_text("")
    return folder


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a full ``robustify finetune`` quickstart (about 35 s on 2 cores), shared by all tests.

    Tests must not modify it; copy it first (``shutil.copytree``) when a test writes into a run folder.
    """
    from robustify.config import build_config
    from robustify.train.trainer import finetune

    def make(folder: Path) -> None:
        finetune(build_config("quickstart", [f"output_dir={folder / 'run'}"]))

    return _shared(tmp_path_factory, "quickstart", make) / "run"


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps one process-wide state; a test that trains in bf16 or with gradient accumulation must not
    leak those settings into the next test's Accelerator (the process group, PartialState, is kept)."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


TINY = ["data.max_train_examples=128", "train.epochs=2", "eval.n_examples=32", "eval.pgd_steps=1",
        "train.probe_size=32", "train.probe_steps=1", "data.batch_size=64", "train.log_every=1"]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two finished tiny quickstart runs (different seeds, so different weights and numbers; two checkpoints each),
    made once per test session for the integrity and fault tests. Copy them before changing anything."""
    from robustify.config import build_config
    from robustify.train.trainer import finetune

    def make(folder: Path) -> None:
        for seed in (0, 1):
            finetune(build_config("quickstart", TINY + [f"train.seed={seed}", f"output_dir={folder / f'run{seed}'}"]))

    folder = _shared(tmp_path_factory, "tiny", make)
    return folder / "run0", folder / "run1"
