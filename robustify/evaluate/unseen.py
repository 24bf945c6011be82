"""Unseen threat models: a model trained for one Lp norm, attacked in the other two at their standard radii.

A Linf-trained model is often far less robust under L2 or L1 than its Linf number suggests (Croce & Hein 2021;
Singh et al. 2023 report these "unseen" threats beside the seen one), and a user who fine-tunes for one norm should
see what they gave up in the others. The radii are the ones RobustBench and Croce et al. use, chosen by the kind of
data set: CIFAR-like (small images) Linf 8/255, L2 0.5, L1 12; ImageNet-like (224 px class) Linf 4/255, L2 2.0,
L1 255 (:data:`RADII`, :func:`data_kind`).

The attack is the one the evaluation's preset names (:func:`unseen_attack`): the standard AutoAttack for the
``standard`` preset (RobustBench's evaluation at each radius), APGD-CE alone with the preset's PGD steps as its
iterations for ``quick`` (AutoAttack's own APGD, L1-APGD with its large-eps schedule for L1), and robustify's PGD
when the optional ``pyautoattack`` package is missing (labelled so). Every result is marked ``seen: false``.

Must not: present an unseen-threat number as the model's own threat model, or its attack as stronger than it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from .. import attacks
from ..publish import public
from ..publish.robustbench import DATASETS
from ..publish.runrecord import eps_text
from . import collectives
from .autoattack import VERSIONS, AutoAttackSettings, aa_work_per_example_of, package_version, run_autoattack
from .kernel import FP32, own_block, pgd_robust

RADII: dict[str, dict[str, float]] = {
    "cifar": {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0},  # RobustBench CIFAR-10; Croce & Hein 2021 (L1)
    "imagenet": {"Linf": 4 / 255, "L2": 2.0, "L1": 255.0},
}
# L1-APGD's large-eps schedule runs ceil(30%), ceil(30%) and the rest of the iterations at 3, 2 and 1 eps: fewer than
# 3 leave its last phase (the one at eps) empty or negative, so the unseen APGD never runs fewer (the label says so)
MIN_APGD_ITER = 3
KIND_TEXT = {"cifar": "CIFAR radii (small images)", "imagenet": "ImageNet radii (224 px class)"}
IMAGENET_SIDE = 128  # an unknown data set at this resolution or above is ImageNet-like (tiny-imagenet's 64 px is not)


def data_kind(data: str, input_size: tuple[int, ...] | list[int]) -> str:
    """``cifar`` or ``imagenet``: RobustBench's name for the data set when it has one, else the resolution the
    attacks perturb at (a budget in pixels means something else at 32 px than at 224 px)."""
    for name in (data, public.dataset_name(data)[0]):
        known = DATASETS.get(str(name).lower())
        if known:
            return "imagenet" if known == "imagenet" else "cifar"
    side = min(int(s) for s in list(input_size)[-2:]) if input_size else 32
    return "imagenet" if side >= IMAGENET_SIDE else "cifar"


def unseen_threats(norm: str, data: str, input_size: tuple[int, ...] | list[int]) -> list[tuple[str, float]]:
    """The threat models a model trained for ``norm`` did not see: the other norms at their standard radii."""
    radii = RADII[data_kind(data, input_size)]
    return [(other, radii[other]) for other in attacks.NORMS if other != norm]


@dataclass(frozen=True)
class UnseenAttack:
    """How the unseen threats are attacked: AutoAttack settings (pyautoattack), or robustify's PGD without it."""

    name: str  # autoattack | apgd-ce | pgd
    label: str  # what the report and the card call it
    aa: AutoAttackSettings | None = None
    pgd_steps: int = 0


def unseen_attack(preset: str, pgd_steps: int = 10, aa_overrides: dict[str, Any] | None = None) -> UnseenAttack:
    """The attack the preset names for unseen threats (module docstring). ``aa_overrides`` (tests' tiny budgets)
    change the AutoAttack budgets; the label then says ``custom``."""
    if package_version() is None:
        return UnseenAttack("pgd", f"PGD-{pgd_steps} (ce; AutoAttack's package is not installed)",
                            pgd_steps=pgd_steps)
    overrides = {k: v for k, v in (aa_overrides or {}).items() if v is not None and k != "attacks"}
    if preset == "standard":
        s = replace(VERSIONS["standard"], **overrides, **({"version": "custom"} if overrides else {}))
        return UnseenAttack("autoattack", "AutoAttack (standard)" if not overrides else "AutoAttack (custom budgets)",
                            aa=s)
    s = AutoAttackSettings(version="apgd-ce", apgd_iter=max(overrides.get("apgd_iter", pgd_steps), MIN_APGD_ITER),
                           attacks=("apgd-ce",))
    return UnseenAttack("apgd-ce", f"APGD-CE, {s.apgd_iter} iteration{'s' if s.apgd_iter != 1 else ''}", aa=s)


def threat_label(norm: str, eps: float) -> str:
    return f"{norm} eps={eps_text(eps)}"


def attack_block(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
                 attack: UnseenAttack, *, robust: torch.Tensor, seed: int, batch_size: int, device: torch.device,
                 progress: bool, offset: int = 0) -> torch.Tensor:
    """Per example of ``x, y`` (uint8, one process's block starting at subset index ``offset``): still correct
    under ``attack`` at ``norm``/``eps``, starting from ``robust`` (the clean-correct mask). CPU bool tensor."""
    if attack.aa is not None:
        res = run_autoattack(model, x, y, eps, norm, attack.aa, seed=seed, batch_size=batch_size, device=device,
                             robust=robust, progress=progress)
        return res["robust_mask"].cpu()
    out = [torch.zeros(0, dtype=torch.bool)]
    for i in range(0, y.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device).float().div(255.0) if x.dtype == torch.uint8 else \
            x[i:i + batch_size].to(device).float()
        yb = y[i:i + batch_size].to(device)
        gen = torch.Generator(device=device).manual_seed(((seed * 1_000_003 + 40) * 1_000_003 + offset + i) % 2**63)
        out.append(pgd_robust(model, xb, yb, eps, norm, attack.pgd_steps, 1, ("ce",), None, gen,
                              robust[i:i + batch_size].to(device)).cpu())
    return torch.cat(out)


def result(norm: str, eps: float, kind: str, attack: UnseenAttack, robust: int, n: int) -> dict[str, Any]:
    """One unseen threat's entry (the report's, the record's and the card's form)."""
    return {"norm": norm, "eps": eps, "threat": threat_label(norm, eps), "seen": False, "radii": kind,
            "attack": attack.name, "label": attack.label,
            "settings": ({k: v for k, v in attack.aa.__dict__.items() if k != "version"} if attack.aa is not None
                         else {"steps": attack.pgd_steps, "restarts": 1, "loss": "ce"}),
            "acc": robust / n if n else 0.0, "robust": robust, "n_examples": n}


def sharded_unseen(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, data: str,
                   input_size: tuple[int, ...] | list[int], attack: UnseenAttack, seed: int = 0, batch_size: int = 250,
                   accelerator: Any = None, device: torch.device | str = "cpu", progress: bool = True,
                   total: int | None = None) -> list[dict[str, Any]]:
    """``finetune``'s before/after measurement of the unseen threats: each process attacks its block of the
    subset (``total``: ``x, y`` are already that block, see ``own_block``), the robust counts are summed, so every
    process returns the same list, in fp32."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    device = torch.device(accelerator.device if accelerator is not None else device)
    start, end, base = own_block(x, y, batch_size, rank, world, total)
    xs, ys = x[start - base:end - base], y[start - base:end - base]
    fp32 = FP32(model)
    was_training = model.training
    model.eval()
    kind = data_kind(data, input_size)
    out = []
    try:
        with torch.no_grad():
            clean = torch.cat([torch.zeros(0, dtype=torch.bool)] + [
                (fp32(_unit(xs[i:i + batch_size]).to(device)).argmax(1) == ys[i:i + batch_size].to(device)).cpu()
                for i in range(0, ys.shape[0], batch_size)])
        for other, eps in unseen_threats(norm, data, input_size):
            mask = attack_block(fp32, xs, ys, other, eps, attack, robust=clean, seed=seed, batch_size=batch_size,
                                device=device, progress=progress and rank == 0, offset=start)
            counts = torch.tensor([int(mask.sum()), int(ys.shape[0])], device=device)
            if world > 1:
                with collectives.stage(f"unseen {other}: counts"):
                    counts = accelerator.reduce(counts, reduction="sum")
            robust, n = (int(v) for v in counts.tolist())
            out.append(result(other, eps, kind, attack, robust, n))
    finally:
        model.train(was_training)
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def work_per_example(attack: UnseenAttack, norm: str, n_classes: int) -> tuple[float, float]:
    """At most how many (forward, input-gradient) passes one example costs under ``attack`` at ``norm``: the
    estimate ``robustify eval`` prints before it starts (the cascade attacks only what is still robust, so the real
    count is usually lower)."""
    if attack.aa is None:
        return attack.pgd_steps + 1.0, float(attack.pgd_steps)
    return aa_work_per_example_of(attack.aa, norm, n_classes)
