"""Attack invariants: inside the eps-ball and [0,1], no weight gradients, PGD at least as strong as FGSM."""

from __future__ import annotations

import pytest
import torch

from robustify import attacks
from tests.helpers import quickstart_batch, quickstart_model


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    return quickstart_model(), *quickstart_batch(64)


def _norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("Linf", 0.1), ("L2", 0.5), ("L2", 1.5)])
@pytest.mark.parametrize("attack", ["random", "fgsm", "pgd"])
def test_perturbation_stays_in_ball_and_image(model_and_batch, norm, eps, attack):
    model, x, y = model_and_batch
    if attack == "random":
        delta = attacks.random_init(x, eps, norm)
    elif attack == "fgsm":
        delta = attacks.fgsm(model, x, y, eps, norm=norm)
    else:
        delta = attacks.pgd(model, x, y, eps, steps=5, norm=norm, restarts=2)
    assert (_norms(delta, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    adv = x + delta
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert _norms(delta, norm).max() > 0.5 * eps  # it actually perturbs


def test_attacks_leave_no_weight_gradients(model_and_batch):
    model, x, y = model_and_batch
    model.zero_grad(set_to_none=True)
    attacks.fgsm(model, x, y, 0.1)
    attacks.pgd(model, x, y, 0.1, steps=3, loss="cw")
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("norm,eps", [("Linf", 0.05), ("L2", 0.75)])
def test_pgd_at_least_as_strong_as_fgsm(model_and_batch, norm, eps):
    model, x, y = model_and_batch
    torch.manual_seed(1)
    with torch.no_grad():
        fgsm_wrong = (model(x + attacks.fgsm(model, x, y, eps, norm=norm)).argmax(1) != y).sum().item()
        clean_wrong = (model(x).argmax(1) != y).sum().item()
    delta = attacks.pgd(model, x, y, eps, steps=20, norm=norm, restarts=2)
    with torch.no_grad():
        pgd_wrong = (model(x + delta).argmax(1) != y).sum().item()
    assert pgd_wrong >= fgsm_wrong >= clean_wrong
    assert pgd_wrong > clean_wrong  # the natural model is not robust: PGD must find adversarial examples


def test_pgd_restarts_keep_fooling_perturbations(model_and_batch):
    """With restarts, an example fooled by any restart stays fooled (robust = survives every restart)."""
    model, x, y = model_and_batch
    gen = torch.Generator().manual_seed(0)
    one = attacks.pgd(model, x, y, 0.03, steps=3, restarts=1, generator=gen)
    gen = torch.Generator().manual_seed(0)
    many = attacks.pgd(model, x, y, 0.03, steps=3, restarts=4, generator=gen)
    with torch.no_grad():
        wrong_one = model(x + one).argmax(1) != y
        wrong_many = model(x + many).argmax(1) != y
    assert (wrong_many | ~wrong_one).all()  # whatever one restart fooled, four restarts fool too
    assert wrong_many.sum() >= wrong_one.sum()


def test_projection_and_gradient_step_shapes():
    delta = torch.randn(4, 3, 8, 8)
    assert attacks.project(delta, 0.1, "Linf").abs().max() <= 0.1
    assert (attacks.project(delta, 0.5, "L2").flatten(1).norm(dim=1) <= 0.5 + 1e-6).all()
    step = attacks.gradient_step(torch.zeros(2, 3, 4, 4), torch.randn(2, 3, 4, 4), 0.2, "L2")
    assert torch.allclose(step.flatten(1).norm(dim=1), torch.full((2,), 0.2), atol=1e-6)
    assert (attacks.project(delta, 2.0, "L1").flatten(1).double().abs().sum(1) <= 2.0 * (1 + 1e-6)).all()
    with pytest.raises(ValueError, match="norm"):
        attacks.project(delta, 0.1, "L0")
