"""``robustify bench --data SPEC``: is the data pipeline or the training step what bounds training speed?

The pipeline is timed alone, in this process (one worker's worth): examples of the data set read through
:func:`robustify.data.get_dataset` (the images decode when a row is read), then transformed as training does it --
timm's training transform (random-resized crop, flip; ``--augment timm``) or its eval transform (resize, centre
crop; every other ``data.augment``, whose flip-crop runs on the batch tensor inside the step) -- to a [0,1] tensor
at the model's input size. That gives images per second per worker; a DataLoader with ``data.num_workers`` workers
delivers at most that many times more, and never more than the CPU cores allow. The step's images per second come
from :func:`robustify.bench.steps.run_bench` on the same model, batch and method; the smaller of the two bounds
training.

Only ``get_dataset`` and timm's transforms are used, so this measures the decode + augment cost whatever loader the
data module builds around it (map-style, cached, or streaming).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..errors import UserError

DEFAULT_IMAGES = 256


def pipeline_transform(input_size: tuple[int, int, int], augment: str, interpolation: str = "bilinear",
                       crop_pct: float = 1.0):
    """timm's transform to [0,1] tensors (normalisation lives inside robustify's model, so mean 0 and std 1)."""
    from timm.data import create_transform

    return create_transform(input_size, is_training=augment == "timm", interpolation=interpolation,
                            crop_pct=crop_pct, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def time_pipeline(spec: str, split: str, input_size: tuple[int, int, int], augment: str = "none",
                  n_images: int = DEFAULT_IMAGES, workers: int = 2, interpolation: str = "bilinear",
                  crop_pct: float = 1.0) -> dict[str, Any]:
    """Decode + augment ``n_images`` examples of ``spec``/``split`` in this process; images per second per worker."""
    from ..data import get_dataset

    if n_images < 1:
        raise UserError(f"--data-images {n_images} is not accepted; use 1 or more")
    t0 = time.perf_counter()
    ds = get_dataset(spec, split)
    open_seconds = time.perf_counter() - t0
    n = min(n_images, len(ds))
    if n == 0:
        raise UserError(f"data {spec!r} split {split!r} is empty")
    transform = pipeline_transform(input_size, augment, interpolation, crop_pct)
    transform(ds[0]["image"].convert("RGB"))  # first-call setup out of the timing
    decode = augment_s = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        image = ds[i]["image"].convert("RGB")
        t1 = time.perf_counter()
        x = transform(image)
        t2 = time.perf_counter()
        decode += t1 - t0
        augment_s += t2 - t1
    per_worker = n / (decode + augment_s)
    cores = os.cpu_count() or 1
    effective = max(1, min(workers, cores)) if workers > 0 else 1
    return {"data": spec, "split": split, "images": n, "input_size": list(x.shape), "augment": augment,
            "transform": "timm train (random-resized crop, flip)" if augment == "timm" else "timm eval (resize, crop)",
            "open_seconds": open_seconds, "decode_seconds": decode, "augment_seconds": augment_s,
            "images_per_second_per_worker": per_worker, "num_workers": workers, "cpu_count": cores,
            "images_per_second_loader": per_worker * effective}


def verdict(pipeline: dict[str, Any], steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each timed method: which of pipeline and step bounds training, and by how much."""
    loader = pipeline["images_per_second_loader"]
    out = []
    for r in steps:
        step = r["images_per_second"]
        out.append({"method": r["method"], "step_images_per_second": step, "loader_images_per_second": loader,
                    "bound": "data" if loader < step else "step",
                    "headroom": loader / step})
    return out


def verdict_lines(report: dict[str, Any]) -> list[str]:
    p = report["data_pipeline"]
    lines = [f"data pipeline ({p['data']}/{p['split']}, {p['transform']}): "
             f"{p['images_per_second_per_worker']:.0f} images/s per worker (decode {p['decode_seconds']:.2f} s + "
             f"augment {p['augment_seconds']:.2f} s for {p['images']} images); with {p['num_workers']} worker(s) on "
             f"{p['cpu_count']} CPUs at most {p['images_per_second_loader']:.0f} images/s"]
    for v in report["bound_by"]:
        what = ("the DATA PIPELINE bounds training: raise data.num_workers, cache the decoded set, or use a smaller "
                "decode" if v["bound"] == "data" else "the training step bounds training (the data pipeline keeps up)")
        lines.append(f"{v['method']}: step {v['step_images_per_second']:.0f} images/s vs loader "
                     f"{v['loader_images_per_second']:.0f} images/s ({v['headroom']:.1f}x): {what}")
    if p["cpu_count"] <= p["num_workers"]:
        lines.append("note: on a CPU-only machine the loader workers and the step share the same cores, so the two "
                     "rates do not simply add up")
    return lines
