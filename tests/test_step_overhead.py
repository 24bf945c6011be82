"""The leaner training step computes what the plain formulas compute, and PGD's passes are what it reports."""

from __future__ import annotations

import contextlib

import torch

from robustify import attacks


class CountingNet(torch.nn.Module):
    """A tiny conv net with BatchNorm that counts its forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def test_in_place_primitives_match_the_plain_formulas_bit_for_bit():
    x, _ = _data()
    g = torch.Generator().manual_seed(1)
    delta, grad = torch.rand(x.shape, generator=g) * 0.2 - 0.1, torch.randn(x.shape, generator=g)
    before = delta.clone()
    alpha, eps = 0.03, 0.05
    plain = (x + (delta + alpha * grad.sign()).clamp(-eps, eps)).clamp(0, 1) - x
    assert torch.equal(attacks.ascent_step(x, delta, grad, alpha, eps, "Linf"), plain)
    assert torch.equal(delta, before)  # the caller's tensor is untouched
    assert torch.equal(attacks.clamp_to_image(x, delta), (x + delta).clamp(0, 1) - x)
    r1 = attacks.random_init(x, eps, "Linf", torch.Generator().manual_seed(2))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) * (2 * eps) - eps
    assert torch.equal(r1, (x + u).clamp(0, 1) - x)


def test_training_pgd_makes_exactly_its_steps_and_restart_selection_keeps_batchnorm_stats():
    torch.manual_seed(0)
    net, (x, y) = CountingNet().train(), _data()
    attacks.pgd(net, x, y, 0.1, steps=3)
    assert net.calls == 3  # one restart: no extra selection forward (passes_per_batch = steps + 1 stays true)
    net.calls = 0
    stats = [net.bn.running_mean.clone(), net.bn.running_var.clone(), net.bn.num_batches_tracked.clone()]
    orig = net.forward

    def forward_after_attack(inp: torch.Tensor) -> torch.Tensor:  # record the stats around the selection forwards
        if not torch.is_grad_enabled():
            before = net.bn.running_mean.clone()
            out = orig(inp)
            assert torch.equal(before, net.bn.running_mean)
            return out
        return orig(inp)

    net.forward = forward_after_attack  # type: ignore[method-assign]
    attacks.pgd(net, x, y, 0.1, steps=2, restarts=2)
    assert net.calls == 2 * 2 + 2  # steps per restart + one selection forward per restart
    assert net.bn.training and net.bn.track_running_stats  # restored
    assert not torch.equal(stats[0], net.bn.running_mean)  # the attack steps themselves ran in train mode
    assert int(net.bn.num_batches_tracked) == int(stats[2]) + 4  # ... and only they were tracked


def test_optimizer_stepper_steps_the_torch_optimizer_and_writes_lr_only_on_change():
    from robustify.config import build_config
    from robustify.train.optim import OptimizerStepper, _plain_optimizer, build_optimizer, step_autocast
    from robustify.train.trainer import make_accelerator

    cfg = build_config("quickstart", ["schedule.name=constant"])
    acc = make_accelerator(cfg)
    net = CountingNet()
    model, opt = acc.prepare(net, build_optimizer(net, cfg))
    assert _plain_optimizer(acc, opt) is opt.optimizer  # no scaler, no XLA: the wrapper adds nothing
    assert (step_autocast(acc) is contextlib.nullcontext) == (acc.mixed_precision == "no")
    stepper = OptimizerStepper(acc, model, opt, cfg, total_opt_steps=4)
    x, y = _data()
    w0 = net.fc.weight.detach().clone()
    for _ in range(2):
        stepper(torch.nn.functional.cross_entropy(model(x), y))
    assert stepper.opt_steps == 2 and not torch.equal(w0, net.fc.weight)
    assert all(p.grad is None for p in net.parameters())  # zero_grad(set_to_none=True)
    assert [g["lr"] for g in opt.param_groups] == [cfg.schedule.lr] * 2
