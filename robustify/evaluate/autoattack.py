"""AutoAttack (Croce & Hein, ICML 2020) through the ``pyautoattack`` package, run the way RobustBench runs it.

Why a package and not our own code: AutoAttack's value is that everyone runs *the same* attacks with *the same* fixed
settings, so numbers are comparable with RobustBench. ``pyautoattack`` is fra31/auto-attack packaged for PyPI (MIT
licence, pure PyTorch, CPU and GPU, no downloads), so we use its four attack classes unchanged and only drive the
cascade ourselves, to get a progress bar per attack, per-attack robust accuracy and a per-example record for the
gradient-masking checks. It is an optional extra, installed from the clone with
``pip install -e ".[autoattack]"`` (never by the package name from PyPI: another project owns that name there).

The cascade (``version="standard"``, as in RobustBench): APGD-CE (100 iterations), APGD-T (targeted DLR loss,
9 target classes x 100 iterations), FAB-T (9 target classes x 100 iterations), Square (5000 queries). Each attack
runs only on the examples still robust after the previous ones, and robust accuracy is reported after each attack.
``version="quick"`` runs the same four attacks with smaller budgets; it is labelled as such everywhere and is not
comparable with RobustBench.

``norm="L1"`` (Croce & Hein 2021) runs the L1 versions of the same four attacks with AutoAttack's own L1 settings
(APGD's large-eps schedule, 5 restarts of APGD-CE, 5 targets for APGD-T), as AutoAttack's standard version runs L1
(Croce & Hein 2021). RobustBench has no L1 leaderboard (Linf and L2 only, plus corruptions), so an L1 figure is
comparable with papers that ran this same version, not with a RobustBench board.

Must not: change the attack's settings behind the user's back (a non-standard version is named so).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ..errors import UserError
from .kernel import FP32, bar_for, own_block

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
INSTALL = 'pip install -e ".[autoattack]"'  # from the clone: the PyPI name "robustify" is another project's
MISSING = f"--attack autoattack needs the optional package pyautoattack: {INSTALL} (in your robustify clone)"


@dataclass(frozen=True)
class AutoAttackSettings:
    """Budgets of the four attacks; ``standard`` is AutoAttack's own (fixed, parameter-free) configuration."""

    version: str = "standard"
    apgd_iter: int = 100
    apgd_restarts: int = 1
    target_classes: int = 9  # APGD-T and FAB-T: the top-k other classes tried as targets
    fab_iter: int = 100
    square_queries: int = 5000
    square_p_init: float = 0.8
    attacks: tuple[str, ...] = ATTACKS


VERSIONS: dict[str, AutoAttackSettings] = {
    "standard": AutoAttackSettings(),
    # the same ensemble at ~1/20 of the cost, for quick looks on a CPU; never reported as AutoAttack "standard"
    "quick": AutoAttackSettings(version="quick", apgd_iter=20, target_classes=3, fab_iter=10, square_queries=200),
}


def settings_for(version: str, **overrides: Any) -> AutoAttackSettings:
    """A named version, optionally with budgets changed (the result is then called ``custom``)."""
    if version not in VERSIONS:
        raise UserError(f"AutoAttack version {version!r} is not accepted; choose one of: {', '.join(VERSIONS)}")
    s = VERSIONS[version]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        s = replace(s, version="custom", **overrides)
    unknown = [a for a in s.attacks if a not in ATTACKS]
    if unknown:
        raise UserError(f"AutoAttack attack {unknown[0]!r} is not accepted; choose from: {', '.join(ATTACKS)}")
    return s


def package_version() -> str | None:
    """The installed pyautoattack version, or None when the optional extra is missing."""
    try:
        import pyautoattack
    except ImportError:
        return None
    return getattr(pyautoattack, "__version__", "unknown")


def require() -> str:
    version = package_version()
    if version is None:
        raise UserError(MISSING)
    return version


@contextlib.contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """No weight gradients while attacking: FAB calls ``.backward()``, which would otherwise fill ``param.grad``."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the input gradient contiguous: pyautoattack reshapes gradients with ``.view``,
    which fails on channels-last or permuted layouts."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _Contiguous(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_ContiguousGrad.apply(x.contiguous()))


class _Collect(logging.Handler):
    """Keeps pyautoattack's warnings (e.g. 'points with zero gradient') for the report instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg not in self.messages:
            self.messages.append(msg)


def _attacks(model: torch.nn.Module, eps: float, norm: str, s: AutoAttackSettings, n_classes: int, seed: int,
             device: torch.device, logger: logging.Logger) -> dict[str, Any]:
    """The four attack objects with AutoAttack's constructor arguments (autoattack.py in fra31/auto-attack)."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    targets = max(1, min(s.target_classes, n_classes - 1))
    # L1 (AutoAttack's _set_version for norm="L1"): APGD with the large-eps schedule (3, 2, 1 eps over 30/30/40% of
    # the iterations), 5 restarts of APGD-CE and 5 target classes for APGD-T; FAB-T and Square are unchanged
    l1 = norm == "L1"
    apgd_restarts = max(s.apgd_restarts, 5) if l1 and s.version == "standard" else s.apgd_restarts
    apgd_targets = min(targets, 5) if l1 else targets
    apgd = APGDAttack(model, n_restarts=apgd_restarts, n_iter=s.apgd_iter, verbose=False, eps=eps, norm=norm,
                      eot_iter=1, rho=0.75, seed=seed, loss="ce", device=device, logger=logger, use_largereps=l1)
    apgd_t = APGDAttack_targeted(model, n_restarts=1, n_iter=s.apgd_iter, verbose=False, eps=eps, norm=norm,
                                 eot_iter=1, rho=0.75, seed=seed, device=device, n_target_classes=apgd_targets,
                                 logger=logger, use_largereps=l1)
    fab_t = FABAttack_PT(model, n_restarts=1, n_iter=s.fab_iter, eps=eps, seed=seed, norm=norm, verbose=False,
                         targeted=True, n_target_classes=targets, device=device)
    # AutoAttack keeps Square's p-schedule for 10k queries (resc_schedule=False); a smaller budget compresses it
    square = SquareAttack(model, p_init=s.square_p_init, n_queries=s.square_queries, eps=eps, norm=norm,
                          n_restarts=1, seed=seed, verbose=False, device=device,
                          resc_schedule=s.square_queries < 5000)
    return {"apgd-ce": apgd, "apgd-t": apgd_t, "fab-t": fab_t, "square": square}


def _norm_of(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if norm == "L1":
        return flat.abs().sum(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(p=2, dim=1)


def run_autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
                   settings: AutoAttackSettings | None = None, seed: int = 0, batch_size: int = 250,
                   device: torch.device | str = "cpu", robust: torch.Tensor | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Run the AutoAttack cascade on ``x`` ([0,1], any device or uint8 on the CPU) and labels ``y``.

    ``robust`` (optional, bool per example) starts the cascade from examples already known to be correctly
    classified. Returns ``autoattack_acc``, per-attack robust accuracy (cumulative, as RobustBench prints it), the
    settings, per-attack seconds and ``robust_mask`` / ``square_only_mask`` (per-example tensors on the CPU, used by
    the checks; callers drop them before writing JSON).
    """
    package = require()
    s = settings or VERSIONS["standard"]
    device = torch.device(device)
    n = y.shape[0]
    was_training = model.training
    model.eval()
    logger = logging.getLogger("robustify.evaluate.autoattack")
    collect = _Collect()
    logger.addHandler(collect)
    logger.propagate = False
    per_attack: dict[str, float] = {}
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    try:
        with _frozen(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if robust is None:
                robust = _clean_correct(model, x, y, batch_size, device)
            robust = robust.clone().cpu()
            per_attack["clean"] = int(robust.sum()) / n if n else 0.0
            n_classes = _num_classes(model, x, device)
            attacks = _attacks(_Contiguous(model), eps, norm, s, n_classes, seed, device, logger)
            before_square = robust.clone()
            for name in s.attacks:
                t0 = time.perf_counter()
                if name == "apgd-t" and n_classes < 4:
                    skipped[name] = f"the targeted DLR loss needs at least 4 classes (the model has {n_classes})"
                    continue
                if name == "square":
                    before_square = robust.clone()
                idx = robust.nonzero().flatten()
                bar = bar_for(idx.numel(), f"autoattack {name}", progress)
                for start in range(0, idx.numel(), batch_size):
                    b = idx[start:start + batch_size]
                    xb = _unit(x[b]).to(device).contiguous()
                    yb = y[b].to(device)
                    adv = _perturb(attacks[name], name, xb, yb, seed)
                    with torch.no_grad():
                        inside = _norm_of(adv - xb, norm) <= eps * (1 + 1e-4) + 1e-6
                        in_box = (adv >= 0).flatten(1).all(1) & (adv <= 1).flatten(1).all(1)
                        fooled = (model(adv).argmax(1) != yb) & inside & in_box
                    robust[b[fooled.cpu()]] = False
                    bar.update(b.numel())
                    bar.set_postfix(robust=f"{robust.float().mean().item():.1%}")
                bar.close()
                per_attack[name] = int(robust.sum()) / n if n else 0.0
                seconds[name] = round(time.perf_counter() - t0, 2)
    finally:
        logger.removeHandler(collect)
        model.train(was_training)
    square_only = before_square & ~robust if "square" in per_attack else torch.zeros_like(robust)
    return {
        "autoattack_acc": int(robust.sum()) / n if n else 0.0,
        "autoattack": {
            "package": f"pyautoattack {package}", "version": s.version, "norm": norm, "eps": eps, "seed": seed,
            "attacks": [a for a in s.attacks if a not in skipped], "per_attack": per_attack,
            "settings": {k: v for k, v in asdict(s).items() if k not in ("version", "attacks")},
            "skipped": skipped, "warnings": collect.messages, "seconds": seconds, "n_examples": n,
        },
        "robust_mask": robust,
        "square_only_mask": square_only,
    }


def _perturb(attack: Any, name: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    """One batch through one attack, set up as AutoAttack's ``run_standard_evaluation`` sets it up."""
    attack.seed = seed
    if name == "fab-t":
        attack.targeted = True
        attack.n_restarts = 1
    return attack.perturb(x, y).detach()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def _clean_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   device: torch.device) -> torch.Tensor:
    out = [model(_unit(x[i:i + batch_size]).to(device)).argmax(1).cpu() == y[i:i + batch_size].cpu()
           for i in range(0, y.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def _num_classes(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> int:
    return int(model(_unit(x[:1]).to(device)).shape[-1]) if x.shape[0] else 0


def sharded_autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                       version: str = "standard", seed: int = 0, batch_size: int = 250, accelerator: Any = None,
                       device: torch.device | str = "cpu", progress: bool = True,
                       total: int | None = None) -> dict[str, Any]:
    """AutoAttack robust accuracy, each process running the cascade on its shard; per-attack counts summed.
    ``total``: ``x, y`` are already this process's block of a ``total``-example subset (see ``own_block``)."""
    require()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    device = torch.device(accelerator.device if accelerator is not None else device)
    start, end, base = own_block(x, y, batch_size, rank, world, total)
    mine = slice(start - base, end - base)
    res = run_autoattack(FP32(model), x[mine], y[mine], eps, norm, settings_for(version), seed=seed,
                         batch_size=batch_size, device=device, progress=progress and rank == 0)
    aa = res["autoattack"]
    names = list(aa["per_attack"])
    n_local = end - start
    local = torch.tensor([round(aa["per_attack"][k] * n_local) for k in names] + [res["robust_mask"].sum().item(),
                                                                                  n_local], device=device)
    if world > 1:
        local = accelerator.reduce(local, reduction="sum")
    *per, robust_n, total = local.tolist()
    aa = dict(aa, per_attack={k: c / max(total, 1) for k, c in zip(names, per, strict=True)}, n_examples=total,
              processes=world, precision="fp32")
    return {"autoattack_acc": robust_n / max(total, 1), "autoattack": aa, "autoattack_version": version}


def aa_work_per_example_of(s: AutoAttackSettings, norm: str, n_classes: int) -> tuple[float, float]:
    """At most how many (forward, input-gradient) passes one example costs in the cascade ``s`` (each attack runs
    only on what the previous ones left, so the real count is lower): for the estimate ``robustify eval`` prints."""
    targets = max(1, min(s.target_classes, n_classes - 1))
    restarts = max(s.apgd_restarts, 5) if norm == "L1" and s.version == "standard" else s.apgd_restarts
    fwd = grad = 0.0
    for name in s.attacks:
        if name == "apgd-ce":
            fwd, grad = fwd + restarts * (s.apgd_iter + 1), grad + restarts * (s.apgd_iter + 1)
        elif name == "apgd-t":
            k = min(targets, 5) if norm == "L1" else targets
            fwd, grad = fwd + k * (s.apgd_iter + 1), grad + k * (s.apgd_iter + 1)
        elif name == "fab-t":  # a jacobian of two logits and a few forwards per iteration
            fwd, grad = fwd + targets * s.fab_iter * 3, grad + targets * s.fab_iter * 2
        elif name == "square":
            fwd += s.square_queries
    return fwd, grad
