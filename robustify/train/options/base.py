"""The option protocol: what a run option (eps warm-up, AWP, EMA, ...) owns and where it hooks into a run.

An option is a registered unit, like a method. Its class owns everything about it:

- ``active(cfg)``: whether the option is on for a stage's config (only active options are instantiated, so an option
  that is off runs no code in the step);
- ``check(cfg)``: its config keys' checks (one line naming the bad value, exit 2), and the rules that pair it with
  another option (the option that refuses holds the rule);
- ``plan_notes`` / ``extra_passes``: its cost in the dry-run plan (recipes.py asks the registry);
- ``preflight(cfg, stages, architecture_of)``: its checks that need the architecture (train/preflight.py asks);
- ``prepare_backbone(cfg, backbone, say)``: at every stage, on or off (a stage undoes what the previous one did);
- ``config_cost(cfg)``: cost fields recorded on or off (local SGD's ``local_sgd_steps``);
- ``own_precision(cfg)`` / ``build_optimizer(groups, cfg)`` / ``evaluation_model(model)``: an option that trains
  in a precision of its own (pure-bf16) names it (the Accelerator then runs without autocast), builds the optimizer
  for it and gives the fp32 copy every verdict and the export measure;
- ``record(cfg)`` / ``card_lines(record)``: its entry in the run record's ``training.options`` and its model-card
  lines (publish/ asks the registry through robustify/sections.py, never naming the option); ``cost_text(cost)``:
  its clause in the card's cost line (local SGD's averaging period); ``added_data(record)``: the training sets
  beyond the target's training split it mixed in (RobustBench's ``additional_data`` asks every option).

Its keys, declared once in its class (the config's schema, the dataclass fields, stays in robustify/config.py):

- ``keys``: its config keys, each with what ``--set``'s help shows for its value (the first: the switch), and
  ``title``: a few words on what it does (the CLI's ``--set`` help lists each option from these);
- ``adversarial_only``: keys that only mean something against an adversary, with their off value (a natural stage,
  LP-FT's linear probe, runs without them when they are set for the whole run);
- ``fixed_keys``: keys a stage may not change (the run's data); ``stage_keys``: keys of the ``model`` section a stage
  may change (``model.freeze``);
- ``precision`` (with ``precision_help``, ``precision_note``, ``precision_card``): a ``train.mixed_precision`` value
  the option implements itself, declared to robustify/sections.py, so the config's choice check, the CLI's
  ``--mixed-precision`` help, the run record and the benchmarks list it without naming it, and what each says of it;
- ``exported_as`` / ``exported_text``: the name the record gives the weights the option exports (``exported()``)
  and the card's words for them.

An instance (one per stage, built by the trainer from the stage's config) hooks into the run:

- ``run_slot(stages)``: the option's checkpointed state for the whole run (registered with Accelerate once per run,
  whatever the stages; None: none), given to each stage's instance;
- ``accelerator_kwargs(cfg)``: kwargs handlers for the run's Accelerator (a DDP communication hook);
- ``wrap(model)``: the prepared (DDP-wrapped) model, right after ``accelerator.prepare``;
- ``state_dict()`` / ``load_state_dict(state)``: per-process state saved with the method's in each checkpoint;
- ``prepare(model, accelerator)``: once the stage's model is prepared, before a resume restores the checkpoint;
- ``exported()``: the weights the probe measures and the run folder exports, when the option supplies them (EMA);
- ``setup(run)``: after the stage's model, optimizer and method exist; by default ``attach``;
- ``attach(ctx, stepper, model)``: hooks into the step's pieces (the method's StepContext, the optimizer stepper,
  the unwrapped model), as the trainer and the step benchmark (bench/steps.py) both build them;
- ``steady_state()``: the option as it runs after any warm-up of its own (what the step benchmark measures);
- ``begin_epoch(run, epoch)``: before the epoch's first minibatch;
- ``passes_now()`` / ``passes_per_batch()``: extra forward/backward passes per minibatch this epoch / when active;
- ``batch(x, y, epoch, batch)``: the minibatch the method trains on (pseudo-labelled examples appended);
- ``after_batch(run, optimizer_steps, exact)``: after each minibatch; whether a checkpoint or a stop is exact here;
- ``finish_epoch(run)``: after the epoch's last minibatch, before the guard, probe and checkpoint;
- ``step_scope(run, epoch, batch)``: a context manager around one method step (None: no step hook);
- ``history_fields(run, epoch)`` / ``cost_fields(run)``: its fields of the epoch's history row and of the cost block.

Must not: import the trainer (the run is passed in), or be named by any module but its own file, its registry line
and its docs.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar


class Option:
    """Base class: every hook does nothing; an option overrides the ones it needs."""

    name: ClassVar[str] = "base"
    keys: ClassVar[dict[str, str]] = {}
    title: ClassVar[str] = ""
    adversarial_only: ClassVar[dict[str, Any]] = {}
    fixed_keys: ClassVar[tuple[str, ...]] = ()
    stage_keys: ClassVar[tuple[str, ...]] = ()
    precision: ClassVar[str | None] = None  # a train.mixed_precision value the option implements (own_precision)
    precision_help: ClassVar[str] = ""  # what --mixed-precision's help says of it
    precision_note: ClassVar[str] = ""  # a few words after its name in the step benchmark's memory table
    precision_card: ClassVar[str] = ""  # the model card's words after "training precision VALUE", in brackets
    exported_as: ClassVar[str | None] = None  # the record's name for the weights the option exports (exported())
    exported_text: ClassVar[str] = ""  # the model card's words for those weights

    def __init__(self, cfg: Any, slot: Any = None):
        self.cfg = cfg  # the stage's FinetuneConfig
        self.slot = slot  # the option's run-level checkpointed state (run_slot), if it has one

    # --- class level: the config, the plan, the record and the card (no run needed) ------------------------------
    @classmethod
    def usage(cls) -> str:
        """The option's entry in ``--set``'s help: its switch, its other keys in brackets, its title."""
        (switch, value), *more = cls.keys.items()
        extra = f" [{' '.join(f'{k}={v}' for k, v in more)}]" if more else ""
        return f"{switch}={value}{extra} ({cls.title})"

    @classmethod
    def active(cls, cfg: Any) -> bool:
        """Whether the option is on for a stage with config ``cfg``."""
        return False

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Raise ConfigError (one line) for a bad value of the option's keys or a pairing it refuses."""

    @classmethod
    def extra_passes(cls, cfg: Any, data_passes: int) -> tuple[int, int]:
        """(extra forward/backward passes per minibatch while active, epochs it is active) for the plan."""
        return 0, 0

    @classmethod
    def extra_examples(cls, cfg: Any) -> int:
        """For the plan: examples the option appends to each minibatch of ``data.batch_size``."""
        return 0

    @classmethod
    def plan_notes(cls, stage: str, cfg: Any, data_passes: int) -> list[str]:
        """The dry-run plan's notes on what the option changes in stage ``stage``."""
        return []

    @classmethod
    def accelerator_kwargs(cls, cfg: Any) -> list[Any]:
        """Kwargs handlers the option adds to the run's Accelerator (e.g. a DDP communication hook)."""
        return []

    @classmethod
    def config_cost(cls, cfg: Any) -> dict[str, Any]:
        """metrics.json's cost fields the option records whether it is on or off (its setting)."""
        return {}

    @classmethod
    def own_precision(cls, cfg: Any) -> str | None:
        """The training precision the option implements in the weights' own dtype (recorded as the hardware's
        ``mixed_precision``; Accelerate then runs without autocast), or None: the config's, through Accelerate."""
        return None

    @classmethod
    def build_optimizer(cls, groups: list[dict[str, Any]], cfg: Any) -> Any:
        """The optimizer over ``groups`` (the decay / no-decay parameter groups) when the option needs its own (a
        Kahan-summed bf16 one), or None: robustify's (train/optim.py)."""
        return None

    @classmethod
    def evaluation_model(cls, model: Any) -> Any:
        """The model as every verdict (probe, guard, evaluation, teacher) and the export see it while the option is
        active: ``model`` itself, or an fp32 copy of it (pure-bf16)."""
        return model

    @classmethod
    def preflight(cls, cfg: Any, stages: list[Any], architecture_of: Any) -> None:
        """Checks before the run loads anything that need the architecture (``architecture_of(name)``: the timm
        architecture, or None) or the environment; ``stages``: every stage's config."""

    @classmethod
    def prepare_backbone(cls, cfg: Any, backbone: Any, say: Any) -> None:
        """At every stage, whether the option is on or off (so a stage undoes the previous stage's change), before
        the optimizer sees the parameters; ``say`` prints a line of the run's log."""

    @classmethod
    def record(cls, cfg: Any) -> dict[str, Any]:
        """The option's entries in the run record's ``training.options`` (the last stage's config)."""
        return {}

    @classmethod
    def card_lines(cls, record: Any) -> list[str]:
        """The model card's lines on the option, from the run record (a folder written before the option's
        migration reads the same: the record's fields are unchanged)."""
        return []

    @classmethod
    def cost_text(cls, cost: Any) -> str:
        """The option's clause in the model card's cost line (``"; ..."``), from the record's cost block, or ""."""
        return ""

    @classmethod
    def added_data(cls, record: Any) -> list[dict[str, Any]]:
        """The training sets beyond the target's training split the option mixed in, from the run record: each a
        mapping with ``name``, ``hub_id`` (its Hub data set, or None: the card's ``datasets`` lists it), ``size``
        (images, or None) and ``generated`` (true: made by a model trained on the target's training split only;
        false: real images), as RobustBench's ``additional_data`` reads them."""
        return []

    @classmethod
    def run_slot(cls, stages: list[Any]) -> Any:
        """The option's checkpointed state for the whole run (one object whatever the stages), or None."""
        return None

    @classmethod
    def reset_slot(cls, slot: Any) -> None:
        """A new stage begins (before its active options are built): clear what the previous stage left in the
        run-level slot."""

    # --- instance level: the hooks of a running stage ---------------------------------------------------------------
    def wrap(self, model: Any) -> None:
        """The prepared (possibly DDP-wrapped) model, right after ``accelerator.prepare``, before any step."""

    def state_dict(self) -> dict[str, Any]:
        """This process's state to save with the method's in every checkpoint (keys the option alone uses)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        """Restore from a checkpoint's per-process state; returns the entries that are not the option's."""
        return state

    def prepare(self, model: Any, accelerator: Any) -> None:
        """Once the stage's (unwrapped) model is prepared, before a resume restores the checkpoint."""

    def exported(self) -> tuple[Any, str] | None:
        """(the module the probe measures and the run folder exports, its name in the record) or None."""
        return None

    def setup(self, run: Any) -> None:
        """After the stage's model, optimizer and method are built (and a resume restored)."""
        self.attach(run.ctx, run.stepper, run.raw)

    def attach(self, ctx: Any, stepper: Any, model: Any) -> None:
        """Hook into the step's pieces: the method's StepContext, the OptimizerStepper, the unwrapped model."""

    def steady_state(self) -> None:
        """Switch to how the option runs after any warm-up of its own (the step benchmark measures that)."""

    def passes_now(self) -> int:
        """Extra forward/backward passes per minibatch in the current epoch."""
        return 0

    def passes_per_batch(self) -> int:
        """Extra forward/backward passes per minibatch while the option is active (metrics.json's cost)."""
        return 0

    def begin_epoch(self, run: Any, epoch: int) -> None:
        """Before the first minibatch of ``epoch`` (also on a resume into the middle of it)."""

    def batch(self, x: Any, y: Any, epoch: int, batch: int) -> tuple[Any, Any]:
        """The minibatch (inputs in [0, 1] on the device, labels) the method trains on."""
        return x, y

    def step_scope(self, run: Any, epoch: int, batch: int) -> contextlib.AbstractContextManager | None:
        """A context around minibatch ``batch`` of ``epoch``'s method step; None when the option has no step hook."""
        return None

    def after_batch(self, run: Any, optimizer_steps: int, exact: bool) -> bool:
        """After a minibatch that took ``optimizer_steps`` steps: whether a checkpoint (or a stop) here is exact,
        given ``exact``, the trainer's own answer (an accumulation group is complete)."""
        return exact

    def finish_epoch(self, run: Any) -> None:
        """After the epoch's last minibatch (not on an interruption)."""

    def history_fields(self, run: Any, epoch: int) -> dict[str, Any]:
        """The option's fields of ``epoch``'s history row."""
        return {}

    def cost_fields(self, run: Any) -> dict[str, Any]:
        """The option's fields of metrics.json's cost block."""
        return {}
