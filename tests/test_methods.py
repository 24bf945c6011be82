"""Training-step semantics: optimizer steps per minibatch, free AT's carried perturbation, epochs / m."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustify.config import MethodConfig, ThreatConfig
from robustify.train.methods import METHODS, build_method
from tests.helpers import Recorder, step_context


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 3, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def test_free_replays_m_optimizer_steps_and_carries_delta():
    torch.manual_seed(0)
    model, steps = Recorder(3 * 4 * 4, 3), []
    method = build_method(MethodConfig(name="free", replays=3), ThreatConfig(eps=0.1))
    ctx = step_context(model, steps)
    x1, y1 = _batch(1)
    method.step(ctx, x1, y1)
    assert len(steps) == 3  # m optimizer steps per minibatch
    assert len(model.inputs) == 3  # one forward (and one backward) per replay: no extra attack passes
    first = model.inputs[0] - x1
    assert first.abs().max() == 0  # the very first replay starts from delta = 0
    carried = method.delta.clone()
    assert carried.abs().max() > 0 and carried.abs().max() <= 0.1 + 1e-6
    # the second replay trains on the first replay's ascent step (alpha = eps), inside the ball
    second = (model.inputs[1] - x1).abs()
    assert second.max() <= 0.1 + 1e-6 and second.mean() > 0.05

    x2, y2 = _batch(2)
    model.inputs.clear()
    method.step(ctx, x2, y2)
    assert len(steps) == 6
    # the second minibatch's first replay uses the perturbation carried over from the first minibatch
    expected = (x2 + carried).clamp(0, 1)
    assert torch.allclose(model.inputs[0], expected, atol=1e-6)


def test_free_divides_epochs_by_m_and_costs_m_passes():
    free = build_method(MethodConfig(name="free", replays=4), ThreatConfig())
    assert free.epochs(10) == 3 and free.epochs(8) == 2 and free.epochs(1) == 1
    assert free.passes_per_batch == 4 and free.optimizer_steps_per_batch == 4
    pgd = build_method(MethodConfig(name="pgd", steps=7), ThreatConfig())
    assert pgd.passes_per_batch == 8 and pgd.epochs(10) == 10
    assert build_method(MethodConfig(name="fgsm-rs"), ThreatConfig()).passes_per_batch == 2


def test_fgsm_rs_default_alpha_and_single_optimizer_step():
    threat = ThreatConfig(eps=0.08)
    m = build_method(MethodConfig(name="fgsm-rs"), threat)
    assert abs(m.alpha - 1.25 * 0.08) < 1e-12
    torch.manual_seed(0)
    model, steps = Recorder(3 * 4 * 4, 3), []
    x, y = _batch(3)
    res = m.step(step_context(model, steps), x, y)
    assert len(steps) == 1
    trained_on = model.inputs[-1]
    assert (trained_on - x).abs().max() <= 0.08 + 1e-6 and trained_on.min() >= 0 and trained_on.max() <= 1
    assert (trained_on - x).abs().max() > 0.05  # it trained on a perturbed input
    assert torch.isfinite(res.loss)


def test_every_method_reduces_its_training_loss():
    """A few steps of each method on a fixed batch lower the loss on the inputs it trains on."""
    for name in METHODS:
        torch.manual_seed(0)
        model, steps = Recorder(3 * 4 * 4, 3), []
        method = build_method(MethodConfig(name=name, steps=3, replays=2), ThreatConfig(eps=0.02))
        x, y = _batch(4)
        ctx = step_context(model, steps)
        before = F.cross_entropy(model(x), y).item()
        for _ in range(15):
            method.step(ctx, x, y)
        after = F.cross_entropy(model(x), y).item()
        assert after < before, name
