"""An interrupted run continues from its last checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from robustify.config import build_config
from robustify.trainer import finetune

SMALL = ["data.max_train_examples=256", "train.epochs=3", "eval.n_examples=64", "eval.pgd_steps=3",
         "train.probe_size=64", "train.probe_steps=3", "data.batch_size=64"]


def test_resume_continues_an_interrupted_run(tmp_path: Path):
    straight = tmp_path / "straight"
    finetune(build_config("quickstart", SMALL + [f"output_dir={straight}"]))

    run = tmp_path / "interrupted"
    finetune(build_config("quickstart", SMALL + [f"output_dir={run}", "train.stop_after=2"]))
    assert (run / "checkpoints" / "epoch_002").is_dir()
    assert not (run / "model.safetensors").exists()  # nothing exported from an unfinished run

    metrics = finetune(build_config(str(run / "recipe.yaml"), ["train.stop_after=null"]), resume=True)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["cost"]["epochs"] == 3
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["history"] == metrics["history"]
    # the resumed run reproduces the uninterrupted one (same data order, RNG state, optimizer state)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
