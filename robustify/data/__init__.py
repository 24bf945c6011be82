"""Data sets through 🤗 ``datasets``, the one preprocessing, and the loaders of a run.

- :mod:`.sources`: every ``--data`` spec -> a split with ``image`` (PIL) and ``label`` (ClassLabel) columns, checked;
- :mod:`.preprocessing`: :class:`Preprocessing` (input size, interpolation, crop) shared by training, the probe,
  evaluation and the export, and the transforms;
- :mod:`.loaders`: :func:`build_loaders` -> :class:`Loaders` (sharded, exactly resumable training batches; the fixed
  evaluation subset; the probe), in memory, through DataLoader workers, or streamed.
"""

from .loaders import Loaders, build_loaders, epoch_batches, use_streaming
from .preprocessing import (
    Preprocessing,
    decode_all,
    eval_transform,
    example_seed,
    flip_crop,
    to_rgb,
    to_unit,
    train_transform,
)
from .sources import (
    ALIASES,
    QUICKSTART_DIR,
    default_eval_split,
    get_dataset,
    label_names,
    num_classes,
    read_npz,
)

__all__ = [
    "ALIASES", "QUICKSTART_DIR", "Loaders", "Preprocessing", "build_loaders", "decode_all", "default_eval_split",
    "epoch_batches", "eval_transform", "example_seed", "flip_crop", "get_dataset", "label_names", "num_classes",
    "read_npz", "to_rgb", "to_unit", "train_transform", "use_streaming",
]
