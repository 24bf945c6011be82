"""robustify: make any pretrained timm backbone adversarially robust, cheaply.

``robustify.load(name_or_run_dir)`` returns the model that attacks see (normalization inside, inputs in [0,1]);
``robustify.data.get_dataset(spec, split)`` returns any data set robustify trains on as a ``datasets.Dataset``.
"""

from __future__ import annotations

from . import sections
from .version import __version__


def load(name_or_run_dir: str, num_classes: int | None = None):
    """See :func:`robustify.models.load` (imported lazily so that ``import robustify`` stays cheap)."""
    from .models import load as _load

    return _load(name_or_run_dir, num_classes=num_classes)


def _load_registries() -> None:
    """The registries that check their own config sections (robustify/sections.py), imported the first time a config
    is checked: named here, in the package's composition root, so config.py never names a wing above it, and
    imported late, so that ``import robustify`` stays cheap."""
    from .data import sources  # noqa: F401
    from .train import methods, options, schedules  # noqa: F401


sections.load_with(_load_registries)

__all__ = ["__version__", "load"]
