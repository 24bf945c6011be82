"""Rebuild the quickstart assets that ship in ``robustify/assets/quickstart/``.

1. ``digits.npz``: the UCI ML hand-written digits (the copy scikit-learn ships; 1,797 8x8 images, 10 classes,
   CC BY 4.0), upsampled bilinearly to 32x32 and replicated to RGB, uint8. Fixed split: the first 1,297 images are
   ``train``, the last 500 ``test`` (no shuffling, so the split is the same everywhere).
2. ``backbone/``: timm's ``test_resnet`` (0.37 M parameters, random init) trained *naturally* (no attacks) on the
   train split, saved with ``timm.models.save_for_hf`` (``config.json`` + ``model.safetensors``), so robustify loads
   it through timm's real ``local-dir:`` path. It is accurate and not robust: the starting point of the quickstart.

Run: ``pip install scikit-learn && python scripts/make_quickstart.py`` (about 20 s on 2 CPU cores). The result is
deterministic up to floating-point differences between machines.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "robustify" / "assets" / "quickstart"
N_TRAIN, SIZE, EPOCHS, SEED = 1297, 32, 6, 0


def make_data() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    imgs = []
    for im in digits.images:  # values 0..16
        pil = Image.fromarray((im * (255.0 / 16.0)).round().astype(np.uint8))
        imgs.append(np.asarray(pil.resize((SIZE, SIZE), Image.BILINEAR)))
    x = np.repeat(np.stack(imgs)[..., None], 3, axis=-1)  # (N, 32, 32, 3) uint8
    y = digits.target.astype(np.int64)
    return {"x_train": x[:N_TRAIN], "y_train": y[:N_TRAIN], "x_test": x[N_TRAIN:], "y_test": y[N_TRAIN:]}


def train_backbone(arrays: dict[str, np.ndarray]) -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(arrays["x_train"]).permute(0, 3, 1, 2).float().div(255)
    y = torch.from_numpy(arrays["y_train"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = EPOCHS * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x))
        for i in range(len(x) // 64):
            idx = perm[i * 64:(i + 1) * 64]
            loss = F.cross_entropy(model((x[idx] - mean) / std), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    xt = torch.from_numpy(arrays["x_test"]).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        acc = (model((xt - mean) / std).argmax(1) == torch.from_numpy(arrays["y_test"])).float().mean().item()
    print(f"natural test accuracy of the quickstart backbone: {acc:.3f}")
    # the exported pretrained_cfg describes how this checkpoint expects its inputs
    model.pretrained_cfg = {**cfg, "input_size": (3, SIZE, SIZE), "crop_pct": 1.0, "pool_size": None,
                            "tag": "quickstart", "hf_hub_id": None, "license": "cc-by-4.0", "num_classes": 10}
    return model


def main() -> None:
    arrays = make_data()
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "digits.npz", **arrays)
    meta = {"name": "UCI ML hand-written digits, 32x32 RGB", "label_names": [str(i) for i in range(10)],
            "splits": {"train": N_TRAIN, "test": int(len(arrays["y_test"]))}, "license": "CC BY 4.0",
            "source": "https://archive.ics.uci.edu/dataset/80 (via sklearn.datasets.load_digits)"}
    (OUT / "digits.json").write_text(json.dumps(meta, indent=2) + "\n")
    model = train_backbone(arrays)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        timm.models.save_for_hf(model, tmp, safe_serialization=True,
                                model_config={"label_names": meta["label_names"]})
        (Path(tmp) / "pytorch_model.bin").unlink(missing_ok=True)
        shutil.rmtree(OUT / "backbone", ignore_errors=True)
        Path(tmp).rename(OUT / "backbone")
        (OUT / "backbone").chmod(0o755)
        for f in (OUT / "backbone").iterdir():
            f.chmod(0o644)
        Path(tmp).mkdir()  # so TemporaryDirectory's cleanup finds something to remove
    print(f"wrote {OUT}")


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description="Rebuild robustify/assets/quickstart/ (digits.npz and backbone/): overwrites "
                            "the shipped assets. Needs scikit-learn.").parse_args()
    main()
