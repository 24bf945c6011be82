"""GPU self-check: what the CPU test suite cannot show, measured on one CUDA GPU in one run (< 8 minutes on an H100),
offline.

    python scripts/gpu_check.py [--output gpu_check.json] [--skip-compile] [--budget-seconds 420] [--only PREFIX]

Every check runs guarded: a failure (an exception, a subprocess that dies, a timeout, a refusal such as a torchvision
without nvJPEG) is a row with its one-line reason, and the rest still runs. The JSON is rewritten (temporary file,
then rename) after every row, so a run killed half-way leaves every finished row on disk; the table is printed at
the end. A check that would start after ``--budget-seconds`` is a row saying it was skipped.

1. ``step ...``: every method (natural, fgsm-rs, n-fgsm, free, pgd, deat) and option (TRADES, AWP, EMA, FOSC, L2, L1,
   eps warm-up, pure-bf16 with torch-optimi) through the trainer's own step code (``bench.steps.method_step``) in
   bf16 autocast with channels_last, each on a fresh accelerator: finite loss, zero host synchronisations per step
   (two steps under ``torch.cuda.set_sync_debug_mode("error")``; a sync is reported with the robustify line that
   made it), ms per step, peak memory.
2. ``compiled ...``: the same for every method with ``train.compile``: the number of graphs compiled after the
   warm-up (recompiles; goal 0).
3. ``fp32 eval``: the evaluation kernel's forwards run with TF32 off (observed by a hook on a layer *inside* the
   network: the kernel's FP32 view calls ``forward`` directly, so a hook on the network itself never fires) while
   the caller allows TF32, and the caller's setting is restored; ``autoattack``: AutoAttack on CUDA under the same
   switch.
4. ``exact resume``: two epochs in one go vs one epoch, stop, ``--resume`` with ``train.deterministic``: the exported
   weights must be bit-identical.
5. ``bench resnet50 224px``: natural and fgsm-rs images/s in bf16 channels_last and their ratio (goal <= 1.75).
6. ``loader ...``: ``robustify finetune`` on a parquet folder of JPEGs written here (workers decode, pinned memory,
   non-blocking copies), then with ``data.decode=device`` (nvJPEG inside the training loop): images/s of each.
7. ``decode on the device``: the GPU decode's images/s alone, each image's difference from the CPU route, and a repeat
   decode while the GPU is busy (bit-identical).

Needs only the repository, its dependencies (the device image's, or wheels carried with ``pip download`` and
installed with ``--no-index``) and no network. On a machine without a CUDA GPU it refuses in one line (exit 2).
Exit 0 when every row is ok, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("natural", "fgsm-rs", "n-fgsm", "free", "pgd", "deat")
# (row label, method, overrides): every method, then every option on the method it applies to
STEP_VARIANTS: list[tuple[str, str, list[str]]] = [
    *[(name, name, []) for name in METHODS],
    ("pgd TRADES", "pgd", ["method.loss=trades"]),
    ("fgsm-rs TRADES", "fgsm-rs", ["method.loss=trades"]),
    ("pgd AWP", "pgd", ["train.awp=true"]),
    ("fgsm-rs EMA", "fgsm-rs", ["train.ema=true"]),
    ("pgd FOSC", "pgd", ["method.fosc=true"]),
    ("fgsm-rs L2", "fgsm-rs", ["threat.norm=L2", "threat.eps=0.5"]),
    ("pgd L1", "pgd", ["threat.norm=L1", "threat.eps=12"]),
    ("fgsm-rs eps warm-up", "fgsm-rs", ["threat.eps_warmup_fraction=0.5"]),
    ("fgsm-rs pure-bf16", "fgsm-rs", ["train.mixed_precision=pure-bf16"]),
]
RATIO_GOAL = 1.75  # FGSM-RS / natural seconds per batch, ResNet-50 224 px bf16
SUBPROCESS_TIMEOUT = 240


class CheckFailed(Exception):
    """A check that ran but did not pass, with its one-line reason (a subprocess's last words, for example)."""


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (the type alone when the message is empty), at most 240 characters."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}"[:240] if first else type(error).__name__


def robustify_frame(error: BaseException) -> str | None:
    """The innermost line of robustify's own code in the error's traceback (where a host sync was made)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f"{os.sep}robustify{os.sep}" in f.filename]
    if not frames:
        return None
    f = frames[-1]
    return f"{Path(f.filename).relative_to(ROOT) if f.filename.startswith(str(ROOT)) else f.filename}:{f.lineno} " \
           f"({f.line})"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


class Report:
    """The self-check's rows, written to ``path`` after each one (atomically), and the table printed at the end."""

    def __init__(self, path: Path, header: dict[str, Any], budget_seconds: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.path, self.header, self.budget, self.clock = Path(path), dict(header), budget_seconds, clock
        self.rows: list[dict[str, Any]] = []
        self.t0 = clock()
        self.write()

    def check(self, name: str, fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run ``fn`` (returning the row's fields; ``ok`` defaults to True) guarded; append and write its row."""
        elapsed = self.clock() - self.t0
        if self.budget is not None and elapsed > self.budget:
            return self.add({"check": name, "ok": False, "seconds": 0.0,
                             "error": f"skipped: the time budget of {self.budget:.0f}s was spent ({elapsed:.0f}s)"})
        start = self.clock()
        try:
            detail = dict(fn(*args, **kwargs) or {})
            ok = bool(detail.pop("ok", True))
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - every failure is a row of the report, never the end of it
            ok, detail = False, {"error": one_line(e)}
            where = robustify_frame(e)
            if where:
                detail["at"] = where
        return self.add({"check": name, "ok": ok, "seconds": round(self.clock() - start, 1), **detail})

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        self.rows.append(row)
        self.write()
        return row

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r["ok"] for r in self.rows)

    def write(self) -> None:
        data = {**self.header, "seconds": round(self.clock() - self.t0, 1), "ok": self.ok, "checks": self.rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".tmp_{self.path.name}")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path)

    def table(self) -> str:
        """One line per check: name, ok/FAIL, seconds, then its fields (the error first when there is one)."""
        width = max([len(r["check"]) for r in self.rows] + [5])
        lines = [f"{'check':<{width}}  ok?   seconds  details"]
        for r in self.rows:
            extra = {k: v for k, v in r.items() if k not in ("check", "ok", "seconds")}
            order = sorted(extra, key=lambda k: (k not in ("error", "at"), 0))
            details = "  ".join(f"{k}={_cell(extra[k])}" for k in order)
            lines.append(f"{r['check']:<{width}}  {'ok  ' if r['ok'] else 'FAIL'}  {r['seconds']:>7.1f}  {details}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ helpers
def _reset_accelerate() -> None:
    """A fresh Accelerator per check (precision and compile settings differ); the process group is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _release() -> None:
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


def _peak_mb() -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _graphs() -> int:
    """Graphs compiled so far by torch.compile in this process (dynamo's counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_cli(args: list[str], timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess:
    """``python -m robustify ARGS`` offline; a failure raises :class:`CheckFailed` with the last line it printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    res = subprocess.run([sys.executable, "-m", "robustify", *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    if res.returncode != 0:
        said = [line for line in (res.stderr + "\n" + res.stdout).splitlines() if line.strip()]
        raise CheckFailed(f"robustify {args[0]} exited {res.returncode}: "
                          f"{said[-1].strip()[:200] if said else 'no output'}")
    return res


# ------------------------------------------------------------------------------------------------ checks
def check_step(method: str, overrides: list[str], model: str, batch: int, size: int,
               compiled: bool = False) -> dict[str, Any]:
    """One method (and option) through the trainer's step code on a fresh accelerator: finite loss, no host sync in
    two steps, ms per step (CUDA events), peak memory; compiled: graphs compiled after the warm-up."""
    import torch

    from robustify.bench.steps import _time_steps, bench_config, method_step, synthetic_setup
    from robustify.train import eps_warmup
    from robustify.train.hardware import resolve_hardware_settings

    _reset_accelerate()
    if compiled:
        torch._dynamo.reset()
    pure = "train.mixed_precision=pure-bf16" in overrides
    rest = [o for o in overrides if not o.startswith("train.mixed_precision=")]
    cfg = bench_config(model=model, batch_size=batch, image_size=size, mixed_precision="pure-bf16" if pure else "bf16",
                       channels_last=True, overrides=[f"method.name={method}", "method.steps=3", "method.replays=2",
                                                      "method.max_strength=3", *rest,
                                                      *(["train.compile=true"] if compiled else [])])
    resolve_hardware_settings(cfg, "cuda")
    base, accelerator, batches = synthetic_setup(cfg, 10, 2)
    try:
        m, step, _ = method_step(method, cfg, base, accelerator, 32)
        share = eps_warmup.factor(cfg.threat.eps_warmup_fraction, 0.25)  # a quarter into a warm-up stage

        def one(i: int) -> Any:
            with eps_warmup.scaled(m, share):
                return step(*batches[i % len(batches)])

        torch.cuda.reset_peak_memory_stats()
        warm = 3 if compiled else 2
        for i in range(warm):
            res = one(i)
        finite = bool(torch.isfinite(res.loss).all().item())
        graphs = _graphs()
        times, _ = _time_steps(one, warm, 3, accelerator.device)  # before the sync check, which may stop a step
        times.sort()
        sync, where = None, None
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(2):
                one(warm + 3 + i)
        except RuntimeError as e:
            sync, where = one_line(e), robustify_frame(e)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        row: dict[str, Any] = {"method": m.name, "precision": cfg.train.mixed_precision, "channels_last": True,
                               "loss_finite": finite, "host_sync": sync, "ms_per_step": round(times[1] * 1000, 1),
                               "images_per_second": round(batch / times[1], 1), "peak_mb": _peak_mb()}
        if where:
            row["sync_at"] = where
        ok = finite and sync is None
        if compiled:
            row["recompiles_after_warmup"] = _graphs() - graphs
            row["graphs"] = _graphs()
            ok = ok and row["recompiles_after_warmup"] == 0
        return {"ok": ok, **row}
    finally:
        accelerator.end_training()
        batches.clear()  # the synthetic minibatches on the device, before the next row's fresh accelerator
        _release()


def check_fp32_eval() -> dict[str, Any]:
    """The kernel's forwards see TF32 off although the caller allows it; the caller's setting is restored.

    The hook sits on a layer inside the network: the kernel's :class:`FP32` view calls ``net.forward`` directly (to
    get around Accelerate's autocast wrapper), which runs the layers' hooks but never the network's own."""
    import timm
    import torch

    from robustify.evaluate.kernel import _fp32_switches, sharded_pgd_accuracy

    switches = _fp32_switches()
    saved = [b.fp32_precision for b in switches]
    seen: list[tuple[str, ...]] = []
    net = timm.create_model("resnet18", pretrained=False, num_classes=10).cuda().eval()
    layer = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    hook = layer.register_forward_pre_hook(lambda m, a: seen.append(tuple(b.fp32_precision for b in switches)))
    x, y = torch.rand(64, 3, 64, 64), torch.randint(0, 10, (64,))
    try:
        for b in switches:
            if b is not torch.backends.mkldnn:
                b.fp32_precision = "tf32"
        outside = tuple(b.fp32_precision for b in switches)
        res = sharded_pgd_accuracy(net, x, y, 4 / 255, steps=3, batch_size=32, device="cuda", progress=False)
        inside = list(seen)
        restored = tuple(b.fp32_precision for b in switches) == outside
        with torch.no_grad():
            tf32 = net(x[:32].cuda())
        for b in switches:
            b.fp32_precision = "ieee"
        with torch.no_grad():
            ieee = net(x[:32].cuda())
    finally:
        hook.remove()
        for b, value in zip(switches, saved, strict=True):
            b.fp32_precision = value
    all_ieee = bool(inside) and all(v == "ieee" for s in inside for v in s)
    return {"ok": all_ieee and restored and res["tf32"] is False, "forwards_seen": len(inside),
            "forwards_in_ieee": all_ieee, "restored": restored,
            "max_logit_diff_tf32_vs_fp32": float((tf32 - ieee).abs().max()), "peak_mb": _peak_mb()}


def check_autoattack() -> dict[str, Any]:
    """AutoAttack (standard) on CUDA under the evaluation's fp32 switch, on the bundled quickstart model and data."""
    import torch

    from robustify.evaluate.autoattack import sharded_autoattack
    from robustify.evaluate.kernel import fp32_math
    from robustify.models import load_backbone

    model = load_backbone("quickstart").cuda().eval()
    x, y = _quickstart_batch(64)
    with fp32_math():
        res = sharded_autoattack(model, x, y, 0.1, "Linf", batch_size=64, device="cuda", progress=False)
    acc = {k: v for k, v in res.items() if isinstance(v, float)}
    return {"ok": bool(acc) and all(0.0 <= v <= 1.0 for v in acc.values()), **acc, "peak_mb": _peak_mb(),
            "tf32_after": torch.backends.cuda.matmul.fp32_precision}


def _quickstart_batch(n: int):
    import numpy as np
    import torch

    from robustify.data import QUICKSTART_DIR

    with np.load(QUICKSTART_DIR / "digits.npz") as a:
        x = torch.from_numpy(a["x_test"][:n]).permute(0, 3, 1, 2).float().div(255)
        y = torch.from_numpy(a["y_test"][:n]).long()
    return x, y


RESUME_ARGS = ["--epochs", "2", "--set", "train.deterministic=true", "--set", "data.max_train_examples=512",
               "--set", "eval.n_examples=64", "--set", "train.probe_size=64", "--set", "eval.pgd_steps=3"]


def check_exact_resume(tmp: Path) -> dict[str, Any]:
    """Two epochs in one go vs one epoch, stop, resume: bit-identical exported weights with train.deterministic."""
    run_cli(["finetune", "--output-dir", str(tmp / "whole"), *RESUME_ARGS])
    run_cli(["finetune", "--output-dir", str(tmp / "split"), *RESUME_ARGS, "--set", "train.stop_after=1"])
    run_cli(["finetune", "--output-dir", str(tmp / "split"), "--resume", *RESUME_ARGS, "--set",
             "train.stop_after=null"])
    a, b = ((tmp / d / "model.safetensors").read_bytes() for d in ("whole", "split"))
    return {"ok": a == b, "bit_identical": a == b}


def check_bench(batch: int) -> dict[str, Any]:
    """``robustify bench`` for resnet50 at 224 px in bf16 channels_last: natural and fgsm-rs, and their ratio."""
    from robustify.bench.steps import bench_config, run_bench

    _reset_accelerate()
    cfg = bench_config(model="resnet50", batch_size=batch, image_size=224, mixed_precision="bf16",
                       channels_last=True)
    report = run_bench(cfg, methods=("natural", "fgsm-rs"), steps=10, warmup=3, num_classes=1000)
    per = {r["method"]: r for r in report["results"]}
    ratio = per["fgsm-rs"]["seconds_per_batch"] / per["natural"]["seconds_per_batch"]
    _release()
    return {"ok": ratio <= RATIO_GOAL, "batch_size": batch,
            "natural_images_per_second": round(per["natural"]["images_per_second"], 1),
            "fgsm_rs_images_per_second": round(per["fgsm-rs"]["images_per_second"], 1),
            "fgsm_rs_over_natural": round(ratio, 3), "goal": RATIO_GOAL,
            "peak_mb": {k: v["peak_memory_mb"] for k, v in per.items()}}


def write_jpeg_parquet(folder: Path, n_train: int = 512, n_test: int = 64) -> Path:
    """A parquet folder (the Hub's layout) of ImageNet-like JPEGs with 10 classes: the real loader path's input."""
    import datasets

    from robustify.bench.data_pipeline import imagenet_like_jpegs

    files = imagenet_like_jpegs(n_train + n_test)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        ds = datasets.Dataset.from_dict({"image": [{"bytes": files[i], "path": None} for i in rows],
                                         "label": [i % 10 for i in rows]}, features=feats)
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return folder


def loader_args(data: Path, out: Path, decode: str) -> list[str]:
    """``robustify finetune`` on the parquet folder: resnet18 (no weights) at 128 px, rrc-flip, 4 workers."""
    return ["finetune", "--output-dir", str(out), "--model", "resnet18", "--epochs", "1",
            "--set", f"data.name=parquet:{data}", "--set", "data.eval_split=test", "--set", "data.augment=rrc-flip",
            "--set", f"data.decode={decode}", "--set", "data.streaming=true", "--set", "data.image_size=128",
            "--set", "data.num_workers=4", "--set", "data.batch_size=64", "--set", "model.pretrained=false",
            "--set", "eval.n_examples=64", "--set", "eval.pgd_steps=2", "--set", "train.probe_size=32",
            "--set", "train.probe_steps=2", "--set", "method.name=fgsm-rs"]


def check_loader(data: Path, out: Path, decode: str) -> dict[str, Any]:
    """One epoch through the real loader (workers, pinned memory, non-blocking copies); images/s of the epoch."""
    run_cli(loader_args(data, out, decode))
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    seconds = history[-1]["seconds"]
    seen = metrics["cost"]["example_passes"] / max(metrics["cost"]["passes_per_batch"], 1)
    return {"decode": decode, "epoch_seconds": round(seconds, 2), "images_per_second": round(seen / seconds, 1),
            "loss": round(history[-1]["loss"], 4)}


def check_device_decode(n_images: int = 256) -> dict[str, Any]:
    """``data.decode=device`` alone: images/s of the GPU half (nvJPEG decode, crop, antialiased resize, flip), the
    workers' half per core; each image's mean difference from the CPU route (same crops, under 2 levels), and two
    decodes bit-identical while the GPU is still busy with queued work (the stream race ``device_decode.py`` guards
    against)."""
    import io

    import torch
    from PIL import Image

    from robustify.bench.data_pipeline import imagenet_like_jpegs
    from robustify.data.device_decode import EncodedBatch, check_device, decode_batch
    from robustify.data.preprocessing import rrc_flip

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
    return {"ok": same and worst < 2.0, "images": n_images, "gpu_images_per_second": round(gpu_rate, 1),
            "worker_images_per_second_per_core": round(worker_rate, 1), "repeat_bit_identical": same,
            "mean_abs_diff_vs_cpu_route_levels": round(float(per_image.mean()), 3),
            "worst_image_mean_abs_diff_levels": round(worst, 3), "peak_mb": _peak_mb()}


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--output", default="gpu_check.json", help="where to write the JSON report (row by row)")
    parser.add_argument("--model", default="resnet18", help="timm architecture for the method steps (no weights)")
    parser.add_argument("--batch-size", type=int, default=64, help="minibatch of the method steps")
    parser.add_argument("--image-size", type=int, default=96, help="input size of the method steps")
    parser.add_argument("--bench-batch", type=int, default=128, help="minibatch of the resnet50 224 px bench")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the compiled steps")
    parser.add_argument("--budget-seconds", type=float, default=420.0,
                        help="checks that would start later than this are reported as skipped")
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="run only the checks whose name starts with PREFIX (repeatable: e.g. --only compiled)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU is visible; this self-check measures GPU behaviour and needs one "
              "(the CPU behaviour is covered by the test suite)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    header = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version()}
    report = Report(Path(args.output), header, args.budget_seconds)
    print(f"{header['gpu']}  torch {header['torch']}  CUDA {header['cuda']}  cuDNN {header['cudnn']}", flush=True)
    shape = (args.model, args.batch_size, args.image_size)

    def check(name: str, fn: Callable[..., dict[str, Any]], *a: Any, **k: Any) -> None:
        if not args.only or any(name.startswith(prefix) for prefix in args.only):
            report.check(name, fn, *a, **k)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, method, overrides in STEP_VARIANTS:
            check(f"step {label}", check_step, method, overrides, *shape)
        check("fp32 eval, TF32 off", check_fp32_eval)
        check("autoattack on CUDA, TF32 off", check_autoattack)
        check("exact resume, deterministic", check_exact_resume, tmp)
        check("bench resnet50 224px", check_bench, args.bench_batch)
        check("device decode alone", check_device_decode)
        data = tmp / "jpegs"
        check("loader: write the parquet", lambda: {"folder": str(write_jpeg_parquet(data))})
        for decode in ("workers", "device"):
            check(f"loader decode={decode}", check_loader, data, tmp / f"loader-{decode}", decode)
        if not args.skip_compile:  # last: the slowest, and the budget cuts what it must
            for method in METHODS:
                check(f"compiled {method}", check_step, method, [], *shape, compiled=True)
    report.write()
    print(report.table())
    print(f"gpu_check: {'all checks passed' if report.ok else 'some checks FAILED'} in "
          f"{report.clock() - report.t0:.1f}s; JSON: {args.output}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
