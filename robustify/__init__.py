"""robustify: make any pretrained timm backbone adversarially robust, cheaply.

``robustify.load(name_or_run_dir)`` returns the model that attacks see (normalization inside, inputs in [0,1]);
``robustify.data.get_dataset(spec, split)`` returns any data set robustify trains on as a ``datasets.Dataset``.
"""

from __future__ import annotations

from .version import __version__


def load(name_or_run_dir: str, num_classes: int | None = None):
    """See :func:`robustify.models.load` (imported lazily so that ``import robustify`` stays cheap)."""
    from .models import load as _load

    return _load(name_or_run_dir, num_classes=num_classes)


__all__ = ["__version__", "load"]
