"""A CPU proxy for device placement (issue 27): every method's step, the option hooks and the evaluation kernel's
first pass run on the ``meta`` device. A meta tensor has no data: mixing in a CPU tensor (one created without
``device=``) raises, and so does every host read (``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``), so what
would be a device mismatch or a host sync on a GPU fails here, in CI, on a CPU. Nothing is computed: each case
costs the Python of two steps. Not caught (as on a GPU, where they are legal): 0-dim CPU tensors in arithmetic and
CPU index tensors."""

from __future__ import annotations

import pytest
import torch

from robustify.config import build_config

METHODS = ("natural", "fgsm-rs", "n-fgsm", "free", "pgd", "deat", "apgd")
META = torch.device("meta")


def _run(overrides: list[str]):
    """The trainer's step pieces (method, stepper, AWP, EMA, eps warm-up) around a meta model; returns the result of
    two minibatches' steps."""
    import timm
    from accelerate import Accelerator

    from robustify.models import RobustModel
    from robustify.train import options
    from robustify.train.methods import StepContext, build_method
    from robustify.train.optim import OptimizerStepper, build_optimizer, step_autocast
    from robustify.train.options import eps_warmup

    cfg = build_config("quickstart", ["data.batch_size=4", "method.steps=2", "method.replays=2",
                                      "method.max_strength=2", *overrides])
    raw = RobustModel(timm.create_model("test_resnet", pretrained=False, num_classes=10), (0.5, 0.5, 0.5),
                      (0.25, 0.25, 0.25), (3, 32, 32))
    acc = Accelerator(cpu=True)
    active = options.active(cfg)
    for opt in active:  # EMA: timm's ModelEmaV3 makes a generator on the model's device, so before the move to meta
        opt.prepare(raw, acc)
    raw.to(META).train()
    for opt in active:
        supplied = opt.exported()
        if supplied is not None:  # the weight average moves with the model
            supplied[0].to(META)
    optimizer = build_optimizer(raw, cfg)
    stepper = OptimizerStepper(acc, raw, optimizer, cfg, total_opt_steps=8)
    ctx = StepContext(model=raw, attack_model=raw, optimize=stepper, autocast=step_autocast(acc))
    for opt in active:  # the options' step hooks as the trainer attaches them (AWP, EMA), in epoch 1
        opt.attach(ctx, stepper, raw)
        opt.begin_epoch(None, 1)
    method = build_method(cfg.method, cfg.threat)
    results = []
    for batch in range(2):
        x = torch.rand(4, 3, 32, 32, device=META)
        y = torch.randint(0, 10, (4,), device=META)
        share = eps_warmup.factor(cfg.threat.eps_warmup_fraction, eps_warmup.stage_progress(1, batch, 2, 2))
        with eps_warmup.scaled(ctx, share):
            results.append(method.step(ctx, x, y))
    return results, raw


# every method under Linf; L2 through a single-step and the multi-step methods; L1 through pgd and apgd (L1 accepts
# those and natural)
CASES = [(name, "Linf") for name in METHODS] + [("fgsm-rs", "L2"), ("free", "L2"), ("pgd", "L2"), ("pgd", "L1"),
                                                ("apgd", "L2"), ("apgd", "L1")]


@pytest.mark.parametrize(("name", "norm"), CASES, ids=[f"{n}-{norm}" for n, norm in CASES])
def test_every_method_steps_on_the_meta_device(name: str, norm: str):
    eps = {"Linf": 0.03, "L2": 0.5, "L1": 12.0}[norm]
    results, raw = _run([f"method.name={name}", f"threat.norm={norm}", f"threat.eps={eps}"])
    assert all(r.loss.device == META and r.logits.device == META for r in results)
    assert all(p.device == META for p in raw.parameters())


@pytest.mark.parametrize("name", ["fgsm-rs", "n-fgsm", "pgd"])
def test_trades_steps_on_the_meta_device(name: str):
    results, _ = _run([f"method.name={name}", "method.loss=trades"])
    assert results[-1].loss.device == META


@pytest.mark.parametrize("option", [["train.awp=true"], ["train.ema=true"], ["threat.eps_warmup_fraction=0.5"],
                                    ["method.name=pgd", "method.fosc=true"]],
                         ids=["awp", "ema", "eps-warmup", "fosc"])
def test_option_hooks_step_on_the_meta_device(option: list[str]):
    results, _ = _run(["method.name=pgd", *option])
    assert results[-1].loss.device == META


def test_pseudo_labelled_examples_join_a_meta_minibatch():
    from robustify.train.options.pseudo_labels import Unlabeled

    unlabeled = Unlabeled(torch.zeros(6, 3, 32, 32, dtype=torch.uint8), torch.arange(6) % 3, torch.ones(6), 2, 0, 0,
                          {})
    x, y = unlabeled.mix(torch.rand(4, 3, 32, 32, device=META), torch.zeros(4, dtype=torch.long, device=META), 1, 0)
    assert x.device == META and y.device == META and x.shape[0] == y.shape[0] == 6


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_the_evaluation_kernels_first_pass_runs_on_the_meta_device(norm: str):
    """The first PGD pass of the evaluation (the probe's whole attack: no restart) through the FP32 view."""
    import timm

    from robustify.evaluate.kernel import FP32, pgd_robust
    from robustify.models import RobustModel

    with META:
        net = RobustModel(timm.create_model("test_resnet", pretrained=False, num_classes=10), (0.5,) * 3, (0.25,) * 3,
                          (3, 32, 32)).eval()
    x, y = torch.rand(4, 3, 32, 32, device=META), torch.randint(0, 10, (4,), device=META)
    step_correct = torch.zeros(3, dtype=torch.long, device=META)
    robust = pgd_robust(FP32(net), x, y, {"Linf": 0.03, "L2": 0.5, "L1": 12.0}[norm], norm, steps=2,
                        step_correct=step_correct)
    assert robust.device == META and robust.dtype == torch.bool
