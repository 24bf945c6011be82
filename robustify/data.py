"""Data sets through 🤗 ``datasets``, transforms from timm's data config, and fast loaders of [0,1] tensors.

Any ``--data`` spec becomes a ``datasets.Dataset`` with an ``image`` (PIL) and a ``label`` (ClassLabel) column:

- ``quickstart``: the bundled UCI digits (see ``robustify/assets/quickstart/README.md``), fully offline;
- ``cifar10``, ``cifar100``, ``imagenet-1k``, ``mnist``...: aliases for the Hub data sets (see :data:`ALIASES`);
- ``ORG/NAME``: any Hub image-classification data set (its Image and ClassLabel columns are found);
- ``imagefolder:PATH``: a folder of class sub-folders (``datasets``' imagefolder builder);
- ``npz:PATH``: arrays ``x_<split>`` (N,H,W[,C] uint8) and ``y_<split>`` (N,) in a NumPy ``.npz`` file.

Loaders yield ``(x, y)`` with ``x`` in [0,1] at the model's input size. Small data sets (under ``data.cache_mb``)
are decoded once into a uint8 tensor and served from memory, so data loading is never the bottleneck; large
ones stream through worker processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import DataConfig
from .errors import UserError

QUICKSTART_DIR = Path(__file__).resolve().parent / "assets" / "quickstart"

# alias -> (Hub id, {source column: robustify column}); splits named train/test as in robustify
ALIASES: dict[str, tuple[str, dict[str, str]]] = {
    "cifar10": ("uoft-cs/cifar10", {"img": "image", "label": "label"}),
    "cifar100": ("uoft-cs/cifar100", {"img": "image", "fine_label": "label"}),
    "mnist": ("ylecun/mnist", {"image": "image", "label": "label"}),
    "imagenet-1k": ("ILSVRC/imagenet-1k", {"image": "image", "label": "label"}),
    "tiny-imagenet": ("zh-plus/tiny-imagenet", {"image": "image", "label": "label"}),
}


def _to_dataset(images: np.ndarray, labels: np.ndarray, names: list[str] | None = None):
    import datasets

    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    names = names or [str(i) for i in range(int(labels.max()) + 1)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    pil = [Image.fromarray(im) for im in images]
    return datasets.Dataset.from_dict({"image": pil, "label": labels.astype(np.int64).tolist()}, features=features)


def _from_npz(path: Path, split: str, names: list[str] | None = None):
    if not path.is_file():
        raise UserError(f"data 'npz:{path}' does not exist; give a .npz file with x_<split> and y_<split> arrays")
    with np.load(path, allow_pickle=False) as arrays:
        xk, yk = f"x_{split}", f"y_{split}"
        if xk not in arrays or yk not in arrays:
            have = sorted(k[2:] for k in arrays.files if k.startswith("x_"))
            raise UserError(f"split {split!r} is not in {str(path)!r}; splits there: {', '.join(have) or 'none'}")
        return _to_dataset(arrays[xk], arrays[yk], names)


def _quickstart(split: str):
    meta = json.loads((QUICKSTART_DIR / "digits.json").read_text())
    if split not in ("train", "test"):
        raise UserError(f"split {split!r} is not in the quickstart data; use train or test")
    return _from_npz(QUICKSTART_DIR / "digits.npz", split, meta["label_names"])


def _standardize(ds, rename: dict[str, str] | None = None):
    """Keep one image column and one label column, named image and label."""
    import datasets

    if rename:
        ds = ds.rename_columns({k: v for k, v in rename.items() if k in ds.column_names and k != v})
    feats = ds.features
    image_col = "image" if "image" in feats else next((c for c, f in feats.items() if isinstance(f, datasets.Image)),
                                                      None)
    label_col = "label" if "label" in feats else next(
        (c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise UserError(f"data set has no image and class-label columns (columns: {', '.join(ds.column_names)})")
    ds = ds.select_columns([image_col, label_col])
    if image_col != "image":
        ds = ds.rename_column(image_col, "image")
    if label_col != "label":
        ds = ds.rename_column(label_col, "label")
    return ds


def _load_hub(repo_or_builder: str, split: str, **kwargs):
    import datasets

    from .models import hub_reachable

    offline = False
    if repo_or_builder != "imagefolder" and not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"
        datasets.config.HF_HUB_OFFLINE = True
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
        offline = True
    candidates = [split] + (["validation", "val"] if split == "test" else [])
    last: Exception | None = None
    for s in candidates:
        try:
            return datasets.load_dataset(repo_or_builder, split=s, **kwargs)
        except ValueError as e:  # unknown split: try the next name
            last = e
            if "split" not in str(e).lower():
                break
        except Exception as e:  # noqa: BLE001
            last = e
            break
    if offline:
        raise UserError(f"data set {repo_or_builder!r} is not in the local cache and the Hugging Face Hub is "
                        "unreachable; connect, pre-download it, or use --data imagefolder:PATH / npz:PATH / quickstart")
    msg = str(last).strip().splitlines()[0] if last and str(last).strip() else type(last).__name__
    raise UserError(f"data set {repo_or_builder!r} split {split!r} could not be loaded: {msg}")


def get_dataset(spec: str, split: str):
    """Any ``--data`` spec and split → a ``datasets.Dataset`` with ``image`` (PIL) and ``label`` columns."""
    if spec == "quickstart":
        return _quickstart(split)
    if spec.startswith("npz:"):
        return _from_npz(Path(spec[4:]).expanduser(), split)
    if spec.startswith("imagefolder:"):
        folder = Path(spec[len("imagefolder:"):]).expanduser()
        if not folder.is_dir():
            raise UserError(f"data {spec!r}: {str(folder)!r} is not a folder; give imagefolder:PATH with class folders")
        return _standardize(_load_hub("imagefolder", split, data_dir=str(folder)))
    if spec in ALIASES:
        repo, rename = ALIASES[spec]
        return _standardize(_load_hub(repo, split), rename)
    if "/" in spec and not Path(spec).exists():
        return _standardize(_load_hub(spec, split))
    raise UserError(f"data {spec!r} is not accepted; use quickstart, {', '.join(ALIASES)}, ORG/NAME (a Hub data set), "
                    "imagefolder:PATH or npz:PATH")


def num_classes(ds) -> int:
    feat = ds.features["label"]
    return feat.num_classes if hasattr(feat, "num_classes") else int(max(ds["label"])) + 1


def label_names(ds) -> list[str] | None:
    feat = ds.features["label"]
    return list(feat.names) if hasattr(feat, "names") else None


# ---------------------------------------------------------------------------------------------------------------
# transforms and loaders


@dataclass
class Loaders:
    train: torch.utils.data.DataLoader
    eval: torch.utils.data.DataLoader
    probe: tuple[torch.Tensor, torch.Tensor]  # a fixed training minibatch for the per-epoch PGD probe
    num_classes: int
    label_names: list[str] | None
    input_size: tuple[int, int, int]
    train_size: int
    eval_size: int
    generator: torch.Generator  # the training shuffle; reseeded per epoch so a resumed run sees the same order
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def batches_per_epoch(self) -> int:
        """Minibatches per epoch and process (the same on every process: the tail that does not fill one is dropped)."""
        return self.train_size // (self.train.batch_size * self.world_size)

    def train_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's minibatches of ``epoch``, from minibatch ``start_batch`` on.

        The order is a pure function of (seed, epoch, rank, world size): one seeded permutation of the whole
        training set per epoch, cut into global batches, each process taking its slice, so a resumed epoch sees
        exactly the minibatches the uninterrupted one would have.
        """
        bs, n_batches = self.train.batch_size, self.batches_per_epoch
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.train_size, generator=gen)[: n_batches * bs * self.world_size]
        order = order.view(n_batches, self.world_size, bs)[:, self.rank]
        batches = [b.tolist() for b in order[start_batch:]]
        # its own generator: creating a DataLoader iterator draws a worker seed, which must not come from (and
        # shift) the global RNG that the attacks' random starts use, or a resumed epoch would differ
        loader = torch.utils.data.DataLoader(self.train.dataset, batch_sampler=batches,
                                             num_workers=self.train.num_workers, pin_memory=self.train.pin_memory,
                                             generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        yield from loader

    def eval_examples(self, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed evaluation subset (the first ``eval_size`` examples), as tensors; ``rank``'s contiguous share."""
        ds = self.eval.dataset
        start, end = self.eval_size * rank // world_size, self.eval_size * (rank + 1) // world_size
        if isinstance(ds, torch.utils.data.TensorDataset):
            return ds.tensors[0][start:end], ds.tensors[1][start:end]
        xs, ys = zip(*[ds[i] for i in range(start, end)], strict=True)
        return torch.stack(xs), torch.tensor(ys)


def eval_transform(input_size: tuple[int, int, int], interpolation: str = "bilinear", crop_pct: float = 1.0):
    """timm's eval transform (resize, center crop) with identity normalization: pixels stay in [0,1]."""
    from timm.data import create_transform

    return create_transform(input_size=input_size, interpolation=interpolation, crop_pct=crop_pct,
                            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), is_training=False)


def train_transform(input_size: tuple[int, int, int], interpolation: str = "bilinear"):
    """timm's training augmentation (random resized crop, flip, colour jitter), without normalization."""
    from timm.data import create_transform

    return create_transform(input_size=input_size, interpolation=interpolation, mean=(0.0, 0.0, 0.0),
                            std=(1.0, 1.0, 1.0), is_training=True)


def flip_crop(x: torch.Tensor, pad: int | None = None) -> torch.Tensor:
    """CIFAR-style augmentation on a batch, on its device: random crop after reflect padding, random h-flip."""
    n, _, h, w = x.shape
    pad = max(1, h // 8) if pad is None else pad
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    i = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    j = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (i[:, None] + torch.arange(h, device=x.device)[None, :])  # (n, h)
    cols = (j[:, None] + torch.arange(w, device=x.device)[None, :])  # (n, w)
    out = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[
        None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 batches (the in-memory path) → float in [0,1]; float batches pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


class _TransformedDataset(torch.utils.data.Dataset):
    def __init__(self, ds, transform):
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        row = self.ds[int(i)]
        return self.transform(row["image"].convert("RGB")), row["label"]


def decode_all(ds, transform, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and resize every image once into a uint8 (N,C,H,W) tensor (the in-memory fast path; ``robustify eval``'s
    fixed subset). Reads the data set in chunks; ``desc`` shows a progress bar."""
    from tqdm.auto import tqdm

    xs: list[torch.Tensor] = []
    off = {"disable": True} if desc is None else {}  # pass disable only to switch off, so TQDM_DISABLE still works
    with tqdm(total=len(ds), desc=desc, unit="ex", leave=False, **off) as bar:
        for batch in ds.iter(batch_size=256):
            xs.extend((transform(img.convert("RGB")) * 255.0).round_().to(torch.uint8) for img in batch["image"])
            bar.update(len(batch["image"]))
    return torch.stack(xs), torch.tensor(ds["label"], dtype=torch.long)


def _estimated_mb(n: int, input_size: tuple[int, int, int]) -> float:
    c, h, w = input_size
    return n * c * h * w / 2**20


def build_loaders(cfg: DataConfig, data_config: dict, eval_examples: int, probe_size: int, seed: int = 0,
                  rank: int = 0, world_size: int = 1) -> Loaders:
    """Train / eval loaders of [0,1] tensors at the backbone's input size (or ``cfg.image_size``)."""
    train_ds = get_dataset(cfg.name, cfg.train_split)
    eval_ds = get_dataset(cfg.name, cfg.eval_split)
    if cfg.max_train_examples:
        train_ds = train_ds.select(range(min(cfg.max_train_examples, len(train_ds))))
    eval_ds = eval_ds.select(range(min(eval_examples, len(eval_ds))))  # the first N: a fixed, recorded subset
    c, h, w = data_config["input_size"]
    if cfg.image_size:
        h = w = cfg.image_size
    input_size = (c, h, w)
    interp = data_config.get("interpolation", "bilinear")
    crop_pct = data_config.get("crop_pct", 1.0)
    ev_tf = eval_transform(input_size, interp, crop_pct)
    gen = torch.Generator().manual_seed(seed)

    if cfg.augment != "timm" and _estimated_mb(len(train_ds) + len(eval_ds), input_size) <= cfg.cache_mb:
        xtr, ytr = decode_all(train_ds, ev_tf)
        xev, yev = decode_all(eval_ds, ev_tf)
        train_set = torch.utils.data.TensorDataset(xtr, ytr)
        eval_set = torch.utils.data.TensorDataset(xev, yev)
        workers = 0
        probe = (to_unit(xtr[:probe_size].clone()), ytr[:probe_size].clone())
    else:
        tr_tf = train_transform(input_size, interp) if cfg.augment == "timm" else ev_tf
        train_set = _TransformedDataset(train_ds, tr_tf)
        eval_set = _TransformedDataset(eval_ds, ev_tf)
        workers = cfg.num_workers
        probe_rows = _TransformedDataset(train_ds.select(range(min(probe_size, len(train_ds)))), ev_tf)
        xs, ys = zip(*[probe_rows[i] for i in range(len(probe_rows))], strict=True)
        probe = (torch.stack(xs), torch.tensor(ys))
    train = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                        num_workers=workers, generator=gen, persistent_workers=workers > 0,
                                        pin_memory=torch.cuda.is_available())
    if len(train) == 0:
        raise UserError(f"data.batch_size={cfg.batch_size} is larger than the training split ({len(train_set)} "
                        "examples); use a smaller batch size")
    evl = torch.utils.data.DataLoader(eval_set, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=workers,
                                      pin_memory=torch.cuda.is_available())
    if len(train_set) < cfg.batch_size * world_size:
        raise UserError(f"data.batch_size={cfg.batch_size} x {world_size} processes is larger than the training split "
                        f"({len(train_set)} examples); use a smaller batch size")
    return Loaders(train, evl, probe, num_classes(train_ds), label_names(train_ds), input_size, len(train_set),
                   len(eval_set), gen, seed, rank, world_size)
