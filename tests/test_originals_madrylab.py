"""The madrylab converter checked against MadryLab's robustness 1.2.1 itself (the ``originals`` test extra).

The library builds the model (``datasets.ImageNet(...).get_model(arch)`` wrapped in its ``AttackerModel``, the
normalizer and the attacker's copy included), the weights are random with non-trivial BatchNorm statistics, one SGD
step is taken with the optimizer and schedule the library's ``train.make_optimizer_and_schedule`` makes, and the
checkpoint is saved as ``train.py`` saves it (``{"model", "optimizer", "schedule", "epoch", "amp"}`` of the
DataParallel-wrapped model, ``torch.save(..., pickle_module=dill)``). ``robustify import`` (the command) converts
the file; the model the library's ``model_utils.make_and_restore_model`` restores from the same file and the timm
folder (normalization from its pretrained_cfg) must give the same logits on [0,1] inputs (fp32, 1e-4).

robustness 1.2.1 needs two import shims on today's torchvision and without cox (tests/originals.py); skipped with
the reason where it is not installed (``make test`` installs it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from robustify.cli import main

try:
    from tests import originals
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    import originals

TOL = 1e-4
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # robustness.datasets.ImageNet


@pytest.fixture(scope="module")
def robustness():
    return originals.robustness()


def _checkpoint(robustness, arch: str, path: Path) -> None:
    """Build ``arch`` with the library, train one step, save as its train loop saves checkpoints."""
    import dill
    from cox.utils import Parameters  # the real cox, or the stand-in tests/originals.py registered
    from robustness.attacker import AttackerModel
    from robustness.datasets import ImageNet
    from robustness.train import make_optimizer_and_schedule

    torch.manual_seed(0)
    ds = ImageNet("/nonexistent-imagenet")  # the path is only read by its loaders, which are not used
    model = AttackerModel(ds.get_model(arch, False), ds)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():  # BatchNorm statistics and affine terms far from 0/1
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    model = nn.DataParallel(model)  # what train_model is handed by make_and_restore_model(parallel=True)
    args = Parameters({
        "lr": 1e-4, "momentum": 0.9, "weight_decay": 1e-4, "mixed_precision": False, "custom_lr_multiplier": None,
        "lr_interpolation": "step", "step_lr": 30, "step_lr_gamma": 0.1, "epochs": 90})
    opt, schedule = make_optimizer_and_schedule(args, model, None, None)
    model.eval()  # one step on the BatchNorm statistics above (eval mode leaves them as they are)
    out, _ = model(torch.rand(2, 3, 64, 64, generator=g))
    nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    opt.step()
    schedule.step()
    sd_info = {"model": model.state_dict(), "optimizer": opt.state_dict(),
               "schedule": (schedule and schedule.state_dict()), "epoch": 1, "amp": None}  # train.py, save_checkpoint
    torch.save(sd_info, path, pickle_module=dill)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_madrylab_checkpoint_imports_to_the_same_logits(robustness, arch, tmp_path, monkeypatch, capsys) -> None:
    from robustness.datasets import ImageNet
    from robustness.model_utils import make_and_restore_model

    path = tmp_path / f"{arch}_linf_eps4.0.ckpt"  # the published files' names: the architecture is read from it
    _checkpoint(robustness, arch, path)
    # the library's own loader, as its README restores a model; it ends with model.cuda(): a no-op on this CPU
    monkeypatch.setattr(nn.Module, "cuda", lambda self, *a, **k: self)
    original, ckpt = make_and_restore_model(arch=arch, dataset=ImageNet("/nonexistent-imagenet"),
                                            resume_path=str(path))
    original.eval()
    assert ckpt["epoch"] == 1
    out = tmp_path / "timm"
    assert main(["import", str(path), "--trust-pickle", "--output-dir", str(out)]) == 0
    assert "madrylab converter" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == arch and cfg["import"]["converter_checked_against"] == "robustness 1.2.1"
    assert tuple(cfg["pretrained_cfg"]["mean"]) == pytest.approx(MEAN)
    assert tuple(cfg["pretrained_cfg"]["std"]) == pytest.approx(STD)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    mean, std = (torch.tensor(cfg["pretrained_cfg"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        ref = original(x, with_image=False)
        diff = float((ref - model((x - mean) / std)).abs().max())
    print(f"madrylab {arch}: max logit difference {diff:.3g} (largest logit {float(ref.abs().max()):.3g})")
    assert diff <= TOL, diff
    assert torch.isfinite(ref).all() and ref.abs().max() > 1.0, ref.abs().max()
