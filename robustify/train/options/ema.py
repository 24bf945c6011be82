"""Weight averaging: an exponential moving average of the weights (``train.ema: true``), through timm's ModelEmaV3.

The FastAT benchmark measured several AutoAttack points from averaging PGD-AT weights at almost no cost. The
average is updated after every optimizer step (the trainer's ``OptimizerStepper.after_step`` callback), and, when
enabled, it is the model the per-epoch probe measures, the best-robust selection keeps and the run folder exports;
``metrics.json`` and the ``robustness`` block record ``"weights": "ema"`` (or ``"raw"``). timm's decay warm-up is
on, so the average covers the short runs of fine-tuning too (the decay rises towards ``train.ema_decay``).

The option (:class:`EmaOption`) owns the ``train.ema_decay`` check, the run's one checkpointed average slot
(:meth:`EmaOption.run_slot`, registered once per run whatever the stages), the average's creation
(:meth:`EmaOption.prepare`), the weights it exports (:meth:`EmaOption.exported`; their name in the record and the
card's words for them: ``exported_as``, ``exported_text``) and its update after every optimizer step
(:meth:`EmaOption.attach`).

Must not: average anything but the weights the optimizer steps.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.utils.model_ema import ModelEmaV3

from ...config import TrainConfig
from ...errors import ConfigError
from .base import Option


class WeightAverage:
    """The averaged model plus the update count that drives timm's decay warm-up; checkpointable by Accelerate."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        # fp32 average whatever the training precision: (1 - decay) * (w - ema) is below bf16's resolution
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True, dtype=torch.float32)
        self.updates = 0

    @property
    def module(self) -> torch.nn.Module:
        return self.ema.module

    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        self.ema.update(model, step=self.updates)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.ema.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


class AverageSlot:
    """The run's one checkpointed weight average, registered with Accelerate once per run whatever the number of
    stages: each stage starts its own average (of the weights as that stage begins) and puts it here.

    Registering each stage's average instead would leave the earlier stages' averages registered too (Accelerate
    keeps every registered object; ``free_memory`` does not drop them): a checkpoint in stage 2 would hold two, a
    resumed process registers one, and Accelerate refuses the mismatch. A stage without ``train.ema`` saves an empty
    state here, so the number of registered objects never depends on the stage."""

    def __init__(self) -> None:
        self.average: WeightAverage | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict() if self.average is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.average is not None and state:
            self.average.load_state_dict(state)


def create(cfg: TrainConfig, model: torch.nn.Module) -> WeightAverage | None:
    """The average of ``model`` (the unwrapped module, already on its device) when ``train.ema`` is set."""
    return WeightAverage(model, cfg.ema_decay) if cfg.ema else None


def exported(average: WeightAverage | None, model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The model that is probed and exported, and its name in the run record: the average, or the raw weights."""
    return (average.module, "ema") if average is not None else (model, "raw")


class EmaOption(Option):
    """``train.ema``: the registered unit (check, run slot, average, exported weights, update hook)."""

    name = "ema"
    keys = {"train.ema": "true", "train.ema_decay": "0.999"}
    title = "a weight average, probed and exported"
    exported_as = "ema"  # the record's "weights"
    exported_text = "the exponential moving average of the weights (train.ema)"  # the card's words for them

    def __init__(self, cfg: Any, slot: AverageSlot | None = None):
        super().__init__(cfg)
        self.slot = slot  # the run's registered slot (None: the average is registered on its own in prepare)
        self.average: WeightAverage | None = None

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return bool(cfg.train.ema)

    @classmethod
    def check(cls, cfg: Any) -> None:
        if not 0 < cfg.train.ema_decay < 1:
            raise ConfigError(f"train.ema_decay={cfg.train.ema_decay:g} is outside (0, 1); use a value such as 0.999")

    @classmethod
    def run_slot(cls, stages: list[Any]) -> AverageSlot | None:
        """One checkpointed average for the whole run when any stage averages (see :class:`AverageSlot`)."""
        return AverageSlot() if any(cls.active(cfg) for cfg in stages) else None

    @classmethod
    def reset_slot(cls, slot: AverageSlot) -> None:
        slot.average = None  # a stage without an average saves an empty state (see AverageSlot)

    def prepare(self, model: torch.nn.Module, accelerator: Any) -> None:
        self.average = create(self.cfg.train, model)
        if self.slot is not None:  # registered once per run, so a resume into any stage finds one object
            self.slot.average = self.average
        else:
            accelerator.register_for_checkpointing(self.average)

    def exported(self) -> tuple[torch.nn.Module, str] | None:
        return (self.average.module, self.exported_as) if self.average is not None else None  # probed and exported

    def attach(self, ctx: Any, stepper: Any, model: torch.nn.Module) -> None:
        if self.average is None:  # the step benchmark: no run, no slot
            self.average = create(self.cfg.train, model)
        average = self.average
        stepper.after_step = lambda: average.update(model)
