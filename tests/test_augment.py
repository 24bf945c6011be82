"""timm's augmentation and losses as run options (issue 30): mixup / CutMix (timm.data.Mixup with
SoftTargetCrossEntropy), label smoothing (timm.loss.LabelSmoothingCrossEntropy) and RandAugment / AutoAugment
(``data.auto_augment`` through timm's transform factory).

Each loss is compared with timm's own classes on a fixed batch, through the methods' real step; the mixing and the
per-example policy are pure functions of their position (so a resume is exact, tested mid-epoch on tiny runs), the
policy's pixels are the same at world size 1 and 3, and bad settings are one line before anything loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from robustify import attacks
from robustify.config import DataConfig, build_config
from robustify.train.methods import build_method
from robustify.train.options import OPTIONS, active
from robustify.train.options.mixup import draw_seed, mix
from tests.helpers import quickstart_batch, quickstart_model, step_context

MIXUP = ["train.mixup_alpha=0.8", "train.cutmix_alpha=1.0", "train.label_smoothing=0.1"]
RANDAUGMENT = ["data.augment=timm", "data.auto_augment=rand-m9-mstd0.5-inc1"]


def _losses(sets: list[str], method: str = "natural", epoch: int = 1, batch: int = 0):
    """The training loss one step of ``method`` hands to the optimizer with the options of ``sets`` attached as the
    trainer attaches them, with the minibatch they gave the method, and the model's logits on it before the step."""
    cfg = build_config("quickstart", [f"method.name={method}", *sets])
    model = quickstart_model()  # eval mode: BatchNorm's running statistics, so the logits below are the step's
    x, y = quickstart_batch(16)
    losses: list[torch.Tensor] = []
    ctx = step_context(model, [])
    step = ctx.optimize
    ctx.optimize = lambda loss: (losses.append(loss.detach()), step(loss))
    opts = active(cfg)
    for opt in opts:
        opt.attach(ctx, None, model)
    for opt in opts:
        x, y = opt.batch(x.clone(), y, epoch, batch)
    with torch.no_grad():
        logits = model(x).float()
    torch.manual_seed(0)
    build_method(cfg.method, cfg.threat).step(ctx, x, y)
    return losses[0], x, y, logits, cfg


def test_mixup_and_cutmix_are_timms_mixup_and_the_loss_is_its_soft_target_ce():
    """The mixed minibatch and soft targets are timm's Mixup's with NumPy seeded at the position; the method's
    training loss is SoftTargetCrossEntropy of them (not the hard-label CE)."""
    x0, y0 = quickstart_batch(16)
    for sets in (MIXUP, ["train.mixup_alpha=0.8"], ["train.cutmix_alpha=1.0", "train.mixup_mode=elem"],
                 ["train.mixup_alpha=0.4", "train.cutmix_alpha=1.0", "train.mixup_mode=pair",
                  "train.mixup_switch_prob=0.7", "train.mixup_prob=0.9"]):
        loss, x, y, logits, cfg = _losses(sets, epoch=2, batch=5)
        t = cfg.train
        reference = Mixup(mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, prob=t.mixup_prob,
                          switch_prob=t.mixup_switch_prob, mode=t.mixup_mode, label_smoothing=t.label_smoothing,
                          num_classes=10)
        np.random.seed(draw_seed(cfg.train.seed, 2, 5, 0))
        x_ref, y_ref = reference(x0.clone(), y0)
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref), sets
        assert not torch.equal(x, x0) and y.shape == (16, 10)
        assert torch.equal(loss, SoftTargetCrossEntropy()(logits, y_ref)), sets
        assert not torch.allclose(loss, F.cross_entropy(logits, y0))


def test_mixing_is_a_pure_function_of_its_position_and_leaves_numpys_rng_alone():
    x, y = quickstart_batch(8)
    cfg = build_config("quickstart", MIXUP)
    mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = mix(mixer, x, y, draw_seed(cfg.train.seed, 1, 3, 0))
    assert np.array_equal(np.random.get_state()[1], before)  # restored: nothing else's draws move
    b = mix(mixer, x, y, draw_seed(cfg.train.seed, 1, 3, 0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [mix(mixer, x, y, draw_seed(0, e, m, r)) for e, m, r in ((2, 3, 0), (1, 4, 0), (1, 3, 1))]
    assert all(not torch.equal(a[1], o[1]) for o in others)  # another epoch, minibatch or process draws anew
    assert torch.equal(x, quickstart_batch(8)[0])  # the caller's minibatch is not mixed in place


def test_an_odd_minibatch_leaves_its_last_example_unmixed_with_a_smoothed_one_hot_target():
    """timm's Mixup needs an even minibatch; a pseudo-labelled share can make it odd."""
    x, y = quickstart_batch(7)
    mixer = Mixup(mixup_alpha=0.8, label_smoothing=0.1, num_classes=10)
    xm, ym = mix(mixer, x, y, 5)
    assert xm.shape == x.shape and ym.shape == (7, 10)
    assert torch.equal(xm[6], x[6])
    assert torch.allclose(ym[6], F.one_hot(y[6], 10).float() * 0.9 + 0.01)
    np.random.seed(5)
    x_ref, y_ref = Mixup(mixup_alpha=0.8, label_smoothing=0.1, num_classes=10)(x[:6].clone(), y[:6])
    assert torch.equal(xm[:6], x_ref) and torch.equal(ym[:6], y_ref)


def test_the_attack_under_mixup_ascends_the_soft_target_ce_of_the_mixed_images():
    """What the references do: the attack's objective on soft targets is SoftTargetCrossEntropy (summed)."""
    model = quickstart_model()
    _, x, y, _, _ = _losses(MIXUP)
    torch.manual_seed(1)
    delta = attacks.random_init(x, 0.1, "Linf")
    grad, _ = attacks.input_gradient(model, x, delta, y, attacks.cross_entropy)
    d = delta.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(SoftTargetCrossEntropy()(model(x + d).float(), y) * x.shape[0], d)
    assert torch.allclose(grad, reference, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grad, attacks.input_gradient(model, x, delta, y.argmax(1))[0], atol=1e-4)


def test_label_smoothing_is_timms_loss_in_every_method_and_the_attack_keeps_plain_ce():
    loss, x, y, logits, _ = _losses(["train.label_smoothing=0.1"])
    assert y.dim() == 1  # hard labels: no mixing without mixup_alpha / cutmix_alpha
    assert torch.equal(loss, LabelSmoothingCrossEntropy(0.1)(logits, y))
    assert not torch.allclose(loss, F.cross_entropy(logits, y))
    # TRADES: the smoothed CE of the clean inputs plus beta times the KL term, whose value needs no label
    loss_trades, x, y, _, cfg = _losses(["train.label_smoothing=0.1", "method.loss=trades"], method="fgsm-rs")
    plain_trades, *_ = _losses(["method.loss=trades"], method="fgsm-rs")
    model = quickstart_model()
    with torch.no_grad():
        clean = model(x).float()
    smoothed_minus_plain = LabelSmoothingCrossEntropy(0.1)(clean, y) - F.cross_entropy(clean, y)
    assert torch.allclose(loss_trades - plain_trades, smoothed_minus_plain, atol=1e-5)
    # free's replays train on it too
    loss_free, x, y, _, _ = _losses(["train.label_smoothing=0.1", "method.replays=1"], method="free")
    with torch.no_grad():
        assert torch.allclose(loss_free, LabelSmoothingCrossEntropy(0.1)(model(x).float(), y))
    # with mixup on, the smoothing is Mixup's (its soft targets), and the label-smoothing option is off
    names = {type(o).name for o in active(build_config("quickstart", MIXUP))}
    assert names == {"mixup"}


def test_auto_augment_is_seeded_per_example_and_the_same_at_world_size_1_and_3():
    """RandAugment (timm's policy, which draws its operations from NumPy's global RNG) through the workers path: the
    first global minibatch at world size 1 is the three ranks' first minibatches at world size 3, pixel for pixel;
    another epoch augments anew; the probe and evaluation transforms never see the policy."""
    from robustify.data.loaders import build_loaders

    data_config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0}
    cfg = DataConfig(name="quickstart", augment="timm", auto_augment="rand-m9-mstd0.5-inc1", batch_size=12,
                     cache_mb=0, num_workers=0, max_train_examples=48)
    one = build_loaders(cfg, data_config, 4, 4, seed=7, rank=0, world_size=1)
    x1, y1 = next(iter(one.train_epoch(1)))
    assert one.preprocessing.auto_augment is None  # the model's, the probe's, the evaluation's and the export's
    cfg.batch_size = 4
    parts = [next(iter(build_loaders(cfg, data_config, 4, 4, seed=7, rank=r, world_size=3).train_epoch(1)))
             for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x1) and torch.equal(torch.cat([p[1] for p in parts]), y1)
    np.random.seed(0)
    again = next(iter(one.train_epoch(1)))[0]
    assert torch.equal(again, x1)  # NumPy's global state does not enter an example's augmentation
    plain = build_loaders(DataConfig(name="quickstart", augment="timm", batch_size=12, cache_mb=0, num_workers=0,
                                     max_train_examples=48), data_config, 4, 4, seed=7)
    assert not torch.equal(next(iter(plain.train_epoch(1)))[0], x1)  # the policy does change the pixels


def test_randaugments_zero_bit_posterize_is_the_black_image_not_a_crash():
    """rand-m9-mstd0.5-inc1 (the references' policy) keeps 0 bits at its top magnitude; Pillow 13 refuses that, which
    crashed a quickstart run at a random minibatch. The op now gives the black image Pillow gave before."""
    from PIL import Image, ImageOps
    from timm.data import auto_augment

    from robustify.data.preprocessing import train_transform

    tf = train_transform((3, 32, 32), auto_augment="rand-m9-mstd0.5-inc1")
    (op,) = [op for t in tf.transforms for op in getattr(t, "ops", []) if op.name == "PosterizeIncreasing"]
    img = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    with pytest.raises(ValueError):
        auto_augment.posterize(img, 0)  # timm's own op on this Pillow
    assert not np.asarray(op.aug_fn(img, 0)).any()
    assert np.array_equal(np.asarray(op.aug_fn(img, 3)), np.asarray(ImageOps.posterize(img, 3)))
    op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0  # the top magnitude: 0 bits kept, through the op itself
    assert not np.asarray(op(img)).any()


def test_the_policy_travels_to_stream_workers_in_the_preprocessing_record():
    from robustify.data.preprocessing import Preprocessing

    pre = Preprocessing(input_size=(3, 32, 32), auto_augment="original")
    assert Preprocessing.from_record(pre.record()) == pre
    assert "auto_augment" not in Preprocessing(input_size=(3, 32, 32)).record()  # records without it are unchanged


@pytest.mark.parametrize("sets,line", [
    (["train.label_smoothing=1"], "train.label_smoothing=1 is outside [0, 1)"),
    (["train.mixup_alpha=-1"], "train.mixup_alpha=-1 is negative"),
    (["train.cutmix_alpha=1", "train.mixup_switch_prob=2"], "train.mixup_switch_prob=2 is outside [0, 1]"),
    (["train.mixup_alpha=0.8", "train.mixup_prob=0"], "train.mixup_prob=0 with mixup or CutMix on mixes nothing"),
    (["train.mixup_mode=row"], "train.mixup_mode='row' is not accepted; choose one of: batch, pair, elem"),
    (["data.auto_augment=rand-m9"], "data.auto_augment='rand-m9' with data.augment='none' is not accepted"),
    (["data.augment=timm", "data.auto_augment=bogus"], "data.auto_augment='bogus' is not a timm policy"),
    (["data.augment=rrc-flip", "data.decode=device", "data.streaming=true", "data.auto_augment=original"],
     "data.auto_augment='original' with data.decode=device is not accepted"),
])
def test_a_bad_setting_is_one_line_naming_it(sets: list[str], line: str, capsys):
    from robustify.cli import main as cli

    assert cli(["finetune", "--dry-run", *[a for kv in sets for a in ("--set", kv)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0], err


def test_mixup_is_refused_with_a_method_that_reads_class_indices(monkeypatch, capsys):
    """Every method today takes soft targets; one that declares it does not is refused up front, in one line."""
    from robustify.cli import main as cli
    from robustify.train.methods import METHODS

    assert all(unit.soft_targets for unit in METHODS.values())
    monkeypatch.setattr(METHODS["pgd"], "soft_targets", False)
    assert cli(["finetune", "--dry-run", "--method", "pgd", "--set", "train.cutmix_alpha=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.cutmix_alpha=1 with method.name='pgd' is not accepted" in err[0], err
    assert cli(["finetune", "--dry-run", "--method", "pgd", "--set", "train.label_smoothing=0.1"]) == 0


def test_each_option_is_registered_and_says_what_it_does_in_the_plan_record_and_card():
    assert {"mixup", "label-smoothing", "auto-augment"} <= set(OPTIONS)
    cfg = build_config("quickstart", MIXUP + RANDAUGMENT)
    notes = " ".join(n for unit in OPTIONS.values() if unit.active(cfg) for n in unit.plan_notes("main", cfg, 1))
    assert "the attack maximises the soft-target CE of the mixed images" in notes and "rand-m9-mstd0.5-inc1" in notes
    assert OPTIONS["mixup"].record(cfg)["mixup"]["cutmix_alpha"] == 1.0
    assert OPTIONS["auto-augment"].record(cfg) == {"auto_augment": "rand-m9-mstd0.5-inc1"}
    smoothing = build_config("quickstart", ["train.label_smoothing=0.2"])
    assert OPTIONS["label-smoothing"].record(smoothing) == {"label_smoothing": 0.2}
    assert OPTIONS["label-smoothing"].record(cfg) == {}  # Mixup's record holds the smoothing then


# mid-epoch resume: 80 training examples in 5 minibatches of 16, a checkpoint every 2 optimizer steps
TINY = ["data.max_train_examples=96", "train.probe_size=16", "data.batch_size=16", "train.epochs=1",
        "train.probe_steps=1", "eval.n_examples=16", "eval.pgd_steps=1", "train.log_every=100",
        "train.checkpoint_every=2", "data.num_workers=0"]


class Crash(Exception):
    """The process dies right after its first mid-epoch checkpoint is on disk."""


@pytest.mark.parametrize("sets", [MIXUP + RANDAUGMENT, ["train.label_smoothing=0.1", "method.name=free",
                                                        "method.replays=2"]],
                         ids=["mixup-cutmix-randaugment", "label-smoothing"])
def test_a_run_stopped_mid_epoch_resumes_bit_identically(sets: list[str], tmp_path: Path, monkeypatch):
    from robustify import runlock
    from robustify.train import trainer
    from robustify.train.checkpoint import checkpoint_dirs

    straight, run = tmp_path / "straight", tmp_path / "run"
    trainer.finetune(build_config("quickstart", [*TINY, *sets, f"output_dir={straight}"]))
    real = trainer.checkpoint

    def crash_after_a_mid_epoch_checkpoint(r):
        where = real(r)
        if r.state.batch > 0:
            raise Crash
        return where

    monkeypatch.setattr(trainer, "checkpoint", crash_after_a_mid_epoch_checkpoint)
    with pytest.raises(Crash):
        trainer.finetune(build_config("quickstart", [*TINY, *sets, f"output_dir={run}"]))
    monkeypatch.setattr(trainer, "checkpoint", real)
    runlock.release(run)
    import json

    assert json.loads((checkpoint_dirs(run)[-1] / "trainer_state.json").read_text())["batch"] > 0  # mid-epoch
    trainer.finetune(build_config(str(run / "recipe.yaml")), resume=True)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
