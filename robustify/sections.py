"""The config sections whose checks belong to a registry above the shared layer: ``data`` (the data sources),
``method`` (the methods), ``schedule`` (the schedules) and ``options`` (the run options, train/options/). Each
registry registers its section's check here when it is imported (:func:`register`); ``config.validate`` runs them
(:func:`checks`). The options registry also registers its units here (:func:`register_option`), so the record and
the card (publish/, a layer below train/) ask each option for its record fields and card lines (:func:`options`)
without naming any option; and the keys they declare (:func:`declare`: which keys only mean something against an
adversary, which a stage may or may not change), so config.py holds no option's key table; and the training
precisions the options implement themselves (``declared("precision")``: value -> the option), so the config's choice
check, the CLI, the record, the card and the benchmarks list them without naming one.

Why registration: ``config.py`` sits below the wings (they import its dataclasses), so it may not import them, not
even by a module name in a string (that was an import cycle config -> train that no walk of the imports could see).
The registries register themselves instead, and the package facade (``robustify/__init__.py``, which Python runs
before any module of the package) names them once, in a loader that runs the first time a config is checked: a
config built by ``robustify.config.build_config`` in a fresh process is checked exactly as the CLI checks it.

Must not: import a registry (the facade names them), or hold a section's rules (each registry owns its own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OWNED = ("data", "method", "schedule", "options")  # the sections a registry checks, in the order their checks run

Check = Callable[[Any], None]  # takes the FinetuneConfig; raises ConfigError (may fill a default, e.g. data.eval_split)

_checks: dict[str, Check] = {}
_loaders: list[Callable[[], None]] = []
_options: dict[str, Any] = {}
# keys the registries declare, by kind: "adversarial_only" (key -> its off value), "fixed" (keys a stage may not
# change), "stage" (model keys a stage may change), "precision" (train.mixed_precision values -> the option that
# implements each)
DECLARED = ("adversarial_only", "fixed", "stage", "precision")
_declared: dict[str, dict[str, Any]] = {kind: {} for kind in DECLARED}


def register(section: str, check: Check) -> None:
    """Called by the registry that owns ``section`` when it is imported."""
    if section not in OWNED:
        raise ValueError(f"section {section!r} has no registry owner; add it to sections.OWNED")
    _checks[section] = check


def load_with(loader: Callable[[], None]) -> None:
    """Run ``loader`` (it imports the registries) before the checks are first asked for (the facade's call)."""
    _loaders.append(loader)


def register_option(name: str, unit: Any) -> None:
    """Called by the options registry (train/options/) for each option class, in registry order."""
    _options[name] = unit


def declare(kind: str, keys: dict[str, Any]) -> None:
    """Called by a registry for the keys its units declare (an option's class attributes, train/options/base.py)."""
    if kind not in DECLARED:
        raise ValueError(f"unknown key declaration {kind!r}; one of {', '.join(DECLARED)}")
    _declared[kind].update(keys)


def declared(kind: str) -> dict[str, Any]:
    """The keys of one :data:`DECLARED` kind, from every registry, once loaded (config.expand_stages asks)."""
    load_registries()
    return dict(_declared[kind])


def load_registries() -> None:
    while _loaders:
        _loaders[0]()
        _loaders.pop(0)  # only once it succeeded: a failed import is retried (and raises again) next time


def options() -> list[Any]:
    """Every registered option class (train/options/base.py's ``Option``), in registry order, once loaded."""
    load_registries()
    return list(_options.values())


def checks() -> list[Check]:
    """Every owned section's check, in :data:`OWNED` order, once the registries are imported."""
    load_registries()
    missing = [s for s in OWNED if s not in _checks]
    if missing:  # a programming error: a registry stopped registering, or the facade stopped loading it
        raise RuntimeError(f"no check registered for config section(s) {', '.join(missing)}")
    return [_checks[s] for s in OWNED]
