"""The catastrophic-overfitting guard: when the probe's robust accuracy collapses, the run rolls back to its best
epoch, stops, and the exported model keeps that epoch's robustness (checked by an independent PGD on the exported
weights, loaded with plain timm).

The collapse is forced deterministically with a two-stage recipe: FGSM-RS makes the model robust, then a second
stage trains naturally at a high learning rate, which destroys robustness within an epoch (the same drop the guard
sees when FGSM training overfits catastrophically, without depending on exactly when a given seed overfits; the guard
and the best-robust selection span all stages of a run).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from robustify.config import build_config
from robustify.fileio import read_json
from robustify.train.trainer import finetune
from tests.helpers import quickstart_batch

EPS = 0.1
SMALL = ["eval.n_examples=100", "train.probe_size=128", "eval.pgd_steps=5"]
STAGES = ("stages=[{name: robust, train: {epochs: 3}}, {name: collapse, method: {name: natural}, "
          "schedule: {name: constant, lr: 0.2}, train: {epochs: 3}}]")


def independent_pgd(folder: Path, x: torch.Tensor, y: torch.Tensor, steps: int = 10) -> float:
    """Linf PGD written here, on the model as plain timm loads it (normalization from its pretrained_cfg)."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, -1, 1, 1)
    gen = torch.Generator().manual_seed(1)
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * EPS
    robust = torch.ones_like(y, dtype=torch.bool)
    for _ in range(steps):
        delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
        logits = model((x + delta - mean) / std)
        robust &= logits.argmax(1) == y
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), delta)
        delta = (delta.detach() + 2.5 * EPS / steps * grad.sign()).clamp(-EPS, EPS)
    with torch.no_grad():
        robust &= model(((x + delta).clamp(0, 1) - mean) / std).argmax(1) == y
    return robust.float().mean().item()


def test_collapse_rolls_back_and_the_export_stays_robust(tmp_path: Path):
    run = tmp_path / "run"
    metrics = finetune(build_config("quickstart", [*SMALL, STAGES, f"output_dir={run}"]))

    history = metrics["history"]
    best = max(history[:3], key=lambda h: h["probe_robust_acc"])
    last = history[-1]
    assert metrics["stopped"].startswith("catastrophic overfitting") and "rolled back" in last["note"]
    assert best["probe_robust_acc"] - last["probe_robust_acc"] > 0.2  # what the guard saw
    assert metrics["selected_epoch"] == best["epoch"] and len(history) < 6  # stopped early, best epoch exported
    assert read_json(run / "config.json")["robustness"]["results"]["pgd_acc"] == metrics["after"]["pgd_acc"]

    x, y = quickstart_batch(100)
    robust = independent_pgd(run, x, y)
    assert robust >= 0.2 and robust > last["probe_robust_acc"] + 0.1, (robust, history)
