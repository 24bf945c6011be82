"""TRADES (Zhang et al. 2019) as a training objective for the attack-based methods (``method.loss: trades``).

The attack maximises KL(f(x) || f(x + delta)), the divergence of the prediction on the perturbed input from the
(fixed) clean prediction, instead of the cross-entropy against the label; the model then trains on
CE(f(x), y) + beta * KL(f(x) || f(x + delta)), with gradients through both terms. Written here because timm,
torch and accelerate ship no TRADES objective; the KL itself is ``torch.nn.functional.kl_div``.

Cost, counted honestly in forward+backward passes: the attack's target f(x) is one extra forward (counted as a
whole pass), and training on clean and perturbed inputs together is two passes instead of one.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ... import attacks

EXTRA_PASSES = 2  # the clean target forward (counted as a pass) + the clean half of the training pass


def kl_to_clean(logits: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """KL(clean || softmax(logits)), summed over the batch: the TRADES attack objective (an ``attacks.LossFn``)."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), clean_probs, reduction="sum")


@torch.no_grad()
def clean_probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The clean prediction the attack moves away from (a constant for the attack)."""
    return F.softmax(model(x).float(), dim=1)


def pgd_kl(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float, alpha: float, steps: int,
           norm: str) -> torch.Tensor:
    """PGD on the TRADES objective from a random start (``attacks.pgd`` judges success by labels, which TRADES's
    attack does not have)."""
    delta = attacks.random_init(x, eps, norm)
    for _ in range(steps):
        grad, _ = attacks.input_gradient(model, x, delta, target, kl_to_clean)
        delta = attacks.ascent_step(x, delta, grad, alpha, eps, norm)
    return delta.detach()


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
                ce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> torch.Tensor:
    """CE(f(x), y) + beta * KL(f(x) || f(x + delta)), batch means; gradients flow through both predictions. ``ce``:
    the run's training loss (the StepContext's: label-smoothed or soft-target CE when an option says so); the KL term
    compares two predictions and never sees a label."""
    logits_clean, logits_adv = logits_clean.float(), logits_adv.float()
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return ce(logits_clean, y) + beta * kl
