"""Training that goes wrong is stopped, not exported: non-finite or exploding loss, NaN weights (exit status 3)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from robustify.cli import main
from robustify.config import build_config
from robustify.train.divergence import DivergenceGuard, TrainingDiverged, likely_cause
from tests.helpers import fake_checkpoint


def _guard(tmp_path: Path, *overrides: str) -> DivergenceGuard:
    return DivergenceGuard(build_config("quickstart", list(overrides)), tmp_path, num_classes=10)


def test_finite_loss_and_weights_pass(tmp_path: Path):
    g = _guard(tmp_path)
    g.check_loss(torch.tensor(2.3 * 64), 64, step=5, epoch=1)
    g.check_model(torch.nn.Linear(3, 2), step=5, epoch=1)


@pytest.mark.parametrize("loss_sum,needle", [
    (float("nan"), "the training loss is nan"),
    (float("inf"), "the training loss is inf"),
    (1e6 * 64, "the mean training loss reached 1e+06"),  # above 50 x ln(10): diverging, though finite
])
def test_bad_loss_stops_naming_step_value_and_cause(tmp_path: Path, loss_sum: float, needle: str):
    fake_checkpoint(tmp_path, 1)
    with pytest.raises(TrainingDiverged) as err:
        _guard(tmp_path, "schedule.lr=5").check_loss(torch.tensor(loss_sum), 64, step=17, epoch=2, lr=4.5)
    msg = str(err.value)
    assert msg.startswith("training diverged at epoch 2, optimizer step 17, lr 4.5: ") and needle in msg
    assert "learning rate is too high (schedule.lr=5" in msg
    assert "Nothing was exported" in msg and "ckpt_000000001 is kept" in msg
    assert err.value.exit_code == 3


def test_nan_weights_are_never_probed_or_selected(tmp_path: Path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[1].running_var.fill_(float("nan"))  # a buffer: the probe's logits would be NaN, "accuracy" meaningless
    with pytest.raises(TrainingDiverged, match=r"1 weight tensor\(s\) hold NaN/inf \(first: 1.running_var\)"):
        _guard(tmp_path).check_model(model, step=3, epoch=1)


def test_likely_causes():
    assert "free AT's carried perturbation" in likely_cause(build_config("quickstart", ["method.name=free"]))
    assert "momentum close to 1" in likely_cause(build_config("quickstart", ["optim.momentum=0.995"]))
    assert "learning rate is nan" in likely_cause(build_config("quickstart"), lr=math.nan)


def test_a_diverging_quickstart_stops_nonzero_and_exports_nothing(tmp_path: Path, capsys):
    run = tmp_path / "run"
    code = main(["finetune", "--output-dir", str(run), "--epochs", "2", "--set", "schedule.lr=1e6",
                 "--set", "train.log_every=2", "--set", "data.max_train_examples=256", "--set", "eval.n_examples=32",
                 "--set", "train.probe_size=32", "--set", "train.probe_steps=2", "--set", "eval.pgd_steps=2"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("robustify: error:")]
    assert code == 3 and len(lines) == 1, err
    assert "training diverged at epoch 1, optimizer step " in lines[0] and "learning rate is too high" in lines[0]
    assert "Traceback" not in err
    for name in ("model.safetensors", "README.md", "metrics.json", "config.json"):
        assert not (run / name).exists(), name
