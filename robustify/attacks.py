"""Perturbation primitives: random init, signed/normalised/sparse gradient steps, projection, FGSM and PGD.

Every attack works on the model that the attacker sees: normalization inside, inputs in [0,1]. The perturbation
``delta`` is kept inside the eps-ball *and* such that ``x + delta`` stays in [0,1]. Gradients are taken with
``torch.autograd.grad`` with respect to ``delta`` only, so an attack never leaves gradients on the weights, and the
inner loops never synchronise with the host (no ``.item()``, no boolean indexing).

The primitives return fresh tensors and never modify their arguments; inside, they work in place on the tensors
they have just allocated (a training step runs them every minibatch, and on a CPU each full-size temporary costs
an allocation and page faults). Each in-place form computes exactly what the out-of-place one did, bit for bit.

L1 (Croce & Hein 2021, "Mind the box"): eps is summed over the whole image (the usual CIFAR-10 L1 budget is 12;
RobustBench has no L1 leaderboard).
Projecting onto the L1 ball and then clipping to the image box (what works for Linf and L2) leaves points that are
not the nearest feasible ones and wastes budget on coordinates the box cuts off, so the L1 projection here is the
exact Euclidean projection onto the *intersection* of the ball and the box (:func:`project_l1_box`), and the L1
ascent step spends its budget only on the top ``L1_SPARSITY`` share of the coordinates that can still move in the
gradient's direction (the sparse steepest-ascent step of L1-APGD, with a fixed sparsity instead of its adaptive one).
Both are written here because no maintained library exposes them as tensor functions (pyautoattack keeps its
projection inside APGD, and its results are checked against a brute-force solution in tests/test_l1.py).

Must not: take weight gradients (attacks differentiate w.r.t. the input only), sync with the host in a step, or know
about models, data or training.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from .input_grad import input_only

NORMS = ("Linf", "L2", "L1")
# the share of coordinates an L1 step moves: L1-APGD starts at 20% and adapts; a fixed-step PGD uses a fixed share
# (SLIDE, Tramer & Boneh 2019, uses the top 1%; 5% keeps a 10-step attack strong on 32x32 images, tests/test_l1.py)
L1_SPARSITY = 0.05
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_norm(norm: str) -> None:
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


L1_ITERATIONS = 12  # safeguarded Newton steps for the threshold (exact once on the right linear piece)


def _l1_threshold(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """The soft threshold ``lam >= 0`` per row with ``sum_i clamp(a_i - lam, 0, b_i) == eps`` (0 where the clipped
    point is already inside the ball). ``a = |v|``, ``b`` = room in the box in the direction of ``v`` (both >= 0).

    g(lam) = sum_i clamp(a_i - lam, 0, b_i) is piecewise linear and non-increasing, with breakpoints a_i - b_i
    (coordinate i leaves its box bound) and a_i (it reaches zero). Sorting the 2d breakpoints solves this exactly
    (Duchi et al. 2008; pyautoattack does so), but a CPU sort of 2d values per example costs about ten gradient steps.
    Instead: Newton steps on g, each the root of the linear piece g is on (sum of a over the coordinates on their
    falling part + sum of b over those at their bound - eps, divided by the falling count: exact once the piece is
    right), kept inside a bracket [lo, hi] with g(lo) > eps >= g(hi) and replaced by bisection whenever they leave
    it. A fixed number of steps (``L1_ITERATIONS``), so no host synchronisation; sums in float64. Exact (to float
    rounding) once a step lands on the right piece, in about 8 steps on 32x32 images (tests/test_l1.py).
    """
    lo = torch.zeros(a.shape[0], 1, dtype=torch.float64, device=a.device)
    hi = a.amax(1, keepdim=True).double()
    lam = lo.clone()
    for _ in range(L1_ITERATIONS):
        t = (a - lam.to(a.dtype)).clamp_(min=0).clamp_(max=b)  # each coordinate's share of g(lam)
        g = t.sum(1, keepdim=True, dtype=torch.float64)
        count = ((t > 0) & (t < b)).sum(1, keepdim=True)  # on the falling part: g's slope is -count
        over = g > eps  # the threshold is above lam
        lo, hi = torch.where(over, lam, lo), torch.where(over, hi, lam)
        newton = lam + (g - eps) / count.clamp_min(1)
        ok = (count > 0) & (newton >= lo) & (newton <= hi)
        lam = torch.where(ok, newton, (lo + hi) * 0.5)
    inside = b.minimum(a).sum(1, keepdim=True, dtype=torch.float64) <= eps  # g(0) <= eps: clipping alone will do
    return torch.where(inside, torch.zeros_like(lam), lam)  # float64: the caller subtracts it in float64


def project_l1_box(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The exact Euclidean projection of ``delta`` onto {d : ||d||_1 <= eps, 0 <= x + d <= 1}, per example.

    The KKT conditions give d_i = sign(v_i) * clamp(|v_i| - lam, 0, room_i) with room_i = 1 - x_i or x_i (the box's
    room in v_i's direction) and the smallest lam >= 0 that puts d in the ball (:func:`_l1_threshold`). A final
    rescale in float64 (towards 0, which stays in the box) absorbs the last rounding, so the L1 norm (summed exactly)
    exceeds eps by at most float32's rounding of each coordinate.
    """
    shape = delta.shape
    v, xf = delta.reshape(shape[0], -1), x.reshape(shape[0], -1)
    a = v.abs()
    room = torch.where(v >= 0, 1.0 - xf, xf).clamp_min(0)
    lam = _l1_threshold(a, room, eps)
    # once, in float64: a - lam in float32 would lose the small differences that sum to eps
    out = (a.double() - lam).clamp_min_(0).minimum(room.double())
    out = out.mul_((eps / out.sum(1, keepdim=True).clamp_min(1e-300)).clamp(max=1.0)).to(v.dtype).mul_(v.sign())
    # already inside the box (rounding to float32 is monotone); clamping delta itself, not (x + delta) - x, keeps
    # every coordinate's bits (that round trip would move each by up to an ulp of x: more than eps allows)
    return out.view(shape).clamp_(min=-x, max=1 - x)


def _project_l1_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The projection onto the L1 ball alone (no box): the threshold with unlimited room (room_i = |v_i|)."""
    v = delta.reshape(delta.shape[0], -1)
    a = v.abs()
    lam = _l1_threshold(a, a, eps)
    out = (a.double() - lam).clamp_min_(0)
    out = out.mul_((eps / out.sum(1, keepdim=True).clamp_min(1e-300)).clamp(max=1.0)).to(v.dtype).mul_(v.sign())
    return out.view(delta.shape)


def project(delta: torch.Tensor, eps: float, norm: str, x: torch.Tensor | None = None) -> torch.Tensor:
    """Project ``delta`` onto the eps-ball of the given norm; for L1 with ``x``, onto the ball *and* the image box
    (:func:`project_l1_box`; without ``x``, onto the L1 ball alone)."""
    check_norm(norm)
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    if norm == "L1":
        if x is None:
            return _project_l1_ball(delta, eps)
        return project_l1_box(x, delta, eps)
    factor = (eps / _per_example_norm(delta)).clamp(max=1.0)
    return delta * factor


def _project_(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """:func:`project` in place on a ``delta`` the caller owns (L1: onto the ball alone, into a new tensor)."""
    if norm == "L1":
        return _project_l1_ball(delta, eps)
    if norm == "Linf":
        return delta.clamp_(-eps, eps)
    return delta.mul_((eps / _per_example_norm(delta)).clamp(max=1.0))


def random_init(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random start inside the eps-ball and the image box (uniform per coordinate for Linf; uniform radius, random
    direction for L2 and L1, the L1 direction uniform on the L1 sphere: Laplace coordinates, normalised). Clipping to
    the box only shrinks coordinates towards 0, so the start stays in the ball: it lies in the intersection."""
    check_norm(norm)
    if norm == "Linf":
        delta = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator).mul_(2 * eps).sub_(eps)
    else:
        direction = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        if norm == "L1":  # |N(0,1)| is not exponential; -log(U) is, with the Gaussian's sign as a random sign
            u = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            direction = direction.sign_().mul_(u.clamp_min_(1e-12).log_().neg_())
            direction = direction / direction.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        else:
            direction = direction / _per_example_norm(direction)
        radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype, generator=generator)
        delta = direction * radius * eps
    return _clamp_to_image_(x, delta)


def l1_direction(grad: torch.Tensor, x: torch.Tensor | None = None, delta: torch.Tensor | None = None,
                 sparsity: float | torch.Tensor = L1_SPARSITY) -> torch.Tensor:
    """The sparse L1 steepest-ascent direction (L1 norm 1 per example): sign(grad) on the ``sparsity`` share of the
    coordinates with the largest |grad|, the rest 0.

    With ``x`` and ``delta``, coordinates that sit on the image box's bound the gradient points through (a pixel at
    1 whose gradient is positive) are left out before choosing (Croce & Hein 2021: a step there is cut off by the box
    and wastes budget). The k-th largest |grad| comes from ``torch.kthvalue``: no sort of the whole image, no host sync.
    ``sparsity`` may be a tensor with one share per example (L1-APGD adapts it per example, :func:`apgd`); each row's
    k-th largest then comes from one sort of the rows and a gather (k differs per row, which kthvalue cannot take).
    """
    g = grad.reshape(grad.shape[0], -1)
    if x is not None and delta is not None:
        point = (x + delta).reshape(g.shape)
        stuck = ((point >= 1) & (g > 0)) | ((point <= 0) & (g < 0))
        g = g.masked_fill(stuck, 0)
    d = g.shape[1]
    mag = g.abs()
    if isinstance(sparsity, torch.Tensor):
        k = (sparsity.reshape(-1, 1) * d).ceil().clamp(1, d).long()
        kth = mag.sort(dim=1, descending=True).values.gather(1, k - 1)  # each row's k-th largest
    else:
        k = max(1, min(d, math.ceil(sparsity * d)))
        kth = mag.kthvalue(d - k + 1, dim=1, keepdim=True).values  # the k-th largest
    chosen = (mag >= kth) & (mag > 0)
    sign = g.sign().mul_(chosen)
    return sign.div_(sign.abs().sum(1, keepdim=True).clamp_min(1)).view(grad.shape)


def gradient_step(delta: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str,
                  x: torch.Tensor | None = None) -> torch.Tensor:
    """One ascent step of size alpha: sign(grad) for Linf, grad / ||grad||_2 for L2, the sparse steepest-ascent
    direction of :func:`l1_direction` for L1 (box-aware when ``x`` is given)."""
    if norm == "Linf":
        return delta.add(grad.sign(), alpha=alpha)  # one kernel; alpha * (+-1 or 0) is exact, so the same bits
    if norm == "L1":
        return delta.add(l1_direction(grad, x, delta), alpha=alpha)
    return delta + alpha * grad / _per_example_norm(grad)


def ascent_step(x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, alpha: float, eps: float,
                norm: str) -> torch.Tensor:
    """One projected ascent step: step of alpha along the gradient, back into the eps-ball, then into [0,1] (for L1
    the exact projection onto the intersection of the two, :func:`project_l1_box`)."""
    check_norm(norm)
    if norm == "L1":
        return project_l1_box(x, gradient_step(delta, grad, alpha, norm, x), eps)
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
    check_norm(norm)
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
    check_norm(norm)
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


# --- APGD (Croce & Hein 2020) as a training attack ---------------------------------------------------------------
APGD_MOMENTUM = 0.75  # weight of the new step against the last move (Croce & Hein's alpha; 1.0 at the first step)
APGD_RHO = 0.75  # a checkpoint halves the step where the loss rose in at most this share of the window's steps


def per_example_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example, against class indices or class probabilities (soft targets, e.g. mixup's)."""
    return F.cross_entropy(logits.float(), target, reduction="none")


def apgd_checkpoints(steps: int, norm: str) -> dict[int, int]:
    """{iteration (0-based): window length} where APGD checks its step size, from the step count alone (so in Python,
    with no host synchronisation): for Linf/L2 the first window is 22% of the steps and each next one 3% shorter,
    down to 6% (at least 1 step each); for L1 every 4% of the steps (Croce & Hein 2020 and 2021, as in AutoAttack's
    and Singh et al.'s code). No check after the last step: nothing follows it."""
    if norm == "L1":
        every = max(int(0.04 * steps), 1)
        return {i: every for i in range(every - 1, steps - 1, every)}
    window, shortest, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, i = {}, window - 1
    while i < steps - 1:
        out[i] = window
        window = max(window - shrink, shortest)
        i += window
    return out


def _loss_and_grad(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor, target: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example loss at ``x + delta`` and its gradient w.r.t. ``delta`` only (weights get no ``.grad``)."""
    with torch.enable_grad(), input_only():
        delta = delta.detach().requires_grad_(True)
        losses = loss_fn(model(x + delta), target)
        (grad,) = torch.autograd.grad(losses.sum(), delta)
    return losses.detach(), grad.detach()


def _into_ball_and_box(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "L1":
        return project_l1_box(x, delta, eps)
    return _clamp_to_image_(x, _project_(delta, eps, norm))


def apgd(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float, steps: int, norm: str = "Linf",
         alpha: float | None = None, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = per_example_ce,
         start: torch.Tensor | None = None) -> torch.Tensor:
    """APGD (Croce & Hein 2020) with ``steps`` gradient evaluations; returns the perturbation of highest loss found.

    The step size starts at ``alpha`` (default 2 eps for Linf/L2, eps for L1) per example and is adapted at fixed
    checkpoints (:func:`apgd_checkpoints`). Linf/L2: a checkpoint halves an example's step, and restarts it from its
    best point, when its loss rose in at most ``APGD_RHO`` of the window's steps or when its best loss did not improve
    since the last checkpoint that left its step alone; each step mixes the projected gradient step with the last move
    (momentum ``APGD_MOMENTUM``). L1 (Croce & Hein 2021): the sparse step of :func:`l1_direction` with a per-example
    sparsity that starts at ``L1_SPARSITY`` (Singh et al.'s training value; AutoAttack's evaluation starts at 20%) and
    follows the sparsity of the best point (its L0 share / 1.5); a checkpoint restores the full step and restarts from
    the best point where that sparsity fell by more than 5%, and divides the step by 1.5 (down to a tenth) elsewhere;
    no momentum (as in both references); the exact projection onto the ball and box (:func:`project_l1_box`).

    Starts from ``start`` (default: the clean input, as Singh et al.'s APGD training does). Cost: ``steps``
    forward/backward passes to the input plus one forward to score the last iterate (whose gradient is never needed).
    Every choice is a ``torch.where`` on per-example tensors: no host synchronisation, whole-batch forwards only.
    ``loss_fn`` gives one loss per example (default: cross-entropy, which also takes soft targets).
    """
    check_norm(norm)
    n = x.shape[0]
    shape = (-1, *([1] * (x.dim() - 1)))
    first = (2.0 if norm != "L1" else 1.0) * eps if alpha is None else alpha
    delta = torch.zeros_like(x) if start is None else start.detach().clone()
    loss, grad = _loss_and_grad(model, x, delta, target, loss_fn)
    step = torch.full((n, *([1] * (x.dim() - 1))), first, dtype=x.dtype, device=x.device)
    best, best_loss, best_grad = delta, loss, grad
    previous, last_loss = delta, loss
    rises = torch.zeros(n, dtype=torch.long, device=x.device)  # loss rises since the last checkpoint
    halved_last = torch.ones(n, dtype=torch.bool, device=x.device)
    best_at_check = best_loss
    dims = x[0].numel()
    sparsity = torch.full((n,), L1_SPARSITY, dtype=torch.float32, device=x.device)
    support_before = torch.full((n,), float(dims), device=x.device)
    checkpoints = apgd_checkpoints(steps, norm)
    for i in range(steps):
        with torch.no_grad():
            if norm == "L1":
                moved = project_l1_box(x, delta + step * l1_direction(grad, x, delta, sparsity), eps)
            else:
                direction = grad.sign() if norm == "Linf" else grad / _per_example_norm(grad)
                moved = _into_ball_and_box(x, delta + step * direction, eps, norm)
                if i > 0:
                    moved = _into_ball_and_box(x, delta + APGD_MOMENTUM * (moved - delta)
                                               + (1 - APGD_MOMENTUM) * (delta - previous), eps, norm)
            previous, delta = delta, moved
        if i == steps - 1:  # the last iterate is scored, never stepped from: no backward
            with torch.no_grad():
                loss = loss_fn(model(x + delta), target).detach()
        else:
            loss, grad = _loss_and_grad(model, x, delta, target, loss_fn)
        with torch.no_grad():
            better = loss > best_loss
            best = torch.where(better.view(shape), delta, best)
            best_grad = torch.where(better.view(shape), grad, best_grad)
            best_loss = torch.where(better, loss, best_loss)
            rises += loss > last_loss
            last_loss = loss
            if i not in checkpoints:
                continue
            if norm == "L1":
                support = (best != 0).flatten(1).sum(1).float()
                restart = support / support_before < 0.95
                sparsity = support / dims / 1.5
                step = torch.where(restart.view(shape), torch.full_like(step, first), step / 1.5)
                step = step.clamp(first / 10, first)
                support_before = support
            else:
                restart = (rises <= checkpoints[i] * APGD_RHO) | (~halved_last & (best_at_check >= best_loss))
                halved_last, best_at_check = restart, best_loss
                step = torch.where(restart.view(shape), step / 2, step)
                rises = torch.zeros_like(rises)
            delta = torch.where(restart.view(shape), best, delta)
            grad = torch.where(restart.view(shape), best_grad, grad)
    return best.detach()
