"""AWP (train.awp): the weights are perturbed layer-wise by gamma * ||w||, the training gradient is taken there, the
weights come back bit-exactly before the optimizer step; refused with free/deat/natural; its extra pass is in the
cost and the dry-run plan; a 2-process gloo run stays in sync and a resumed run ends bit-identical."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from robustify.cli import main as cli
from robustify.config import MethodConfig, ThreatConfig, build_config
from robustify.recipes import plan
from robustify.train.methods import StepContext, build_method
from robustify.train.options.awp import AWP
from tests.helpers import torchrun

TINY = ["data.max_train_examples=128", "data.batch_size=32", "train.epochs=2", "eval.n_examples=32",
        "eval.pgd_steps=1", "train.probe_size=32", "train.probe_steps=1", "train.log_every=1"]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))


def test_perturbation_is_layerwise_relative_and_restore_is_bit_exact():
    net = _net().train()
    before = copy.deepcopy(net.state_dict())
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    awp = AWP(net, gamma=0.01, warmup_epochs=0, passes=1)
    awp.set_epoch(1)
    awp.perturb(lambda m: F.cross_entropy(m(x), y))
    after = net.state_dict()
    for name, w in before.items():
        if w.ndim > 1:  # weights: moved by exactly gamma * ||w||
            assert float((after[name] - w).norm()) == pytest.approx(0.01 * float(w.norm()), rel=1e-4), name
        else:  # biases, BatchNorm affine and running statistics: untouched, also by the perturbation's forward
            assert torch.equal(after[name], w), name
    awp.restore()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())  # bit-exact, not w + v - v


def test_gradient_is_taken_at_the_perturbed_weights_and_the_step_starts_from_the_clean_ones():
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    method = build_method(MethodConfig(name="pgd", steps=1), ThreatConfig(eps=0.05))
    net = _net().eval()  # eval: no BatchNorm batch statistics, so the reference below is exact
    ref = copy.deepcopy(net)
    awp = AWP(net, gamma=0.02, warmup_epochs=0, passes=1)
    awp.set_epoch(1)
    grads: dict[str, torch.Tensor] = {}

    def optimize(loss: torch.Tensor) -> None:  # what OptimizerStepper does: backward, restore, step
        loss.backward()
        awp.restore()
        for n, p in net.named_parameters():
            grads[n] = p.grad.clone()
            p.data.add_(p.grad, alpha=-0.1)

    ctx = StepContext(model=net, attack_model=net, optimize=optimize, autocast=contextlib.nullcontext,
                      perturb_weights=awp.perturb)
    torch.manual_seed(1)
    x_adv = x + method.step.__globals__["attacks"].pgd(net, x, y, 0.05, method.alpha, 1)  # the same attack
    torch.manual_seed(1)
    method.step(ctx, x, y)
    # reference: v from the gradient at w, the training gradient at w + v
    loss = F.cross_entropy(ref(x_adv), y)
    params = [p for p in ref.parameters() if p.ndim > 1]
    g = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, gi in zip(params, g, strict=True):
            p.add_(gi * (0.02 * p.norm() / (gi.norm() + 1e-12)))
    F.cross_entropy(ref(x_adv), y).backward()
    for n, p in ref.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(grads[n], torch.zeros_like(grads[n]))


def test_warmup_epochs_switch_it_off():
    net = _net()
    before = copy.deepcopy(net.state_dict())
    awp = AWP(net, gamma=0.01, warmup_epochs=2, passes=1)
    awp.set_epoch(2)
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 5, (4,))
    awp.perturb(lambda m: F.cross_entropy(m(x), y))
    assert awp.passes_now == 0 and all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    awp.set_epoch(3)
    assert awp.passes_now == 1


@pytest.mark.parametrize("method", ["free", "deat", "natural"])
def test_refused_with_replay_methods_in_one_line(method, capsys):
    assert cli(["finetune", "--dry-run", "--method", method, "--set", "train.awp=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.awp" in err and method in err and "fgsm-rs" in err


@pytest.mark.parametrize("value", ["train.awp_gamma=0", "train.awp_gamma=2", "train.awp_warmup_epochs=-1"])
def test_bad_values_are_one_line(value, capsys):
    assert cli(["finetune", "--dry-run", "--set", "train.awp=true", "--set", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and value.split("=")[0] in err


def test_dry_run_counts_the_extra_pass():
    base = plan("quickstart").stages[0]
    awp = plan("quickstart", ["train.awp=true", "train.awp_warmup_epochs=2"]).stages[0]
    per_epoch = base.batches_per_epoch * base.global_batch
    assert awp.passes_per_batch == base.passes_per_batch + 1
    assert awp.train_passes == base.train_passes + (awp.data_passes - 2) * per_epoch
    trades = plan("quickstart", ["train.awp=true", "method.loss=trades"]).stages[0]
    assert trades.passes_per_batch == 2 + 2 + 2  # fgsm-rs, TRADES's clean halves, AWP on clean + adversarial


def test_run_counts_cost_and_resumes_exactly(tmp_path: Path):
    from robustify.train.trainer import finetune

    sets = TINY + ["train.awp=true", "train.awp_warmup_epochs=1"]
    straight = tmp_path / "straight"
    metrics = finetune(build_config("quickstart", sets + [f"output_dir={straight}"]))
    n = metrics["history"][0]["opt_steps"]
    assert [h["awp"] for h in metrics["history"]] == [False, True]
    # epoch 1: fgsm-rs's 2 passes; epoch 2: 3 with AWP (n minibatches of 32 each)
    assert metrics["cost"]["example_passes"] == n * 32 * (2 + 3)
    assert metrics["cost"]["passes_per_batch"] == 3
    assert json.loads((straight / "config.json").read_text())["robustness"]["options"]["awp"]["gamma"] == 5e-3
    assert "Adversarial weight perturbation" in (straight / "README.md").read_text()

    resumed = tmp_path / "resumed"
    finetune(build_config("quickstart", sets + [f"output_dir={resumed}", "train.stop_after=1"]))
    finetune(build_config(str(resumed / "recipe.yaml"), ["train.stop_after=null"]), resume=True)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_gloo_run_stays_in_sync(tmp_path: Path):
    run = tmp_path / "run"
    sets = TINY + ["method.steps=1", "method.loss=trades", "train.awp=true", "train.probe_split=train"]
    res = torchrun(["-m", "robustify", "finetune", "--output-dir", str(run), "--method", "pgd",
                    *[a for kv in sets for a in ("--set", kv)]], tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["cost"]["world_size"] == 2 and m["cost"]["ranks_in_sync"] is True
    assert m["cost"]["passes_per_batch"] == 1 + 1 + 2 + 2  # PGD-1 + train + TRADES + TRADES-AWP
