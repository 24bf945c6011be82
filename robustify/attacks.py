"""Perturbation primitives: random init, signed/normalised gradient steps, projection, FGSM and PGD.

Every attack works on the model that the attacker sees: normalization inside, inputs in [0,1]. The perturbation
``delta`` is kept inside the eps-ball *and* such that ``x + delta`` stays in [0,1]. Gradients are taken with
``torch.autograd.grad`` with respect to ``delta`` only, so an attack never leaves gradients on the weights, and the
inner loops never synchronise with the host (no ``.item()``, no boolean indexing).

The primitives return fresh tensors and never modify their arguments; inside, they work in place on the tensors
they have just allocated (a training step runs them every minibatch, and on a CPU each full-size temporary costs
an allocation and page faults). Each in-place form computes exactly what the out-of-place one did, bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from .input_grad import input_only

NORMS = ("Linf", "L2")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not supported; use one of {NORMS}")


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def clamp_to_image(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Shrink ``delta`` so that ``x + delta`` lies in [0,1]."""
    return (x + delta).clamp_(0.0, 1.0).sub_(x)


def _clamp_to_image_(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """:func:`clamp_to_image` in place on a ``delta`` the caller owns (x + d == d + x in IEEE arithmetic)."""
    return delta.add_(x).clamp_(0.0, 1.0).sub_(x)


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``delta`` onto the eps-ball of the given norm."""
    _check_norm(norm)
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    factor = (eps / _per_example_norm(delta)).clamp(max=1.0)
    return delta * factor


def _project_(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """:func:`project` in place on a ``delta`` the caller owns."""
    if norm == "Linf":
        return delta.clamp_(-eps, eps)
    return delta.mul_((eps / _per_example_norm(delta)).clamp(max=1.0))


def random_init(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random start inside the eps-ball (uniform per coordinate for Linf; uniform radius, random direction for L2)."""
    _check_norm(norm)
    if norm == "Linf":
        delta = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator).mul_(2 * eps).sub_(eps)
    else:
        direction = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        direction = direction / _per_example_norm(direction)
        radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype, generator=generator)
        delta = direction * radius * eps
    return _clamp_to_image_(x, delta)


def gradient_step(delta: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    """One ascent step of size alpha: sign(grad) for Linf, grad / ||grad||_2 for L2."""
    if norm == "Linf":
        return delta.add(grad.sign(), alpha=alpha)  # one kernel; alpha * (+-1 or 0) is exact, so the same bits
    return delta + alpha * grad / _per_example_norm(grad)


def ascent_step(x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, alpha: float, eps: float,
                norm: str) -> torch.Tensor:
    """One projected ascent step: step of alpha along the gradient, back into the eps-ball, then into [0,1]."""
    _check_norm(norm)
    return _clamp_to_image_(x, _project_(gradient_step(delta, grad, alpha, norm), eps, norm))


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="sum")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The CW margin: best wrong logit minus the true logit (summed), maximised by the attack."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return (other - true).sum()


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "cw": margin_loss}


def input_gradient(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor,
                   loss_fn: LossFn = cross_entropy) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the loss w.r.t. ``delta`` only (weights get no ``.grad``); returns (grad, logits)."""
    with torch.enable_grad(), input_only():  # attacks work inside a caller's no_grad() too
        delta = delta.detach().requires_grad_(True)
        logits = model(x + delta)
        (grad,) = torch.autograd.grad(loss_fn(logits, y), delta)
    return grad.detach(), logits.detach()


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None,
         norm: str = "Linf", random_start: bool = True, loss_fn: LossFn = cross_entropy,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """FGSM, with the random start of Wong et al. 2020 by default (``alpha`` defaults to 1.25 eps with it, eps without).

    Returns the perturbation ``delta`` (detached), inside the eps-ball and the image box.
    """
    _check_norm(norm)
    if alpha is None:
        alpha = 1.25 * eps if random_start else eps
    delta = random_init(x, eps, norm, generator) if random_start else torch.zeros_like(x)
    grad, _ = input_gradient(model, x, delta, y, loss_fn)
    return ascent_step(x, delta, grad, alpha, eps, norm)


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None,
        steps: int = 10, norm: str = "Linf", restarts: int = 1, random_start: bool = True,
        loss: str = "ce", generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) with random restarts.

    Across restarts an example keeps the first perturbation that fools the model (or, if none does, the last one),
    so "robust" means robust to every restart. ``alpha`` defaults to 2.5 eps / steps. Returns ``delta``.

    Cost: ``restarts * steps`` forward/backward passes to the input, plus, only when there is more than one restart,
    one forward per restart to see which examples its last iterate fools (training uses one restart: PGD-k costs k
    passes plus the training pass, as ``passes_per_batch`` counts). That forward never updates BatchNorm running
    statistics, whatever mode the model is in (it only picks a perturbation).
    """
    _check_norm(norm)
    loss_fn = LOSSES[loss]
    alpha = 2.5 * eps / steps if alpha is None else alpha
    best: torch.Tensor | None = None
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        delta = random_init(x, eps, norm, generator) if random_start else torch.zeros_like(x)
        for _ in range(steps):
            grad, _ = input_gradient(model, x, delta, y, loss_fn)
            delta = ascent_step(x, delta, grad, alpha, eps, norm)
        if restarts == 1:
            return delta  # nothing to choose between: no extra forward
        with torch.no_grad(), frozen_batchnorm_stats(model):
            wrong = model(x + delta).argmax(1) != y
        # examples already fooled keep their fooling delta; the rest take this restart's
        best = delta if best is None else torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), best, delta)
        fooled = fooled | wrong
    return torch.zeros_like(x) if best is None else best


@contextlib.contextmanager
def frozen_batchnorm_stats(model: torch.nn.Module) -> Iterator[None]:
    """BatchNorm layers keep their mode (train: batch statistics) but do not update their running statistics."""
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False  # in train mode: normalise with batch statistics, update nothing
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True
