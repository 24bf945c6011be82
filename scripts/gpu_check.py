"""GPU self-check: what the CPU test suite cannot show, measured on one CUDA GPU in a few minutes, offline.

    python scripts/gpu_check.py [--output gpu_check.json] [--skip-compile] [--bench-batch 64]

Runs, with no network (timm architectures without weights, synthetic data, the bundled quickstart data):

1. every method's training step in bf16 with channels_last (and, unless --skip-compile, compiled with
   ``torch.compile`` for natural and fgsm-rs), through the trainer's own step code (``bench.steps.method_step``);
2. the host-sync check: those steps under ``torch.cuda.set_sync_debug_mode("error")`` (a host synchronisation in
   the step raises);
3. fp32 evaluation: the kernel's forward sees TF32 off (matmul and cuDNN) while the caller's setting is TF32 on,
   and the setting is restored after;
4. exact resume with ``train.deterministic``: two epochs in one go vs one epoch, stop, ``--resume``: the exported
   weights must be bit-identical;
5. ``robustify bench`` for resnet50 at 224 px (natural, fgsm-rs, pgd) in bf16 channels_last;
6. ``data.decode=device``: the GPU decode's images/s, the workers' images/s per core, each image's difference from
   the CPU route on the same crops, and a repeat decode while the GPU is busy (bit-identical);
7. peak GPU memory of each part.

Prints one table and writes the JSON. On a machine without a CUDA GPU it refuses in one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("natural", "fgsm-rs", "n-fgsm", "free", "pgd", "deat")


def _row(name: str, ok: bool, seconds: float, detail: dict[str, Any]) -> dict[str, Any]:
    return {"check": name, "ok": bool(ok), "seconds": round(seconds, 1), **detail}


def _peak_mb() -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def check_method_steps(model: str, batch: int, size: int, compiled: bool) -> list[dict[str, Any]]:
    """Each method's step in bf16 channels_last (optionally compiled), then again under sync-debug 'error'."""
    import torch

    from robustify.bench.steps import bench_config, method_step, synthetic_setup
    from robustify.train.hardware import resolve_hardware_settings

    rows = []
    names = ("natural", "fgsm-rs") if compiled else METHODS
    cfg = bench_config(model=model, batch_size=batch, image_size=size, mixed_precision="bf16", channels_last=True,
                       overrides=["method.steps=3", "method.replays=2"] + (["train.compile=true"] if compiled else []))
    resolve_hardware_settings(cfg, "cuda")
    base, accelerator, batches = synthetic_setup(cfg, 10, 2)
    for name in names:
        t0 = time.perf_counter()
        torch.cuda.reset_peak_memory_stats()
        detail: dict[str, Any] = {"method": name, "precision": "bf16", "channels_last": True, "compiled": compiled}
        try:
            _, step, _ = method_step(name, cfg, base, accelerator, 8)
            for x, y in batches * 2:  # warm-up (and compilation)
                res = step(x, y)
            finite = bool(torch.isfinite(res.loss).item())
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for x, y in batches:
                    step(x, y)
                synced = None
            except RuntimeError as e:
                synced = str(e).splitlines()[0][:200]
            finally:
                torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
            detail.update(loss_finite=finite, ms_per_step=round((time.perf_counter() - t1) / len(batches) * 1000, 1),
                          host_sync=synced, peak_mb=_peak_mb())
            ok = finite and synced is None
        except Exception as e:  # noqa: BLE001 - a failing method is a row of the report, not the end of it
            ok, detail["error"] = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        rows.append(_row(f"step {name}{' compiled' if compiled else ''}", ok, time.perf_counter() - t0, detail))
    accelerator.end_training()
    return rows


def check_fp32_eval() -> dict[str, Any]:
    """The evaluation kernel runs with TF32 off although the caller allows it, and restores the caller's setting."""
    import timm
    import torch

    from robustify.evaluate.kernel import _fp32_switches, sharded_pgd_accuracy

    t0 = time.perf_counter()
    torch.cuda.reset_peak_memory_stats()
    switches = _fp32_switches()
    saved = [b.fp32_precision for b in switches]
    seen: set[tuple[str, ...]] = set()
    net = timm.create_model("resnet18", pretrained=False, num_classes=10).cuda().eval()
    hook = net.register_forward_pre_hook(lambda m, a: seen.add(tuple(b.fp32_precision for b in switches)))
    try:
        for b in switches:
            if b is not torch.backends.mkldnn:
                b.fp32_precision = "tf32"
        outside = tuple(b.fp32_precision for b in switches)
        x, y = torch.rand(64, 3, 64, 64), torch.randint(0, 10, (64,))
        res = sharded_pgd_accuracy(net, x, y, 4 / 255, steps=3, batch_size=32, device="cuda", progress=False)
        with torch.no_grad():
            tf32 = net(x[:32].cuda())
        restored = tuple(b.fp32_precision for b in switches) == outside
    finally:
        hook.remove()
        for b, value in zip(switches, saved, strict=True):
            b.fp32_precision = value
    with torch.no_grad():
        for b in switches:
            b.fp32_precision = "ieee"
        ieee = net(x[:32].cuda())
        for b, value in zip(switches, saved, strict=True):
            b.fp32_precision = value
    # the kernel's forwards all ran in ieee; the one forward outside it (tf32) did not
    in_kernel = {s for s in seen if s != outside}
    ieee_inside = bool(in_kernel) and all(v == "ieee" for s in in_kernel for v in s)
    ok = ieee_inside and restored and res["tf32"] is False
    return _row("fp32 eval, TF32 off", ok, time.perf_counter() - t0,
                {"forwards_in_ieee": ieee_inside, "restored": restored,
                 "max_logit_diff_tf32_vs_fp32": float((tf32 - ieee).abs().max()), "peak_mb": _peak_mb()})


def _finetune(out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "robustify", "finetune", "--output-dir", str(out), "--epochs", "2",
           "--set", "train.deterministic=true", "--set", "data.max_train_examples=512", "--set", "eval.n_examples=64",
           "--set", "train.probe_size=64", "--set", "eval.pgd_steps=3", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def check_exact_resume(tmp: Path) -> dict[str, Any]:
    """Two epochs in one go vs one epoch, stop, resume: bit-identical exported weights with train.deterministic."""
    t0 = time.perf_counter()
    whole = _finetune(tmp / "whole", [])
    first = _finetune(tmp / "split", ["--set", "train.stop_after=1"])
    second = _finetune(tmp / "split", ["--resume", "--set", "train.stop_after=null"])
    errors = [r.stderr.strip().splitlines()[-1][:200] for r in (whole, first, second) if r.returncode != 0]
    same = False
    if not errors:
        a, b = ((tmp / d / "model.safetensors").read_bytes() for d in ("whole", "split"))
        same = a == b
    return _row("exact resume, deterministic", same, time.perf_counter() - t0,
                {"bit_identical": same, **({"errors": errors} if errors else {})})


def check_bench(batch: int) -> dict[str, Any]:
    """``robustify bench`` for resnet50 at 224 px in bf16 channels_last: seconds per batch and peak memory."""
    import torch

    from robustify.bench.steps import bench_config, run_bench

    t0 = time.perf_counter()
    torch.cuda.reset_peak_memory_stats()
    cfg = bench_config(model="resnet50", batch_size=batch, image_size=224, mixed_precision="bf16",
                       channels_last=True, overrides=["model.pretrained=false"])
    report = run_bench(cfg, methods=("natural", "fgsm-rs", "pgd"), steps=5, warmup=2, num_classes=1000)
    per = {r["method"]: {"ms_per_batch": round(r["seconds_per_batch"] * 1000, 1),
                         "images_per_second": round(r["images_per_second"], 1), "peak_mb": r["peak_memory_mb"]}
           for r in report["results"]}
    return _row("bench resnet50 224px", True, time.perf_counter() - t0,
                {"batch_size": batch, "methods": per, "peak_mb": _peak_mb()})


def check_device_decode(n_images: int = 256) -> dict[str, Any]:
    """``data.decode=device``: images/s of the GPU half (nvJPEG decode, crop, antialiased resize, flip) on
    ImageNet-like JPEGs, the workers' half per core; each image's mean difference from the CPU route (same crops,
    under 2 levels), and two decodes bit-identical while the GPU is still busy with queued work (the stream race
    ``device_decode.py`` guards against)."""
    import io

    import torch
    from PIL import Image

    from robustify.bench.data_pipeline import imagenet_like_jpegs
    from robustify.data.device_decode import EncodedBatch, check_device, decode_batch
    from robustify.data.preprocessing import rrc_flip

    t0 = time.perf_counter()
    torch.cuda.reset_peak_memory_stats()
    check_device("cuda")
    files = imagenet_like_jpegs(n_images)

    def encode() -> EncodedBatch:
        batch = EncodedBatch([], [], [], [], (224, 224), "bilinear")
        for i, b in enumerate(files):
            batch.add({"bytes": b, "path": None}, seed=i, where=f"image {i}")
        return batch

    encode()  # warm-up (imports)
    w0 = time.perf_counter()
    batch = encode()
    worker_rate = n_images / (time.perf_counter() - w0)
    decode_batch(batch, "cuda")  # warm-up (nvJPEG handles, kernels)
    torch.cuda.synchronize()
    g0 = time.perf_counter()
    for _ in range(3):
        out = decode_batch(batch, "cuda")
    torch.cuda.synchronize()
    gpu_rate = 3 * n_images / (time.perf_counter() - g0)
    busy = torch.randn(4096, 4096, device="cuda")
    for _ in range(20):  # queued work on the current stream while the next decode starts
        busy = busy @ busy / 64
    again = decode_batch(batch, "cuda")
    same = bool(torch.equal(again, out))
    cpu = torch.stack([rrc_flip(Image.open(io.BytesIO(b)), (224, 224), "bilinear", i, data=b)
                       for i, b in enumerate(files)])
    per_image = (out.cpu().float() - cpu.float()).abs().mean(dim=(1, 2, 3))
    worst = float(per_image.max())
    return _row("decode on the device (data.decode=device)", same and worst < 2.0, time.perf_counter() - t0,
                {"images": n_images, "gpu_images_per_second": round(gpu_rate, 1),
                 "worker_images_per_second_per_core": round(worker_rate, 1), "repeat_bit_identical": same,
                 "mean_abs_diff_vs_cpu_route_levels": round(float(per_image.mean()), 3),
                 "worst_image_mean_abs_diff_levels": round(worst, 3), "peak_mb": _peak_mb()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--output", default="gpu_check.json", help="where to write the JSON report")
    parser.add_argument("--model", default="resnet18", help="timm architecture for the method steps (no weights)")
    parser.add_argument("--batch-size", type=int, default=64, help="minibatch of the method steps")
    parser.add_argument("--image-size", type=int, default=96, help="input size of the method steps")
    parser.add_argument("--bench-batch", type=int, default=64, help="minibatch of the resnet50 224 px bench")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the compiled steps")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU is visible; this self-check measures GPU behaviour and needs one "
              "(the CPU behaviour is covered by the test suite)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    rows += check_method_steps(args.model, args.batch_size, args.image_size, compiled=False)
    if not args.skip_compile:
        rows += check_method_steps(args.model, args.batch_size, args.image_size, compiled=True)
    rows.append(check_fp32_eval())
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(check_exact_resume(Path(tmp)))
    rows.append(check_bench(args.bench_batch))
    rows.append(check_device_decode())
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version(), "seconds": round(time.perf_counter() - t0, 1),
              "ok": all(r["ok"] for r in rows), "checks": rows}
    Path(args.output).write_text(json.dumps(report, indent=2))
    width = max(len(r["check"]) for r in rows)
    print(f"{report['gpu']}  torch {report['torch']}  CUDA {report['cuda']}  cuDNN {report['cudnn']}")
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in ("check", "ok", "seconds")}
        print(f"{r['check']:<{width}}  {'ok  ' if r['ok'] else 'FAIL'}  {r['seconds']:>6.1f}s  {json.dumps(extra)}")
    print(f"gpu_check: {'all checks passed' if report['ok'] else 'some checks FAILED'} in {report['seconds']}s; "
          f"JSON: {args.output}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
