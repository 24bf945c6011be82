"""Shared fixtures. Everything runs offline on CPU; the quickstart run is trained once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a full ``robustify finetune`` quickstart (about 35 s on 2 cores), shared by all tests.

    Tests must not modify it; copy it first (``shutil.copytree``) when a test writes into a run folder.
    """
    from robustify.config import build_config
    from robustify.train.trainer import finetune

    run_dir = tmp_path_factory.mktemp("quickstart") / "run"
    cfg = build_config("quickstart", [f"output_dir={run_dir}"])
    finetune(cfg)
    return run_dir


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps one process-wide state; a test that trains in bf16 or with gradient accumulation must not
    leak those settings into the next test's Accelerator (the process group, PartialState, is kept)."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
