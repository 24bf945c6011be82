"""Run options, one file per option, registered by name (like the methods in train/methods/).

An option (eps warm-up, AWP, ...) is a class of :class:`base.Option` that owns its config checks, its cost in the
dry-run plan, its setup, its hooks in the step, its history and record fields and its card lines. The trainer builds
the active options of a stage (:func:`active`) and calls their hooks in one place each; an option that is off is not
in the list and runs no code. Adding an option is adding a file here and one line below.

Must not: import the trainer, or hold one option's rules outside that option's file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ... import sections
from .auto_augment import AutoAugmentOption
from .awp import AwpOption
from .base import Option
from .ema import EmaOption
from .eps_warmup import EpsWarmup
from .extra_data import ExtraDataOption
from .fosc import FoscOption
from .freeze import FreezeOption
from .grad_compression import GradCompression
from .label_smoothing import LabelSmoothingOption
from .local_sgd import LocalSgdOption
from .mixup import MixupOption
from .pseudo_labels import UnlabeledOption
from .pure_bf16 import PureBf16

# the registry, in the order the checks run and the plan, record and card list the options
# (FOSC first: its history fields come right after the method's, where they were before it was an option)
OPTIONS: dict[str, type[Option]] = {unit.name: unit for unit in (FoscOption, EpsWarmup, AwpOption, EmaOption,
                                                                    FreezeOption, UnlabeledOption, ExtraDataOption,
                                                                    LocalSgdOption, GradCompression, PureBf16,
                                                                    LabelSmoothingOption, MixupOption,
                                                                    AutoAugmentOption)}


def check(cfg: Any) -> None:
    """Every option's config checks (the ``options`` section of robustify/sections.py)."""
    for unit in OPTIONS.values():
        unit.check(cfg)


def preflight(cfg: Any, stages: list[Any], architecture_of: Any) -> None:
    """Every option's checks that need the architecture or the environment (train/preflight.py)."""
    for unit in OPTIONS.values():
        unit.preflight(cfg, stages, architecture_of)


def prepare_backbone(cfg: Any, backbone: Any, say: Any) -> None:
    """Every option's change to the stage's backbone (on or off: a stage undoes the previous stage's)."""
    for unit in OPTIONS.values():
        unit.prepare_backbone(cfg, backbone, say)


def accelerator_kwargs(cfg: Any) -> list[Any]:
    """The kwargs handlers the options add to the run's Accelerator (a DDP communication hook)."""
    return [kw for unit in OPTIONS.values() for kw in unit.accelerator_kwargs(cfg)]


def own_precision(cfg: Any) -> str | None:
    """The training precision an active option implements itself (pure-bf16), or None (Accelerate's autocast)."""
    return next((p for unit in OPTIONS.values() if unit.active(cfg) for p in [unit.own_precision(cfg)] if p), None)


def checkpointed_keys() -> list[str]:
    """The switch keys of the options with run-level checkpointed state (a run slot), for a message about a
    checkpoint that lacks one."""
    return [next(iter(unit.keys)) for unit in OPTIONS.values()
            if getattr(unit.run_slot, "__func__", None) is not Option.run_slot.__func__]


def build_optimizer(groups: list[dict[str, Any]], cfg: Any) -> Any:
    """An active option's own optimizer over ``groups`` (pure-bf16's Kahan-summed one), or None."""
    return next((o for unit in OPTIONS.values() if unit.active(cfg) for o in [unit.build_optimizer(groups, cfg)]
                 if o is not None), None)


def evaluation_model(cfg: Any, model: Any) -> Any:
    """The model every verdict and the export measure: ``model``, or the fp32 copy an active option gives."""
    for unit in OPTIONS.values():
        if unit.active(cfg):
            model = unit.evaluation_model(model)
    return model


def config_cost(cfg: Any) -> dict[str, Any]:
    """metrics.json's cost fields every option records, on or off (its setting)."""
    return {k: v for unit in OPTIONS.values() for k, v in unit.config_cost(cfg).items()}


def run_slots(stages: list[Any], accelerator: Any) -> dict[str, Any]:
    """Each option's run-level checkpointed state, registered with Accelerate once per run whatever the stages
    (``stages``: every stage's config), in registry order."""
    slots = {}
    for unit in OPTIONS.values():
        slot = unit.run_slot(stages)
        if slot is not None:
            accelerator.register_for_checkpointing(slot)
            slots[unit.name] = slot
    return slots


def active(cfg: Any, slots: dict[str, Any] | None = None) -> list[Option]:
    """The options that are on for a stage with config ``cfg``, built for it with their run-level ``slots`` (empty:
    no option code runs)."""
    slots = slots or {}
    for name, slot in slots.items():  # a new stage: what the previous stage left in a run slot is cleared
        OPTIONS[name].reset_slot(slot)
    return [unit(cfg, slots.get(unit.name)) for unit in OPTIONS.values() if unit.active(cfg)]


def exported(options: list[Option], model: Any) -> tuple[Any, str]:
    """The module the probe measures and the run folder exports, and its name in the record: an option's (the
    weight average), or the trained weights themselves (``"raw"``)."""
    for opt in options:
        supplied = opt.exported()
        if supplied is not None:
            return supplied
    return model, "raw"


def plan_notes(stage: str, cfg: Any, data_passes: int) -> list[str]:
    """The dry-run notes of every active option of one stage."""
    return [note for unit in OPTIONS.values() if unit.active(cfg) for note in unit.plan_notes(stage, cfg, data_passes)]


def extra_passes(cfg: Any, data_passes: int) -> tuple[int, int]:
    """For the plan: (extra passes per minibatch while active, extra passes per minibatch summed over the stage's
    ``data_passes`` epochs) of the stage's active options."""
    per_batch, total = 0, 0
    for unit in OPTIONS.values():
        if unit.active(cfg):
            passes, epochs = unit.extra_passes(cfg, data_passes)
            per_batch, total = per_batch + passes, total + passes * epochs
    return per_batch, total


def extra_examples(cfg: Any) -> int:
    """For the plan: examples the stage's active options append to each minibatch (pseudo-labelled ones)."""
    return sum(unit.extra_examples(cfg) for unit in OPTIONS.values() if unit.active(cfg))


def step_scope(options: list[Option], run: Any, epoch: int, batch: int) -> contextlib.AbstractContextManager:
    """The active options' step hooks around one method step, in registry order."""
    scopes = [s for s in (opt.step_scope(run, epoch, batch) for opt in options) if s is not None]
    if not scopes:
        return contextlib.nullcontext()
    return scopes[0] if len(scopes) == 1 else stacked(scopes)


@contextlib.contextmanager
def stacked(scopes: list[contextlib.AbstractContextManager]) -> Iterator[None]:
    """Several options' step hooks entered in order when the step starts, left in reverse order after it."""
    with contextlib.ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(scope)
        yield


for _unit in OPTIONS.values():
    sections.register_option(_unit.name, _unit)
    sections.declare("adversarial_only", _unit.adversarial_only)
    sections.declare("fixed", dict.fromkeys(_unit.fixed_keys))
    sections.declare("stage", dict.fromkeys(_unit.stage_keys))
    if _unit.precision:  # a training precision of its own: the config's choices, the CLI, record and card list it
        sections.declare("precision", {_unit.precision: _unit})
sections.register("options", check)  # config.validate runs it (robustify/sections.py)

__all__ = ["OPTIONS", "Option", "accelerator_kwargs", "active", "build_optimizer", "check", "checkpointed_keys",
           "config_cost", "evaluation_model", "exported", "extra_examples", "extra_passes", "own_precision",
           "plan_notes", "prepare_backbone", "preflight", "run_slots", "step_scope"]
