"""Epsilon warm-up (threat.eps_warmup_fraction): the training eps ramps linearly from 0 to eps over that share of a
stage, alpha with it; the probe and every evaluation keep the full eps; the ramp is in history.json and the card, and
a resumed run ramps exactly as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustify.cli import main as cli
from robustify.config import MethodConfig, ThreatConfig, build_config
from robustify.errors import ConfigError
from robustify.train.methods import build_method
from robustify.train.options import eps_warmup
from tests.helpers import step_context

TINY = ["data.max_train_examples=128", "data.batch_size=32", "train.epochs=2", "eval.n_examples=32",
        "eval.pgd_steps=1", "train.probe_size=32", "train.probe_steps=1", "train.log_every=1"]


def test_factor_ramps_linearly_then_stays_at_one():
    assert eps_warmup.factor(0.0, 0.0) == 1.0  # off: the full eps from the first step
    assert eps_warmup.factor(0.5, 0.0) == 0.0
    assert eps_warmup.factor(0.5, 0.25) == pytest.approx(0.5)
    assert eps_warmup.factor(0.5, 0.5) == 1.0 and eps_warmup.factor(0.5, 0.9) == 1.0
    # minibatch 2 of epoch 2 in a stage of 4 epochs x 4 minibatches: 6 of 16 done
    assert eps_warmup.stage_progress(2, 2, 4, 4) == pytest.approx(6 / 16)


@pytest.mark.parametrize("alpha", [None, 0.05])
def test_scaled_step_passes_the_scaled_eps_and_alpha_into_the_step(alpha):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    method = build_method(MethodConfig(name="fgsm-rs", alpha=alpha), ThreatConfig(eps=0.1))
    seen: list[torch.Tensor] = []
    forward = model.forward
    model.forward = lambda x: (seen.append(x.detach().clone()), forward(x))[1]
    x = torch.rand(16, 3, 8, 8) * 0.5 + 0.25  # far from the image box: nothing is clipped
    y = torch.randint(0, 4, (16,))
    threat, cfg = method.threat, method.cfg
    ctx = step_context(model, [])
    with eps_warmup.scaled(ctx, 0.25):  # the share travels on the step's context, into the method's step
        assert method.budget(ctx) == pytest.approx((0.025, 0.25 * (alpha if alpha is not None else 0.125)))
        method.step(ctx, x, y)
    assert ctx.eps_share == 1.0 and method.budget(ctx) == pytest.approx((0.1, alpha or 0.125))
    assert method.threat is threat and method.cfg is cfg and threat.eps == 0.1  # the method itself never changed
    trained_on = seen[-1]
    assert (trained_on - x).abs().max() <= 0.025 + 1e-6  # the training perturbation stayed in the scaled ball
    assert (trained_on - x).abs().max() > 0.01


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "x"])
def test_bad_fraction_is_one_line(value, capsys):
    if value in ("nan", "x"):
        with pytest.raises(ConfigError):
            build_config("quickstart", [f"threat.eps_warmup_fraction={value}"])
        return
    assert cli(["finetune", "--dry-run", "--set", f"threat.eps_warmup_fraction={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "threat.eps_warmup_fraction" in err and "[0, 1]" in err


def test_run_ramps_records_and_resumes_exactly(tmp_path: Path):
    from robustify.train.trainer import finetune

    sets = TINY + ["threat.eps_warmup_fraction=0.5"]
    straight = tmp_path / "straight"
    metrics = finetune(build_config("quickstart", sets + [f"output_dir={straight}"]))
    eps = 0.1  # the quickstart's eps; n minibatches per epoch, 2n in the run, the ramp over the first n
    history = json.loads((straight / "history.json").read_text())
    n = history[0]["opt_steps"]
    assert n >= 2
    assert [h["train_eps_start"] for h in history] == pytest.approx([0.0, eps])
    assert [h["train_eps"] for h in history] == pytest.approx([eps * (n - 1) / n, eps])
    assert metrics["after"]["pgd"]["eps"] == pytest.approx(eps)  # evaluation at the full eps
    card = (straight / "README.md").read_text()
    assert "Epsilon warm-up" in card and "over the first 50% of each stage" in card
    assert json.loads((straight / "config.json").read_text())["robustness"]["options"]["eps_warmup_fraction"] == 0.5

    resumed = tmp_path / "resumed"
    finetune(build_config("quickstart", sets + [f"output_dir={resumed}", "train.stop_after=1"]))
    finetune(build_config(str(resumed / "recipe.yaml"), ["train.stop_after=null"]), resume=True)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "history.json").read_text())[1]["train_eps"] == pytest.approx(eps)
