"""Where examples come from: every ``--data`` spec becomes a 🤗 ``datasets`` split with an ``image`` (PIL) and a
``label`` (ClassLabel) column.

Specs:

- ``quickstart``: the bundled UCI digits (offline);
- aliases of Hub data sets with their real schemas (:data:`ALIASES`): ``cifar10`` (uoft-cs/cifar10: ``img``,
  ``label``), ``cifar100`` (uoft-cs/cifar100: ``img``, ``fine_label`` by default, ``coarse_label`` with
  ``data.label_column=coarse_label``), ``imagenet-1k`` (ILSVRC/imagenet-1k, gated; evaluated on ``validation``),
  ``tiny-imagenet`` (zh-plus/tiny-imagenet; evaluated on ``valid``), ``mnist``;
- ``ORG/NAME``: any Hub image-classification data set (``data.image_column`` / ``data.label_column`` when the
  columns are not found by their features);
- ``imagefolder:PATH``: class folders, with split folders (``train/``, ``test/`` or ``val/``...) or without;
- ``disk:PATH`` (or a bare folder written by ``save_to_disk``), ``parquet:PATH_OR_GLOB``, ``npz:PATH``.

Local sources with a single split (a plain folder of class folders, one parquet file, a ``save_to_disk`` Dataset)
have no evaluation split of their own: robustify then holds out a fixed fraction (``data.holdout``, default 10%) with
``datasets``' seeded ``train_test_split``; the train split is the rest, so the two never overlap, and the choice is
recorded with the evaluation subset. Streaming needs real split names.

Arrays (npz) and images are checked before training: labels must be integers in 0..K-1 (negative labels, such as
ImageNet's unlabelled test split, floats and one-hot rows are refused with one line saying what is accepted); images
of any common layout (N,H,W), (N,H,W,1|3|4), NCHW, uint8/uint16/float are converted to 8-bit RGB; unreadable image
files in an image folder are skipped with a count, before the first epoch.

Must not: decode images for training (the loaders do) or reach the network outside datasets/huggingface_hub.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import sections
from ..errors import UserError, first_line

QUICKSTART_DIR = Path(__file__).resolve().parent.parent / "assets" / "quickstart"


class Alias(NamedTuple):
    """A Hub data set robustify knows by a short name, with its real column names and evaluation split."""

    repo: str
    image_column: str
    label_column: str
    eval_split: str
    large: bool = False  # streamed by default (data.streaming: auto)
    columns: tuple[str, ...] = ()  # every column of the Hub data set (for offline checks)
    splits: tuple[str, ...] = ("train", "test")
    unlabelled: tuple[str, ...] = ()  # splits whose labels are all -1


ALIASES: dict[str, Alias] = {
    "cifar10": Alias("uoft-cs/cifar10", "img", "label", "test", columns=("img", "label")),
    "cifar100": Alias("uoft-cs/cifar100", "img", "fine_label", "test", columns=("img", "fine_label", "coarse_label")),
    "mnist": Alias("ylecun/mnist", "image", "label", "test", columns=("image", "label")),
    "imagenet-1k": Alias("ILSVRC/imagenet-1k", "image", "label", "validation", large=True, columns=("image", "label"),
                         splits=("train", "validation", "test"), unlabelled=("test",)),
    "tiny-imagenet": Alias("zh-plus/tiny-imagenet", "image", "label", "valid", columns=("image", "label"),
                           splits=("train", "valid")),
}
SPLIT_SYNONYMS = {"test": ("test", "validation", "valid", "val"), "validation": ("validation", "valid", "val", "test"),
                  "val": ("validation", "valid", "val"), "valid": ("valid", "validation", "val")}
ACCEPTED = ("quickstart, cifar10, cifar100, mnist, imagenet-1k, tiny-imagenet, ORG/NAME (a Hub data set), "
            "imagefolder:PATH, disk:PATH, parquet:PATH_OR_GLOB or npz:PATH")


def default_eval_split(spec: str) -> str:
    """The labelled evaluation split of a spec (ImageNet's ``test`` has no labels; tiny-imagenet's is ``valid``)."""
    return ALIASES[spec].eval_split if spec in ALIASES else "test"


def is_large(spec: str) -> bool:
    return spec in ALIASES and ALIASES[spec].large


def note(msg: str) -> None:
    print(f"robustify: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ arrays (npz)
def _npz_images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Any common image-array layout -> uint8 (N,H,W,3); a one-line error for anything else."""
    where = f"'{key}' in {str(path)!r}"
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise UserError(f"{where} has shape {x.shape}; images must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C 1, 3 "
                        "or 4")
    if x.shape[-1] not in (1, 3, 4) and x.shape[1] in (1, 3, 4):
        x = np.transpose(x, (0, 2, 3, 1))  # NCHW -> NHWC
    if x.shape[-1] not in (1, 3, 4):
        raise UserError(f"{where} has shape {x.shape}; images must have 1, 3 or 4 channels, last (NHWC) or second "
                        "(NCHW)")
    if x.dtype == np.uint8:
        pass
    elif x.dtype == np.uint16:
        x = np.rint(x.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise UserError(f"{where} holds NaN or infinite values; images must be finite pixels")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{where} has float pixels in [{lo:g}, {hi:g}]; accepted: floats in [0,1] or [0,255], or "
                            "uint8/uint16")
        x = np.rint(x * (255.0 if hi <= 1.0 else 1.0)).astype(np.uint8)
    elif np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{where} has {x.dtype} pixels in [{lo}, {hi}]; accepted: uint8, uint16, or integers in "
                            "[0,255]")
        x = x.astype(np.uint8)
    else:
        raise UserError(f"{where} has dtype {x.dtype}; accepted: uint8, uint16 or float pixels")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        x = x[..., :3]  # RGBA -> RGB as PIL's convert("RGB") does
    return np.ascontiguousarray(x)


def _npz_labels(y: np.ndarray, key: str, path: Path, n: int) -> np.ndarray:
    where = f"'{key}' in {str(path)!r}"
    if y.ndim == 2 and y.shape[1] > 1:
        raise UserError(f"{where} has shape {y.shape}: one-hot or multi-label rows; give class indices of shape (N,), "
                        "e.g. y.argmax(1)")
    y = y.reshape(-1) if y.ndim == 2 else y
    if y.ndim != 1:
        raise UserError(f"{where} has shape {y.shape}; labels must be class indices of shape (N,)")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{where} has dtype {y.dtype}; labels must be integer class indices 0..K-1 (floats are not "
                        "truncated silently)")
    if len(y) != n:
        raise UserError(f"{where} has {len(y)} labels but the images array has {n}; they must be the same length")
    if len(y) and y.min() < 0:
        raise UserError(f"{where} has label {int(y.min())}; labels must be class indices 0..K-1 (no negative or "
                        "'unlabelled' values)")
    return y.astype(np.int64)


def read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Arrays ``x_<split>``, ``y_<split>`` (and optional ``label_names``) of a ``.npz`` file, checked and converted."""
    if not path.is_file():
        raise UserError(f"data 'npz:{path}' does not exist; give a .npz file with x_<split> and y_<split> arrays")
    if not zipfile.is_zipfile(path):
        raise UserError(f"data 'npz:{path}' is not a NumPy .npz archive (a zip of .npy arrays, as np.savez writes); "
                        "convert it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            xk, yk = f"x_{split}", f"y_{split}"
            if xk not in arrays.files or yk not in arrays.files:
                have = sorted(k[2:] for k in arrays.files if k.startswith("x_"))
                raise UserError(f"split {split!r} is not in {str(path)!r}; splits there: {', '.join(have) or 'none'} "
                                "(arrays x_<split> and y_<split>)")
            x, y = arrays[xk], arrays[yk]
            names = [str(v) for v in arrays["label_names"]] if "label_names" in arrays.files else None
            ytr = arrays["y_train"] if "y_train" in arrays.files and split != "train" else None
    except UserError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(f"data 'npz:{path}' could not be read ({str(e).splitlines()[0] if str(e) else type(e).__name__}"
                        "); give a .npz written by np.savez without object arrays") from None
    if len(x) == 0:
        raise UserError(f"split {split!r} of {str(path)!r} is empty; give at least one example")
    images = _npz_images(x, xk, path)
    labels = _npz_labels(y, yk, path, len(images))
    k = len(names) if names else None
    if k is not None and labels.max() >= k:
        raise UserError(f"'{yk}' in {str(path)!r} has label {int(labels.max())} but label_names lists {k} classes; "
                        f"labels must be in 0..{k - 1}")
    if k is None:
        ref = labels if ytr is None else np.asarray(ytr).reshape(-1)
        if ytr is not None and len(ref) and np.issubdtype(ref.dtype, np.integer) and labels.max() > ref.max():
            raise UserError(f"'{yk}' in {str(path)!r} has label {int(labels.max())}, above every training label "
                            f"(max {int(ref.max())}); labels must be class indices seen in y_train")
        distinct = len(np.unique(labels))
        if labels.max() + 1 > 2 * distinct and labels.max() >= 16:
            raise UserError(f"'{yk}' in {str(path)!r} has label {int(labels.max())} but only {distinct} distinct "
                            "values; "
                            "labels must be class indices 0..K-1 (or store the class names as label_names)")
    return images, labels, names


def _arrays_to_dataset(images: np.ndarray, labels: np.ndarray, names: list[str] | None, n_classes: int | None = None):
    import datasets
    from PIL import Image

    names = names or [str(i) for i in range(n_classes or int(labels.max()) + 1)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(im) for im in images], "label": labels.tolist()},
                                      features=features)


def _from_npz(path: Path, split: str, names: list[str] | None = None):
    images, labels, stored = read_npz(path, split)
    n_classes = None
    if names is None and stored is None and split != "train":
        try:  # the head size comes from the training labels, so the eval split's ClassLabel must match it
            n_classes = int(read_npz(path, "train")[1].max()) + 1
        except UserError:
            n_classes = None
    return _arrays_to_dataset(images, labels, names or stored, n_classes)


def _quickstart(split: str):
    meta = json.loads((QUICKSTART_DIR / "digits.json").read_text())
    if split not in ("train", "test"):
        raise UserError(f"split {split!r} is not in the quickstart data; use train or test")
    return _from_npz(QUICKSTART_DIR / "digits.npz", split, meta["label_names"])


# ------------------------------------------------------------------------------------------------ columns
def pick_columns(feats, spec: str, image_column: str | None = None, label_column: str | None = None
                 ) -> tuple[str, str]:
    """The (image, label) column names of a data set with features ``feats``: the given ones, the alias's, ``image`` /
    ``label``, or the first Image / ClassLabel feature; one line naming the columns when there is none."""
    import datasets

    names = list(feats)
    alias = ALIASES.get(spec)
    images = [c for c, f in feats.items() if isinstance(f, datasets.Image)]
    classes = [c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)]
    img = image_column or (alias.image_column if alias else None) or ("image" if "image" in feats else
                                                                        next(iter(images), None))
    lab = label_column or (alias.label_column if alias else None) or ("label" if "label" in feats else
                                                                        next(iter(classes), None))
    for key, col in (("data.image_column", img), ("data.label_column", lab)):
        if col is None or col not in feats:
            what = "an image" if key.endswith("image_column") else "a class-label"
            shown = f"{key}={col!r} is not a column" if col else f"no {what} column found"
            raise UserError(f"data {spec!r}: {shown}; columns: {', '.join(names)} (set {key}=NAME)")
    if not isinstance(feats[img], datasets.Image):
        raise UserError(f"data {spec!r}: column {img!r} holds {type(feats[img]).__name__}, not images; set "
                        f"data.image_column to one of: {', '.join(images) or '(none)'}")
    return img, lab


def standardize(ds, spec: str, image_column: str | None = None, label_column: str | None = None):
    """Keep one image column and one ClassLabel column, named ``image`` and ``label``."""
    import datasets

    feats = ds.features
    if feats is None:
        raise UserError(f"data {spec!r}: its features are unknown (a streamed set without metadata); set "
                        "data.streaming=false")
    img, lab = pick_columns(feats, spec, image_column, label_column)
    ds = ds.select_columns([img, lab])
    if img != "image":
        ds = ds.rename_column(img, "image")
    if lab != "label":
        ds = ds.rename_column(lab, "label")
    feat = ds.features["label"]
    if not isinstance(feat, datasets.ClassLabel):
        dtype = getattr(feat, "dtype", "")
        if not str(dtype).startswith(("int", "uint")):
            raise UserError(f"data {spec!r}: label column {lab!r} holds {dtype or type(feat).__name__}; labels must be "
                            "integer class indices or a ClassLabel")
        if isinstance(ds, datasets.IterableDataset):
            raise UserError(f"data {spec!r}: label column {lab!r} is a plain integer, not a ClassLabel, so the number "
                            "of classes is unknown while streaming; set data.streaming=false")
        ys = ds["label"]
        if len(ys) and min(ys) < 0:
            raise_negative(spec, "", min(ys))
        ds = ds.cast_column("label", datasets.ClassLabel(num_classes=(max(ys) + 1) if ys else 1))
    return ds


def raise_negative(spec: str, split: str, value: int) -> None:
    hint = f"; use a labelled split such as {default_eval_split(spec)!r} (data.eval_split)" if spec in ALIASES else ""
    where = f" split {split!r}" if split else ""
    raise UserError(f"data {spec!r}{where} has label {value}: unlabelled examples (labels must be class indices "
                    f"0..K-1){hint}")


def check_labels(ds, spec: str, split: str) -> None:
    """Refuse negative or out-of-range labels of a map-style split up front (one column read)."""
    import datasets

    if isinstance(ds, datasets.IterableDataset) or len(ds) == 0:
        if not isinstance(ds, datasets.IterableDataset):
            raise UserError(f"data {spec!r} split {split!r} is empty; give a split with at least one example")
        return
    ys = np.asarray(ds.data.column("label").to_numpy(zero_copy_only=False))
    lo, hi = int(ys.min()), int(ys.max())
    if lo < 0:
        raise_negative(spec, split, lo)
    k = ds.features["label"].num_classes
    if hi >= k:
        raise UserError(f"data {spec!r} split {split!r} has label {hi} but only {k} classes; labels must be in "
                        f"0..{k - 1}")


def _refuse_one_class(dd, folder: Path, spec: str) -> None:
    """datasets' imagefolder gives no label column when the images sit in a single class folder (or none): that is
    a folder with one class, not a missing label column, and the fix is a second class folder."""
    for split, part in dd.items():
        if "label" not in part.column_names:
            where = next((folder / n for n in (split, "val", "valid") if (folder / n).is_dir()), folder)
            classes = sorted(p.name for p in where.iterdir() if p.is_dir())
            inside = f"one class folder ({classes[0]!r})" if len(classes) == 1 else "no class folders"
            raise UserError(f"data {spec!r}: split {split!r} has {inside}; a classifier needs at least two: put each "
                            f"class's images in its own folder, e.g. {str(where / 'cat')!r} and "
                            f"{str(where / 'dog')!r} (optionally inside train/ and test/ split folders)")


# ------------------------------------------------------------------------------------------------ loading
def _go_offline_if_unreachable(spec: str) -> bool:
    from ..hub_access import go_offline, hub_reachable

    if hub_reachable():
        return False
    import datasets

    go_offline()
    datasets.config.HF_HUB_OFFLINE = True
    return True


def is_gated(e: BaseException) -> bool:
    from huggingface_hub.errors import GatedRepoError

    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, GatedRepoError) or "gated" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _load_hub(repo: str, split: str, streaming: bool, spec: str):
    import datasets

    offline = _go_offline_if_unreachable(spec)
    tried: list[str] = []
    last: Exception | None = None
    for s in SPLIT_SYNONYMS.get(split, (split,)):
        tried.append(s)
        try:
            return datasets.load_dataset(repo, split=s, streaming=streaming)
        except ValueError as e:  # unknown split: try the next name
            last = e
            if "split" not in str(e).lower():
                break
        except Exception as e:  # noqa: BLE001 - datasets/hub raise many types; reported in one line below
            last = e
            break
    if last is not None and is_gated(last):
        raise UserError(f"data set {repo!r} is gated: request access at https://huggingface.co/datasets/{repo} with "
                        "your account, then log in with 'hf auth login' (or set HF_TOKEN)")
    if offline:
        raise UserError(f"data set {repo!r} is not in the local cache and the Hugging Face Hub is unreachable; "
                        "connect, pre-download it, or use local data (imagefolder:PATH, disk:PATH, parquet:PATH, "
                        "npz:PATH)")
    raise UserError(f"data set {repo!r} split {split!r} could not be loaded: {first_line(last)}")


def _pick_split(dd, spec: str, split: str, holdout: float, seed: int, streaming: bool = False):
    """A split of a local DatasetDict by name or synonym; for a single-split source, ``train`` is all but a seeded
    ``holdout`` fraction and any other split is that held-out fraction (so they never overlap)."""
    names = list(dd.keys())
    if len(names) == 1 and not streaming and holdout:
        parts = dd[names[0]].train_test_split(test_size=holdout, seed=seed, shuffle=True)
        return parts["train" if split in ("train", names[0]) else "test"]
    for s in SPLIT_SYNONYMS.get(split, (split,)):
        if s in dd:
            return dd[s]
    if len(names) == 1:
        why = "streaming cannot hold out examples" if streaming else "data.holdout is 0"
        raise UserError(f"data {spec!r} has a single split ({names[0]!r}) and {why}, so there is no {split!r} split; "
                        "add train/ and test/ split folders or files, or set data.holdout to a fraction such as 0.1")
    raise UserError(f"data {spec!r} has no split {split!r}; splits there: {', '.join(names)}")


def _scan_images(ds, spec: str):
    """Drop unreadable image files of a local image set before the first epoch, with a count (never mid-epoch)."""
    import datasets
    from PIL import Image

    raw = ds.cast_column("image", datasets.Image(decode=False))
    bad: list[tuple[int, str, str]] = []
    for i, row in enumerate(raw["image"]):
        try:
            if row.get("bytes"):
                import io

                with Image.open(io.BytesIO(row["bytes"])) as im:
                    im.verify()
            else:
                with Image.open(row["path"]) as im:
                    im.verify()
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken file
            bad.append((i, str(row.get("path") or f"#{i}"), first_line(e)))
    if not bad:
        return ds
    if len(bad) == len(ds):
        raise UserError(f"data {spec!r}: none of its {len(ds)} image files can be read (first: {bad[0][1]}: "
                        f"{bad[0][2]})")
    first = bad[0]
    note(f"skipped {len(bad)} unreadable image file(s) of {len(ds)} in {spec} (first: {first[1]}: {first[2]})")
    drop = {i for i, _, _ in bad}
    return ds.select([i for i in range(len(ds)) if i not in drop])


def local_path(spec: str, prefix: str) -> Path:
    return Path(spec[len(prefix):]).expanduser()


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def get_dataset(spec: str, split: str, *, image_column: str | None = None, label_column: str | None = None,
                streaming: bool = False, holdout: float = 0.1, seed: int = 0):
    """Any ``--data`` spec and split -> a ``datasets.Dataset`` (``IterableDataset`` with ``streaming``) with ``image``
    (PIL) and ``label`` (ClassLabel) columns. See the module docstring for the specs and the checks."""
    import datasets

    if not isinstance(spec, str) or not spec:
        raise UserError(f"data {spec!r} is not accepted; use {ACCEPTED}")
    if spec == "quickstart":
        ds = _quickstart(split)
    elif spec.startswith("npz:"):
        ds = _from_npz(local_path(spec, "npz:"), split)
    elif spec.startswith("imagefolder:"):
        folder = local_path(spec, "imagefolder:")
        if not folder.is_dir():
            raise UserError(f"data {spec!r}: {str(folder)!r} is not a folder; give imagefolder:PATH with class folders "
                            "(optionally inside train/ and test/ split folders)")
        try:
            dd = datasets.load_dataset("imagefolder", data_dir=str(folder))
        except Exception as e:  # noqa: BLE001
            raise UserError(f"data {spec!r} could not be read as class folders of images: {first_line(e)}") from None
        _refuse_one_class(dd, folder, spec)
        ds = _scan_images(_pick_split(dd, spec, split, holdout, seed), spec)
    elif spec.startswith("disk:") or is_saved_dataset(Path(spec).expanduser()):
        folder = local_path(spec, "disk:") if spec.startswith("disk:") else Path(spec).expanduser()
        if not is_saved_dataset(folder):
            raise UserError(f"data {spec!r}: {str(folder)!r} is not a folder written by datasets' save_to_disk")
        loaded = datasets.load_from_disk(str(folder))
        dd = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
        ds = _pick_split(dd, spec, split, holdout, seed)
        if streaming:
            ds = ds.to_iterable_dataset(num_shards=max(1, min(64, len(ds) // 1000)))
    elif spec.startswith("parquet:"):
        pattern = str(local_path(spec, "parquet:"))
        if os.path.isdir(pattern):
            kwargs: dict[str, Any] = {"data_dir": pattern}
        else:
            if not glob.glob(pattern):
                raise UserError(f"data {spec!r}: no file matches {pattern!r}; give parquet:FILE, a glob or a folder")
            kwargs = {"data_files": {"train": sorted(glob.glob(pattern))}}
        try:
            dd = datasets.load_dataset("parquet", streaming=streaming, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"data {spec!r} could not be read as parquet: {first_line(e)}") from None
        ds = _pick_split(dd, spec, split, holdout, seed, streaming=streaming)
    elif spec in ALIASES or ("/" in spec and ":" not in spec and not Path(spec).expanduser().exists()):
        ds = _load_hub(ALIASES[spec].repo if spec in ALIASES else spec, split, streaming, spec)
    else:
        raise UserError(f"data {spec!r} is not accepted; use {ACCEPTED}")
    ds = standardize(ds, spec, image_column, label_column)
    check_labels(ds, spec, split)
    return ds


def num_classes(ds) -> int:
    feat = ds.features["label"]
    return feat.num_classes if hasattr(feat, "num_classes") else int(max(ds["label"])) + 1


def label_names(ds) -> list[str] | None:
    feat = ds.features["label"]
    return list(feat.names) if hasattr(feat, "names") else None


def validate_section(cfg: Any) -> None:
    """The ``data`` section's part that needs the data wing: the labelled evaluation split of a named data set
    (``validation`` for imagenet-1k, whose ``test`` split has no labels), when the recipe leaves it empty."""
    if cfg.data.eval_split is None:
        cfg.data.eval_split = default_eval_split(cfg.data.name)


sections.register("data", validate_section)  # config.validate runs it (robustify/sections.py)
