"""The methods and options beyond the seeds: N-FGSM, DEAT (M+), TRADES, weight averaging, the held-out probe split,
LAMB/LARS and DDP gradient compression. Each test checks the option's defining semantics."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from robustify.config import FinetuneConfig, MethodConfig, ThreatConfig, build_config
from robustify.errors import ConfigError, UserError
from robustify.train.checkpoint import checkpoint_dirs
from robustify.train.methods import build_method
from robustify.train.methods.trades import kl_to_clean, trades_loss
from tests.helpers import Recorder, step_context, torchrun


def _mid_batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs in [0.4, 0.6], so the [0,1] box never clips a perturbation of up to 0.3."""
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 0.2 * torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


# ------------------------------------------------------------------------------------------------------ N-FGSM
def test_n_fgsm_noise_spans_twice_eps_and_the_step_is_not_projected():
    eps = 0.05
    method = build_method(MethodConfig(name="n-fgsm"), ThreatConfig(eps=eps))
    assert method.alpha == eps and method.passes_per_batch == 2  # the cost of FGSM-RS
    x, y = _mid_batch(64)
    torch.manual_seed(0)
    # with a zero input gradient the perturbation is the noise alone: uniform over [-2 eps, 2 eps]
    noise = method.perturbation(step_context(Recorder(zero=True), []), x, y)
    assert noise.abs().max() <= 2 * eps + 1e-6
    assert noise.max() > 1.9 * eps and noise.min() < -1.9 * eps  # wider than the eps-ball FGSM-RS starts in
    assert (noise.abs() > eps).float().mean() > 0.4  # ~half the coordinates lie outside the eps-ball

    torch.manual_seed(0)
    model, steps = Recorder(), []
    method.step(step_context(model, steps), x, y)
    assert len(steps) == 1 and len(model.inputs) == 2  # one attack forward, one training forward
    delta = model.inputs[-1] - x
    # no projection back to the eps-ball: noise (up to 2 eps) + a step of alpha = eps reaches up to 3 eps
    assert delta.abs().max() > 2.5 * eps and delta.abs().max() <= 3 * eps + 1e-6
    assert (delta.abs() > eps + 1e-6).float().mean() > 0.4


def test_n_fgsm_without_noise_is_plain_fgsm():
    method = build_method(MethodConfig(name="n-fgsm", noise_factor=0.0), ThreatConfig(eps=0.05))
    x, y = _mid_batch(8)
    model = Recorder()
    delta = method.perturbation(step_context(model, []), x, y)
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)[0]
    assert torch.allclose(delta, 0.05 * grad.sign())  # one signed step of alpha = eps from the clean input


def test_n_fgsm_keeps_inputs_in_the_image_box():
    method = build_method(MethodConfig(name="n-fgsm", noise_factor=2.0), ThreatConfig(eps=0.2))
    x = torch.rand(8, 3, 8, 8)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    model = Recorder()
    method.step(step_context(model, []), x, torch.zeros(8, dtype=torch.long))
    assert model.inputs[-1].min() >= 0 and model.inputs[-1].max() <= 1


# -------------------------------------------------------------------------------------------------------- DEAT
def test_deat_strength_follows_the_m_plus_criterion_and_is_restored():
    method = build_method(MethodConfig(name="deat", max_strength=3, gamma=1.0), ThreatConfig(eps=0.05))
    x, y = _mid_batch(8)
    model, steps = Recorder(), []
    ctx = step_context(model, steps)
    method.step(ctx, x, y)
    assert len(steps) == 1 and method.passes_per_batch == 1  # strength 1: one replay, one optimizer step
    assert method.grad_mag is not None and float(method.grad_mag) > 0  # G accumulates |input gradient|

    def end_epoch(g: float) -> dict:
        method.grad_mag = torch.tensor(g)
        return method.on_epoch_end(0)

    assert end_epoch(10.0)["strength"] == 1 and method.strength == 2  # after the first epoch: two replays
    assert end_epoch(10.0)["strength"] == 2 and method.threshold == 10.0  # the second epoch sets the threshold
    assert end_epoch(9.0)["strength"] == 2 and method.strength == 2  # G below gamma * G_ref: no change
    saved = copy.deepcopy(method.state_dict())
    assert end_epoch(11.0)["strength"] == 2 and method.strength == 3 and method.threshold == 11.0  # G passed it
    assert end_epoch(50.0)["strength"] == 3 and method.strength == 3  # capped at max_strength

    steps.clear()
    method.step(ctx, x, y)
    assert len(steps) == 3 and method.passes_per_batch == 3  # one optimizer step (and pass) per replay

    resumed = build_method(MethodConfig(name="deat", max_strength=3), ThreatConfig(eps=0.05))
    resumed.load_state_dict(saved)
    assert (resumed.strength, resumed.threshold) == (2, 10.0)
    resumed.grad_mag = torch.tensor(11.0)
    assert resumed.on_epoch_end(0)["grad_magnitude"] == 11.0 and resumed.strength == 3  # same decision as before


def test_deat_strength_and_the_weight_average_survive_resume(tmp_path: Path):
    from robustify.train.trainer import finetune

    run = tmp_path / "run"
    sets = ["method.name=deat", "train.epochs=3", "train.ema=true", "data.max_train_examples=256",
            "train.probe_size=32", "train.probe_steps=2", "eval.n_examples=32", "eval.pgd_steps=2",
            "train.probe_split=train", f"output_dir={run}"]
    finetune(build_config("quickstart", [*sets, "train.stop_after=2"]))
    m = finetune(build_config("quickstart", [*sets, "train.stop_after=null"]), resume=True)
    # epoch 1 at one replay, then two; a fresh method object on resume would have gone back to one
    assert [h["strength"] for h in m["history"]] == [1, 2, 2]
    assert json.loads((run / "history.json").read_text())[2]["strength"] == 2
    # the average was restored too: it has seen every optimizer step of both invocations
    last = checkpoint_dirs(run)[-1]
    assert torch.load(last / "custom_checkpoint_0.pkl", weights_only=True)["updates"] == m["cost"]["optimizer_steps"]


# ------------------------------------------------------------------------------------------------------ TRADES
def test_trades_attacks_the_kl_and_trains_on_clean_ce_plus_beta_kl():
    threat = ThreatConfig(eps=0.05)
    method = build_method(MethodConfig(name="fgsm-rs", loss="trades", beta=3.0), threat)
    assert method.passes_per_batch == 4  # clean target forward + attack + clean and perturbed training passes
    pgd = build_method(MethodConfig(name="pgd", steps=3, loss="trades"), threat)
    assert pgd.passes_per_batch == 3 + 1 + 2
    x, y = _mid_batch(8)
    torch.manual_seed(0)
    model = Recorder()
    loss_fn, target = method.attack_objective(step_context(model, []), x, y)
    assert loss_fn is kl_to_clean and torch.allclose(target, F.softmax(model(x), 1))  # KL against f(x), no labels

    before = copy.deepcopy(model)
    model.inputs.clear()
    res = method.step(step_context(model, []), x, y)
    trained = model.inputs[-1]
    assert trained.shape[0] == 16 and torch.equal(trained[:8], x)  # clean and perturbed inputs, one forward
    x_adv = trained[8:]
    assert 0 < (x_adv - x).abs().max() <= 0.05 + 1e-6
    with torch.no_grad():
        expected = F.cross_entropy(before(x), y) + 3.0 * F.kl_div(F.log_softmax(before(x_adv), 1),
                                                                  F.softmax(before(x), 1), reduction="batchmean")
    assert torch.allclose(res.loss, expected, atol=1e-5)
    assert torch.allclose(trades_loss(before(x), before(x), y, 3.0), F.cross_entropy(before(x), y))  # KL(p||p) = 0


def test_trades_needs_an_attack_based_method():
    with pytest.raises(ConfigError, match="method.loss='trades'"):
        build_config("quickstart", ["method.name=free", "method.loss=trades"])
    with pytest.raises(ConfigError, match="method.loss"):
        build_config("quickstart", ["method.loss=mart"])


# ----------------------------------------------------------------------------------- EMA + n-fgsm end to end
def test_n_fgsm_run_gets_robust_and_exports_the_weight_average(tmp_path: Path):
    from robustify.train.trainer import finetune

    run = tmp_path / "run"
    cfg = build_config("quickstart", ["method.name=n-fgsm", "train.epochs=3", "train.ema=true", "train.select=last",
                                      "train.probe_size=64", "train.probe_steps=3", "eval.n_examples=100",
                                      "eval.pgd_steps=5", f"output_dir={run}"])
    m = finetune(cfg)
    assert m["after"]["pgd_acc"] >= m["before"]["pgd_acc"] + 0.2  # robust accuracy rises (from ~0)
    assert m["weights"] == "ema" and json.loads((run / "config.json").read_text())["robustness"]["weights"] == "ema"
    exported = load_file(str(run / "model.safetensors"))
    last = checkpoint_dirs(run)[-1]
    raw = load_file(str(last / "model.safetensors"))
    # accelerate's checkpoint of the one registered object: the weight average
    ema_state = torch.load(last / "custom_checkpoint_0.pkl", weights_only=True)["module"]
    for key, value in exported.items():
        assert torch.equal(value, ema_state[f"backbone.{key}"]), key
    differs = [k for k, v in exported.items() if v.is_floating_point() and not torch.equal(v, raw[f"backbone.{k}"])]
    assert differs  # the exported weights are the average, not the last raw weights


def test_ema_averages_after_each_step():
    from robustify.config import TrainConfig
    from robustify.train.options.ema import create, exported

    model = torch.nn.Linear(2, 1)
    assert create(TrainConfig(ema=False), model) is None and exported(None, model) == (model, "raw")
    avg = create(TrainConfig(ema=True, ema_decay=0.5), model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    avg.update(model)  # timm's warm-up: the first update copies
    assert torch.equal(avg.module.weight, model.weight)
    for _ in range(50):
        avg.update(model)
    with torch.no_grad():
        model.weight.copy_(start)
    avg.update(model)  # decay 0.5 reached: halfway between
    assert torch.allclose(avg.module.weight, start + 0.5)
    restored = create(TrainConfig(ema=True, ema_decay=0.5), torch.nn.Linear(2, 1))
    restored.load_state_dict(avg.state_dict())
    assert torch.equal(restored.module.weight, avg.module.weight) and restored.updates == avg.updates


# ------------------------------------------------------------------------------------------ held-out probe split
def test_heldout_probe_is_disjoint_from_training_and_fixed():
    from robustify.data import get_dataset
    from robustify.data.heldout import heldout_split, record, split_indices

    ds = get_dataset("quickstart", "train")
    train_idx, probe_idx = heldout_split(ds, 256, seed=0)
    assert len(probe_idx) == 256 and len(train_idx) == len(ds) - 256
    assert not set(train_idx) & set(probe_idx) and sorted(train_idx + probe_idx) == list(range(len(ds)))
    assert heldout_split(ds, 256, seed=0) == (train_idx, probe_idx)  # every process and every resume agrees
    assert split_indices(len(ds), 256, seed=1)[1] != probe_idx
    assert probe_idx != list(range(len(ds) - 256, len(ds)))  # a seeded permutation, not the tail of the file
    assert record(train_idx, probe_idx, 0)["probe_examples"] == 256
    with pytest.raises(UserError, match="train.probe_size=1297"):
        split_indices(1297, 1297, 0)


# ---------------------------------------------------------------------------------------- large-batch options
@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_lamb_and_lars_come_from_timm(name: str):
    import timm.optim

    from robustify.train.optim import build_optimizer

    cfg = build_config("quickstart", [f"optim.name={name}"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, {"lamb": timm.optim.Lamb, "lars": timm.optim.Lars}[name])
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.optim.weight_decay, 0.0]  # no decay on bias/norm
    before = model[0].weight.detach().clone()
    model(torch.randn(8, 4)).square().mean().backward()
    opt.step()
    assert not torch.equal(before, model[0].weight)


def test_grad_compression_maps_to_accelerate_ddp_kwargs():
    from accelerate.utils import DDPCommunicationHookType

    from robustify.train.options.grad_compression import ddp_kwargs

    assert ddp_kwargs(FinetuneConfig()) == []
    for value, hook in [("fp16", DDPCommunicationHookType.FP16), ("bf16", DDPCommunicationHookType.BF16)]:
        (handler,) = ddp_kwargs(build_config("quickstart", [f"train.grad_compression={value}"]))
        assert handler.comm_hook == hook
    for value in ("powersgd", "sign"):  # registered by the option itself, with its state checkpointed
        assert ddp_kwargs(build_config("quickstart", [f"train.grad_compression={value}"])) == []
    with pytest.raises(ConfigError, match="train.grad_compression"):
        build_config("quickstart", ["train.grad_compression=int8"])


def test_fp16_comm_hook_is_registered_on_a_two_process_run(tmp_path: Path):
    run = tmp_path / "run"
    res = torchrun(["-m", "robustify", "finetune", "--epochs", "1", "--output-dir", str(run),
                    "--set", "train.grad_compression=fp16", "--set", "data.max_train_examples=256",
                    "--set", "eval.n_examples=32", "--set", "eval.pgd_steps=2", "--set", "train.probe_size=32",
                    "--set", "train.probe_steps=2", "--set", "data.batch_size=64", "--set", "train.probe_split=train"],
                   tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["cost"]["world_size"] == 2 and m["cost"]["comm_hook"] == "fp16_compress_hook"
    assert m["cost"]["ranks_in_sync"] is True  # the compressed all-reduce still leaves identical weights
