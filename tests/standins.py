"""Small stand-ins for the Hub data sets robustify has recipes for, with their real schemas.

Same column names, features and split names as uoft-cs/cifar10, uoft-cs/cifar100, ILSVRC/imagenet-1k (whose test
split has no labels: all -1) and zh-plus/tiny-imagenet, PIL images of the real size, and the label names (CIFAR's
real ones; numbered stand-ins for the 1000/200/100-class sets). Pixels are random, seeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(n: int, size: tuple[int, int], seed: int, mode: str = "RGB"):
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode) for _ in range(n)]


def cifar10(n_train: int = 64, n_test: int = 32):
    import datasets

    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_NAMES)})

    def split(n: int, seed: int):
        return datasets.Dataset.from_dict({"img": _images(n, (32, 32), seed), "label": [i % 10 for i in range(n)]},
                                          features=feats)

    return datasets.DatasetDict({"train": split(n_train, 0), "test": split(n_test, 1)})


def cifar100(n_train: int = 64, n_test: int = 32):
    import datasets

    feats = datasets.Features({"img": datasets.Image(),
                               "fine_label": datasets.ClassLabel(names=[f"fine{i}" for i in range(100)]),
                               "coarse_label": datasets.ClassLabel(names=[f"coarse{i}" for i in range(20)])})

    def split(n: int, seed: int):
        return datasets.Dataset.from_dict({"img": _images(n, (32, 32), seed), "fine_label": [i % 100 for i in range(n)],
                                           "coarse_label": [i % 20 for i in range(n)]}, features=feats)

    return datasets.DatasetDict({"train": split(n_train, 2), "test": split(n_test, 3)})


def imagenet(n_train: int = 48, n_val: int = 24, n_test: int = 8):
    import datasets

    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=[f"n{i:08d}" for i in range(1000)])})

    def split(n: int, seed: int, labelled: bool = True):
        # ImageNet images vary in size and include grayscale ones
        imgs = _images(n, (80, 60), seed)
        imgs[1] = imgs[1].convert("L")
        return datasets.Dataset.from_dict({"image": imgs, "label": [i * 7 % 1000 if labelled else -1
                                                                    for i in range(n)]}, features=feats)

    return datasets.DatasetDict({"train": split(n_train, 4), "validation": split(n_val, 5),
                                 "test": split(n_test, 6, labelled=False)})


def tiny_imagenet(n_train: int = 40, n_valid: int = 20):
    import datasets

    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=[f"n{i:08d}" for i in range(200)])})

    def split(n: int, seed: int):
        return datasets.Dataset.from_dict({"image": _images(n, (64, 64), seed), "label": [i % 200 for i in range(n)]},
                                          features=feats)

    return datasets.DatasetDict({"train": split(n_train, 7), "valid": split(n_valid, 8)})


def to_parquet(dd, folder: Path, files_per_split: int = 2) -> Path:
    """Write a DatasetDict as ``<split>-0000k-of-0000n.parquet`` files, the Hub's layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, ds in dd.items():
        for k in range(files_per_split):
            ds.shard(files_per_split, k, contiguous=True).to_parquet(
                str(folder / f"{name}-{k:05d}-of-{files_per_split:05d}.parquet"))
    return folder


STANDINS = {"cifar10": cifar10, "cifar100": cifar100, "imagenet-1k": imagenet, "tiny-imagenet": tiny_imagenet}
