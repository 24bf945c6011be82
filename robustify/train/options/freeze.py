"""Freezing parts of the backbone for transfer (``model.freeze``): ``none | backbone | stem | stages:N``.

Linear probing (``backbone``: only the classifier trains), partial fine-tuning (``stem``, or ``stages:N``: the stem
and the first N stages) and full fine-tuning (``none``), natural or adversarial, so a robust backbone can be moved
to a new task (Salman et al. 2020) or first probed and then fine-tuned (LP-FT, Kumar et al. 2022: a two-stage recipe
with ``model: {freeze: backbone}`` in its first stage). The stages are timm's own: the model's ``group_matcher``
(coarse) grouped by ``timm.models.group_parameters``, so ``stages:N`` means the same stages timm's layer-wise
learning-rate decay uses. Freezing itself is ``timm.utils.freeze`` with its BatchNorm handling: frozen BatchNorm
layers become ``FrozenBatchNorm2d`` (running statistics fixed, used in training as in evaluation), so a frozen
part computes exactly the function it computed before training.

Frozen parameters have ``requires_grad=False``: the optimizer is built after freezing from the trainable ones only
(``train.optim.build_optimizer``), so they get no optimizer state, no weight decay and stay bit-identical; AWP skips
them too. Every stage of a recipe calls :func:`apply` on the same backbone, which first undoes the previous stage's
freezing (``timm.utils.unfreeze``), so stages never inherit each other's setting. This module must not build
optimizers or touch the data; an unknown stage count is a one-line :class:`UserError`.

The option (:class:`FreezeOption`) owns the key's check, the preflight check against the architecture's groups, the
backbone's freezing at each stage, the plan's note, the history's ``freeze`` field, the record and the card line.

Must not: give a frozen parameter optimizer state or change it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from ...errors import ConfigError, UserError
from .base import Option

SPEC = re.compile(r"none|backbone|stem|stages:[1-9][0-9]*")


def _groups(backbone: torch.nn.Module) -> list[list[str]]:
    """timm's coarse parameter groups in order (stem first, the classifier's group last)."""
    from timm.models import group_parameters

    matcher = backbone.group_matcher(coarse=True) if hasattr(backbone, "group_matcher") else None
    if not matcher:
        raise UserError(f"model.freeze: {type(backbone).__name__} has no timm group_matcher, so its stem and stages "
                        "are not known; use model.freeze=backbone or none")
    grouped = group_parameters(backbone, matcher)
    return [grouped[k] for k in sorted(grouped)]


def frozen_names(backbone: torch.nn.Module, spec: str) -> list[str]:
    """The parameter names ``spec`` freezes (empty for ``none``)."""
    if spec == "none":
        return []
    head = {id(p) for p in backbone.get_classifier().parameters()} if hasattr(backbone, "get_classifier") else set()
    names = [n for n, p in backbone.named_parameters() if id(p) not in head]
    if spec == "backbone":
        return names
    groups = _groups(backbone)
    stages = [g for g in groups[1:] if not any(id(dict(backbone.named_parameters())[n]) in head for n in g)]
    count = 0 if spec == "stem" else int(spec.split(":", 1)[1])
    if count > len(stages):
        raise UserError(f"model.freeze={spec!r}: {type(backbone).__name__} has {len(stages)} stages in timm's "
                        f"group_matcher; use stages:1 to stages:{len(stages)}, stem or backbone")
    keep = set(groups[0]).union(*[set(g) for g in stages[:count]])
    return [n for n in names if n in keep]


MARK = "_robustify_frozen"  # set on a backbone this module froze, so the next stage knows to undo it


def apply(backbone: torch.nn.Module, spec: str) -> dict[str, int] | None:
    """Undo this module's earlier freezing, then freeze what ``spec`` names (through ``timm.utils``); returns the
    counts of trainable and frozen parameter elements for the run's log line (None: ``none`` and nothing to undo)."""
    from timm.utils import freeze, unfreeze

    if getattr(backbone, MARK, False):
        unfreeze(backbone)  # every parameter trainable, FrozenBatchNorm2d back to BatchNorm2d (the previous stage's)
        setattr(backbone, MARK, False)
    names = frozen_names(backbone, spec)
    if not names:
        return None
    modules = sorted({n.rsplit(".", 1)[0] for n in names if "." in n})
    freeze(backbone, modules)  # parameters off, BatchNorm layers among them frozen (running statistics kept)
    for n, p in backbone.named_parameters():  # parameters on the model itself (ViT's cls_token, pos_embed)
        if "." not in n and n in names:
            p.requires_grad_(False)
    setattr(backbone, MARK, True)
    frozen = sum(p.numel() for p in backbone.parameters() if not p.requires_grad)
    frozen += sum(b.numel() for m in backbone.modules() if type(m).__name__ == "FrozenBatchNorm2d"
                  for b in (m.weight, m.bias))
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


class FreezeOption(Option):
    """``model.freeze``: the registered unit (a stage with ``none`` still undoes the previous stage's freezing)."""

    name = "freeze"
    keys = {"model.freeze": "none|backbone|stem|stages:N"}
    title = "frozen parameters get no optimizer step"
    stage_keys = ("model.freeze",)  # the one model key a stage may change (LP-FT: probe frozen, then all)

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return cfg.model.freeze != "none"

    @classmethod
    def check(cls, cfg: Any) -> None:
        cfg.model.freeze = str(cfg.model.freeze).strip()
        if not SPEC.fullmatch(cfg.model.freeze):
            raise ConfigError(f"model.freeze={cfg.model.freeze!r} is not accepted; choose one of: none, backbone, "
                              "stem, stages:N (N >= 1: the stem and the first N stages)")

    @classmethod
    def preflight(cls, cfg: Any, stages: list[Any], architecture_of: Callable[[str], str | None]) -> None:
        """Every stage's ``model.freeze`` names groups the architecture has (one line otherwise, as the run says
        it), on the architecture built on the meta device (no weights, no memory)."""
        specs = {stage.model.freeze for stage in stages} - {"none", "backbone"}
        if not specs:
            return
        arch = architecture_of(cfg.model.name)
        if arch is None:
            return  # a Hub model: checked when the run has loaded it
        import timm

        with torch.device("meta"):
            backbone = timm.create_model(arch, pretrained=False)
        for spec in sorted(specs):
            frozen_names(backbone, spec)

    @classmethod
    def prepare_backbone(cls, cfg: Any, backbone: torch.nn.Module, say: Callable[[str], None]) -> None:
        frozen = apply(backbone, cfg.model.freeze)  # before the optimizer sees the parameters
        if frozen is not None:
            say(f"robustify: model.freeze={cfg.model.freeze}: {frozen['trainable']:,} parameters train, "
                f"{frozen['frozen']:,} are frozen")

    @classmethod
    def plan_notes(cls, stage: str, cfg: Any, data_passes: int) -> list[str]:
        return [f"stage {stage}: model.freeze={cfg.model.freeze}: frozen parameters get no gradient step (the "
                "passes above still count whole forward/backward passes)"]

    @classmethod
    def record(cls, cfg: Any) -> dict[str, Any]:
        return {"freeze": cfg.model.freeze} if cfg.model.freeze != "none" else {}

    @classmethod
    def card_lines(cls, record: Any) -> list[str]:
        spec = (record.training.options or {}).get("freeze")
        return [] if spec is None else [f"- Frozen parameters (model.freeze, last stage): `{spec}`."]

    def history_fields(self, run: Any, epoch: int) -> dict[str, Any]:
        return {"freeze": self.cfg.model.freeze}
