"""``robustify bench --corruptions``: images per second per CPU core for each common corruption at 32 px (CIFAR)
and 224 px (ImageNet), and what a full ImageNet-C-sized evaluation (5,000 images x 15 corruptions x 5 severities)
costs in corruption work on this machine's cores.

Each corruption runs on the same natural-looking synthetic images (smooth gradients and shapes, seeded) at every
severity, in this process on one thread (one DataLoader worker's worth: ``robustify eval`` runs one corrupting
worker per free core beside an accelerator), timed in process CPU seconds, so the figure is per core and does not
depend on what else the machine runs; the node's cores multiply it.

Must not: change what evaluation computes (it times :func:`corrupt` as evaluation calls it).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np

from ..evaluate.corruptions.definitions import CORRUPTIONS, SEVERITIES, corrupt

SIZES = (32, 224)
IMAGENET_C = (5_000, len(CORRUPTIONS), len(SEVERITIES))  # images x corruptions x severities


def synthetic_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth, natural-looking uint8 RGB images (gradients plus a few filled rectangles), seeded."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a = rng.uniform(0.2, 1.0, 3)
        img = np.stack([a[0] * xx, a[1] * yy, a[2] * (1 - xx * yy)], -1) * 200 + 30
        for _ in range(3):
            y0, x0 = rng.integers(0, size // 2, 2)
            h, w = rng.integers(size // 8, size // 2, 2)
            img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
        out.append(img.astype(np.uint8))
    return out


def time_corruptions(n_images: int = 8, sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    """Per size and corruption: images per second on one core (all five severities, ``n_images`` each)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates: dict[str, dict[str, float]] = {}
        for size in sizes:
            images = synthetic_images(n_images, size)
            rates[str(size)] = {}
            for c in CORRUPTIONS:
                corrupt(images[0], c, 1, 0)  # warm-up (imports, kernels)
                t0 = time.process_time()
                for s in SEVERITIES:
                    for i, im in enumerate(images):
                        corrupt(im, c, s, i)
                rates[str(size)][c] = round(len(SEVERITIES) * n_images / max(time.process_time() - t0, 1e-9), 1)
    finally:
        torch.set_num_threads(threads)
    return {"images_per_second_per_core": rates, "images_per_corruption": n_images * len(SEVERITIES),
            "machine": machine(), "imagenet_c": imagenet_c_cost(rates.get("224"))}


def machine() -> dict[str, Any]:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count()}


def imagenet_c_cost(rates: dict[str, float] | None) -> dict[str, Any] | None:
    """Core-hours of corruption work for 5,000 images x 15 corruptions x 5 severities at 224 px, from the measured
    per-core rates, and the wall time on this machine's cores and on a 64-core node."""
    if not rates or any(c not in rates for c in CORRUPTIONS):
        return None
    n, _, k = IMAGENET_C
    core_seconds = sum(n * k / rates[c] for c in CORRUPTIONS)
    cores = os.cpu_count() or 1
    return {"core_hours": round(core_seconds / 3600, 2), "hours_on_this_machine": round(core_seconds / 3600 / cores, 2),
            "cores_here": cores, "hours_on_64_cores": round(core_seconds / 3600 / 64, 3),
            "corrupted_images": n * len(CORRUPTIONS) * k,
            "slowest": sorted(CORRUPTIONS, key=lambda c: rates[c])[:3]}


def lines(report: dict[str, Any]) -> list[str]:
    rates = report["images_per_second_per_core"]
    sizes = list(rates)
    out = ["corruption images/s per core (" + ", ".join(f"{s} px" for s in sizes) + f"), {report['machine']['cpu']}"]
    for c in CORRUPTIONS:
        out.append(f"  {c:<18}" + "".join(f"{rates[s][c]:>10.1f}" for s in sizes))
    cost = report.get("imagenet_c")
    if cost:
        out.append(f"ImageNet-C-sized evaluation ({cost['corrupted_images']:,} corrupted 224 px images): "
                   f"{cost['core_hours']} core-hours of corruption work: {cost['hours_on_this_machine']} h on this "
                   f"machine's {cost['cores_here']} cores, {cost['hours_on_64_cores']} h on 64 (slowest: "
                   f"{', '.join(cost['slowest'])})")
    return out


def main(n_images: int = 8, output: str | None = None, show: bool = True) -> dict[str, Any]:
    report = time_corruptions(n_images)
    if show:
        print("\n".join(lines(report)))
    if output:
        from ..fileio import atomic_write_json

        atomic_write_json(output, report)
    return report
