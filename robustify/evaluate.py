"""Robust evaluation: clean accuracy and PGD (with restarts) on a fixed, recorded subset of the eval split.

Each example is attacked once per restart and counts as robust only if it survives every restart. Accuracies are
fractions in [0,1] over the first ``n_examples`` examples of the split (RobustBench's first-N convention).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from . import attacks
from .data import to_unit


def _batches(loader: Iterable, device: torch.device):
    for x, y in loader:
        yield to_unit(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def pgd_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, steps: int,
                restarts: int = 1, alpha: float | None = None, loss: str = "ce",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example correctness (bool) under PGD with restarts; clean-misclassified examples count as not robust."""
    delta = attacks.pgd(model, x, y, eps, alpha, steps, norm, restarts=restarts, loss=loss, generator=generator)
    return (predict(model, x + delta) == y) & (predict(model, x) == y)


def evaluate_pgd(model: torch.nn.Module, loader: Iterable, eps: float, norm: str = "Linf", steps: int = 20,
                 restarts: int = 1, loss: str = "ce", alpha: float | None = None, seed: int = 0,
                 device: torch.device | str = "cpu", autocast=contextlib.nullcontext, desc: str = "eval",
                 disable_progress: bool = False) -> dict:
    """Clean and PGD accuracy of ``model`` (in eval mode) on every example the loader yields."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    clean = robust = total = 0
    clean_t = torch.zeros((), device=device, dtype=torch.long)
    robust_t = torch.zeros((), device=device, dtype=torch.long)
    try:
        for x, y in tqdm(_batches(loader, device), desc=desc, total=len(loader), leave=False, disable=disable_progress):
            with autocast():
                clean_t += (predict(model, x) == y).sum()
                if eps > 0:
                    robust_t += pgd_correct(model, x, y, eps, norm, steps, restarts, alpha, loss, gen).sum()
            total += y.numel()
    finally:
        model.train(was_training)
    clean, robust = clean_t.item(), robust_t.item() if eps > 0 else clean_t.item()
    return {
        "clean_acc": clean / max(total, 1),
        "pgd_acc": robust / max(total, 1),
        "pgd": {"norm": norm, "eps": eps, "steps": steps, "restarts": restarts, "loss": loss,
                "alpha": 2.5 * eps / steps if alpha is None else alpha},
        "n_examples": total,
    }
