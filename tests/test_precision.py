"""Evaluation is always fp32, whatever the training precision, and says so."""

from __future__ import annotations

from pathlib import Path

import robustify
from robustify.config import build_config
from robustify.evaluate.kernel import sharded_pgd_accuracy
from robustify.evaluate.report import load_examples
from robustify.train.trainer import finetune

TINY = ["data.max_train_examples=128", "train.epochs=1", "eval.n_examples=64", "eval.pgd_steps=2",
        "train.probe_size=32", "train.probe_steps=2", "data.batch_size=64"]


def test_bf16_training_reports_fp32_evaluation(tmp_path: Path):
    run = tmp_path / "run"
    metrics = finetune(build_config("quickstart", TINY + ["train.mixed_precision=bf16", f"output_dir={run}"]))
    assert metrics["cost"]["training_precision"] == "bf16"
    assert metrics["before"]["precision"] == metrics["after"]["precision"] == "fp32"
    # an independent fp32 measurement of the exported weights gives exactly the published numbers
    model = robustify.load(str(run))
    ex = load_examples("quickstart", "test", 64, model, progress=False)
    again = sharded_pgd_accuracy(model, ex.x, ex.y, 0.1, steps=2, seed=0, batch_size=256, progress=False)
    assert (again["clean_acc"], again["pgd_acc"]) == (metrics["after"]["clean_acc"], metrics["after"]["pgd_acc"])
