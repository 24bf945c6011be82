"""``robustify bench``: what one training step of each method costs on *this* machine.

Why a command and not a test: how much slower PGD-7 is than FGSM-RS, or what free-m costs per epoch, depends on the
model, the batch size, the resolution, the precision and above all the hardware (a shared 2-core CPU, a laptop, an
H100). A timing assertion in a test is either so loose that it checks nothing or flaky on a busy machine, and the
numbers are only meaningful where the user will train. So the tests check what a step *does* (passes per batch,
schema), and timings live here, measured on demand and written to a JSON file that can be kept next to a run.

What is measured is the training code itself, not a copy of it: the config comes from a recipe plus overrides (as in
``finetune``), the Accelerator from :func:`trainer.make_accelerator`, the optimizer from
:func:`trainer.build_optimizer`, the method from :func:`methods.build_method`, and each timed minibatch is exactly
``method.step(StepContext(...), x, y)`` as in the training loop (the attack, the backward passes, the optimizer
steps, mixed precision, channels-last). Inputs are synthetic [0,1] tensors already on the device with random labels,
so data loading is excluded: the numbers are the cost of the method, not of the disk.

Each method gets a fresh copy of the same starting weights, ``warmup`` untimed minibatches (allocator, cuDNN and
autocast caches warm up there), then ``steps`` timed ones. On CUDA the step boundaries are CUDA events recorded on the
stream and the host synchronises only before the first and after the last timed step, so timing never stalls the
pipeline; on CPU the host clock is the device clock. The reported time is the median over steps.

Cost relative to ``natural`` is given per minibatch and per fine-tuning run of E epochs: free-m replays every
minibatch m times (m passes, m optimizer steps) but runs ceil(E/m) epochs, so its per-run cost is about natural's.

Must not: time anything in the test suite, or time code other than the trainer's own step.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.table import Table

from .. import sections
from ..config import FinetuneConfig, apply_override, config_from_dict, load_recipe, validate
from ..errors import UserError
from ..fileio import atomic_write_json
from ..models import RobustModel, load_backbone, resolve_spec
from ..report import Listing, output_console
from ..train import options
from ..train.hardware import maybe_compile, resolve_hardware_settings, target_device_type
from ..train.methods import METHODS, Method, StepContext, build_method
from ..train.optim import OptimizerStepper, build_optimizer, step_autocast
from ..train.trainer import hardware_info as trainer_hardware
from ..train.trainer import make_accelerator

DEFAULT_METHODS = ("natural", "fgsm-rs", "free", "pgd")
BASELINE = "natural"
NOISY_SPREAD = 1.5  # max/min step time above which the notes warn that timings are unsteady
N_BATCHES = 2  # distinct synthetic minibatches, alternated (free AT's delta then carries over as in training)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"natural,pgd"`` → ``["natural", "pgd"]``; unknown names raise a UserError listing the accepted ones."""
    names = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name not in METHODS:
            raise UserError(f"--methods: unknown method {name!r}; accepted: {', '.join(METHODS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise UserError(f"--methods is empty; give a comma-separated list of: {', '.join(METHODS)}")
    return out


def bench_config(recipe: str = "quickstart", model: str | None = None, batch_size: int | None = None,
                 image_size: int | None = None, mixed_precision: str | None = None, channels_last: bool = False,
                 overrides: Sequence[str] = ()) -> FinetuneConfig:
    """The recipe (default: the quickstart) with the bench flags applied, then ``--set`` overrides (as finetune)."""
    if batch_size is not None and batch_size <= 0:
        raise UserError(f"--batch-size {batch_size} is not accepted; use a whole number > 0")
    if image_size is not None and image_size < 8:
        raise UserError(f"--image-size {image_size} is not accepted; use 8 pixels or more")
    data = load_recipe(recipe)
    flags = {("model", "name"): model, ("data", "batch_size"): batch_size, ("data", "image_size"): image_size,
             ("train", "mixed_precision"): mixed_precision, ("model", "channels_last"): channels_last or None}
    for (section, key), value in flags.items():  # set directly: a YAML parse would read 'no' as false
        if value is not None:
            node = data.setdefault(section, {})
            if not isinstance(node, dict):
                raise UserError(f"recipe {recipe!r}: '{section}' is not a section")
            node[key] = value
    for assignment in overrides:
        apply_override(data, assignment)
    return config_from_dict(data)


def _check_counts(steps: int, warmup: int, epochs: int | None, num_classes: int | None) -> None:
    if steps < 1:
        raise UserError(f"--steps {steps} is not accepted; time at least 1 step")
    if warmup < 0:
        raise UserError(f"--warmup {warmup} is not accepted; use 0 or more warm-up steps")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs {epochs} is not accepted; use a whole number > 0")
    if num_classes is not None and num_classes < 2:
        raise UserError(f"--num-classes {num_classes} is not accepted; use 2 or more")


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bench_hardware(accelerator: Accelerator, channels_last: bool) -> dict[str, Any]:
    """The trainer's hardware record (as in metrics.json) plus what decides speed here."""
    import accelerate
    import timm

    dev = accelerator.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    info = trainer_hardware(accelerator)
    info.update({
        "device": f"{dev.type}: {name}", "device_type": dev.type, "device_name": name,
        "torch_threads": torch.get_num_threads(), "channels_last": channels_last,
        "timm": timm.__version__, "accelerate": accelerate.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
    })
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update({"cuda": torch.version.cuda, "gpu_memory_mb": round(props.total_memory / 2**20),
                     "cudnn_benchmark": torch.backends.cudnn.benchmark,
                     "float32_matmul_precision": torch.get_float32_matmul_precision()})
    return info


def _build_model(cfg: FinetuneConfig, num_classes: int | None) -> RobustModel:
    """The backbone at the bench's input size. Plain timm names are built without pretrained weights (weights do not
    change speed, and this keeps ``--model resnet50`` offline); folders and ``hf-hub:`` specs load with their weights,
    because their architecture comes with them (a cached Hub model then works offline)."""
    spec = resolve_spec(cfg.model.name)
    pretrained = spec.startswith(("local-dir:", "hf-hub:"))
    model = load_backbone(cfg.model.name, pretrained=pretrained, num_classes=num_classes,
                          image_size=cfg.data.image_size)
    native = model.pretrained_cfg.get("input_size")
    if (cfg.data.image_size is not None and model.pretrained_cfg.get("fixed_input_size") and native
            and tuple(native[1:]) != tuple(model.input_size[1:])):
        raise UserError(f"model {cfg.model.name!r} takes only {native[1]}x{native[2]} inputs (fixed input size); "
                        "drop --image-size or data.image_size")
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def release(accelerator: Accelerator) -> None:
    """Drop the accelerator's references to the previous method's model and optimizer, so each starts clean."""
    accelerator.free_memory()
    gc.collect()
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()


def _time_steps(step: Callable[[int], None], first: int, n: int, device: torch.device) -> tuple[list[float], float]:
    """Per-step seconds of ``step(first..first+n-1)`` and the wall seconds of the whole block.

    CUDA: events on the stream at every step boundary, the host waits only before and after the block.
    """
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        events[0].record()
        for i in range(n):
            step(first + i)
            events[i + 1].record()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
        return [events[i].elapsed_time(events[i + 1]) / 1000.0 for i in range(n)], wall
    times = []
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        step(first + i)
        times.append(time.perf_counter() - s)
    return times, time.perf_counter() - t0


def _note(method: Method, epochs: int) -> str:
    name = method.name
    if name == "natural":
        return "1 training pass (the cost unit)"
    if name == "fgsm-rs":
        return "1 attack step + 1 training pass"
    if name == "pgd":
        return f"{method.cfg.steps} attack steps + 1 training pass"
    if name == "apgd":
        return f"{method.cfg.steps} attack steps + 1 forward scoring the last + 1 training pass"
    if name == "free":
        m = method.cfg.replays
        return (f"each minibatch replayed m={m} times ({m} optimizer steps); a {epochs}-epoch run makes "
                f"{method.epochs(epochs)} passes over the data")
    return f"{method.passes_per_batch} passes"


def method_step(name: str, cfg: FinetuneConfig, base: RobustModel, accelerator: Accelerator,
                total_batches: int) -> tuple[Method, Callable[[torch.Tensor, torch.Tensor], Any], RobustModel]:
    """A fresh copy of ``base`` set up for training with method ``name`` exactly as the trainer sets it up
    (prepared model and optimizer, :class:`OptimizerStepper`, :class:`StepContext`, the active options
    hooked in as the trainer hooks them); returns the method and
    ``step(x, y)``, one training minibatch through ``method.step``, and the (unwrapped) model it trains.
    ``total_batches`` sizes the lr schedule."""
    cfg = copy.deepcopy(cfg)
    cfg.method.name = name
    set_seed(cfg.train.seed)
    method = build_method(cfg.method, cfg.threat)
    model = copy.deepcopy(base)
    options.prepare_backbone(cfg, model.backbone, lambda line: None)  # as the trainer's setup (an option's cast)
    optimizer = build_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = maybe_compile(accelerator.unwrap_model(model), cfg.train.compile)
    model.train()
    total_steps = max(total_batches * method.optimizer_steps_per_batch, 1)
    optimize = OptimizerStepper(accelerator, model, optimizer, cfg, total_steps)  # the trainer's own step
    # the active options' hooks as the trainer attaches them (as after each option's own warm-up epochs)
    ctx = StepContext(model=model, attack_model=raw, optimize=optimize, autocast=step_autocast(accelerator))
    for opt in options.active(cfg):  # as in an epoch after each option's own warm-up
        opt.attach(ctx, optimize, raw)
        opt.steady_state()
    return method, lambda x, y: method.step(ctx, x, y), raw


def _measure(name: str, cfg: FinetuneConfig, base: RobustModel, accelerator: Accelerator,
             batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int, warmup: int) -> dict[str, Any]:
    """Time ``steps`` minibatches of one method, after ``warmup`` untimed ones, through the training-step code."""
    device = accelerator.device
    release(accelerator)
    method, train_step, _ = method_step(name, cfg, base, accelerator, warmup + steps)

    def step(i: int) -> None:
        train_step(*batches[i % len(batches)])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        for i in range(warmup):
            step(i)
        times, wall = _time_steps(step, warmup, steps, device)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"{name}: a minibatch of {cfg.data.batch_size} does not fit in GPU memory; try a smaller "
                        "--batch-size, --mixed-precision bf16 or --image-size") from None
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    median = statistics.median(times)
    return {
        "method": name, "settings": method.describe(),
        "seconds_per_batch": median, "seconds_per_batch_mean": wall / steps,
        "seconds_per_batch_min": min(times), "seconds_per_batch_max": max(times), "step_seconds": times,
        "images_per_second": cfg.data.batch_size / median,
        "passes_per_batch": method.passes_per_batch,
        "optimizer_steps_per_batch": method.optimizer_steps_per_batch,
        "epochs_run": method.epochs(cfg.train.epochs),
        "peak_memory_mb": None if peak is None else round(peak, 1),
        "note": _note(method, cfg.train.epochs),
    }


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes held by the trainable weights, their gradients and the optimizer's state tensors (Kahan buffers
    included), measured from the tensors themselves."""
    params = [p for p in model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    return {"weights": weights, "gradients": grads, "optimizer_state": state}


def state_precisions() -> dict[str, str]:
    """The precisions the memory table measures, with their labels: fp32 (bf16 autocast keeps fp32 weights, so it is
    the same row), then each precision an option implements itself (declared to robustify/sections.py)."""
    own = {value: f"{value} ({unit.precision_note})" for value, unit in sections.declared("precision").items()}
    return {"no": "fp32 (also bf16 autocast: fp32 weights)", **own}


def state_memory(cfg: FinetuneConfig, base: RobustModel) -> dict[str, Any]:
    """Bytes of trainable weights + gradients + optimizer state under each precision, for ``cfg``'s optimizer:
    measured on copies of ``base`` after one optimizer step on zero gradients (the step that allocates the state),
    from the tensors themselves. bf16 autocast keeps fp32 weights, gradients and state, so it is the fp32 row."""
    out: dict[str, Any] = {}
    for precision, label in state_precisions().items():
        c = copy.deepcopy(cfg)
        c.train.mixed_precision = precision
        try:  # an option's own precision may refuse the optimizer (the config's own check) or miss a dependency
            validate(c)
            model = copy.deepcopy(base).cpu()
            options.prepare_backbone(c, model.backbone, lambda line: None)  # the precision's cast, if it has one
            optimizer = build_optimizer(model, c)
        except UserError as e:
            out[precision] = {"label": label, "error": str(e)}
            continue
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        b = state_bytes(model, optimizer)
        out[precision] = {"label": label, **b, "total": sum(b.values())}
        del model, optimizer
    return out


def synthetic_setup(cfg: FinetuneConfig, num_classes: int | None, n_batches: int
                    ) -> tuple[RobustModel, Accelerator, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The model, a one-process Accelerator and ``n_batches`` seeded synthetic [0,1] minibatches already on the
    device (in the recipe's memory format): what every timing in ``bench`` and ``bench --peers`` runs on."""
    base = _build_model(cfg, num_classes)  # before the Accelerator: a bad model spec leaves no process state behind
    accelerator = make_accelerator(cfg)
    if accelerator.num_processes > 1:
        raise UserError("robustify bench measures one process; run it without accelerate launch / torchrun")
    device = accelerator.device
    b, shape = cfg.data.batch_size, tuple(base.input_size)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(cfg.train.seed)
    batches = [(torch.rand((b, *shape), generator=gen).to(device).contiguous(memory_format=memory_format),
                torch.randint(0, base.num_classes, (b,), generator=gen).to(device)) for _ in range(n_batches)]
    return base, accelerator, batches


def run_bench(cfg: FinetuneConfig, methods: Sequence[str] = DEFAULT_METHODS, steps: int = 10, warmup: int = 3,
              epochs: int | None = None, num_classes: int | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure each method's training step on this machine; returns the bench JSON (see the module docstring).

    ``natural`` is always measured (first) because it is the cost unit. ``epochs`` (default: the recipe's
    ``train.epochs``) is the run length E for the per-run relative cost.
    """
    names = parse_methods(methods)
    _check_counts(steps, warmup, epochs, num_classes)
    cfg = copy.deepcopy(cfg)
    if epochs is not None:
        cfg.train.epochs = epochs
    resolve_hardware_settings(cfg, target_device_type())  # 'auto' precision / layout, as make_accelerator
    measured = [BASELINE] + [n for n in names if n != BASELINE]
    base, accelerator, batches = synthetic_setup(cfg, num_classes, N_BATCHES)
    b, shape = cfg.data.batch_size, tuple(base.input_size)

    results = []
    for name in measured:
        if progress:
            progress(f"{name}: {warmup} warm-up + {steps} timed minibatches of {b} at {'x'.join(map(str, shape))}")
        results.append(_measure(name, cfg, base, accelerator, batches, steps, warmup))
    unit = results[0]["seconds_per_batch"]
    for r in results:
        r["relative_cost_per_batch"] = r["seconds_per_batch"] / unit
        r["relative_cost_per_run"] = r["relative_cost_per_batch"] * r["epochs_run"] / results[0]["epochs_run"]
    config = {
        "model": cfg.model.name, "architecture": base.pretrained_cfg.get("architecture", type(base.backbone).__name__),
        "parameters": sum(p.numel() for p in base.parameters()), "num_classes": base.num_classes,
        "input_size": list(shape), "batch_size": b, "methods": names, "baseline": BASELINE,
        "warmup_steps": warmup, "timed_steps": steps, "epochs": cfg.train.epochs,
        "mixed_precision": cfg.train.mixed_precision, "channels_last": cfg.model.channels_last,
        "threat": {"norm": cfg.threat.norm, "eps": cfg.threat.eps},
        "method": {"steps": cfg.method.steps, "replays": cfg.method.replays, "alpha": cfg.method.alpha,
                   "bn_mode": cfg.method.bn_mode},
        "optimizer": cfg.optim.name, "grad_accum": cfg.train.grad_accum, "seed": cfg.train.seed,
        "timing": "median over timed steps; CUDA events on GPU, host clock on CPU; data loading excluded",
    }
    hardware = bench_hardware(accelerator, cfg.model.channels_last)
    release(accelerator)
    accelerator.end_training()
    return {"hardware": hardware, "config": config, "results": results, "state_memory": state_memory(cfg, base)}


def _fmt_seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def _label(r: dict[str, Any]) -> str:
    if r["method"] == "free":
        return f"free-{r['passes_per_batch']}"
    if r["method"] == "pgd":
        return f"pgd-{r['passes_per_batch'] - 1}"
    if r["method"] == "apgd":
        return f"apgd-{r['passes_per_batch'] - 2}"
    return r["method"]


def bench_table(report: dict[str, Any]) -> Table:
    """The terminal table of a bench report (notes and hardware in :func:`bench_notes`)."""
    cfg, results = report["config"], report["results"]
    size = "x".join(map(str, cfg["input_size"]))
    precision = "fp32" if cfg["mixed_precision"] == "no" else cfg["mixed_precision"]
    layout = ", channels-last" if cfg["channels_last"] else ""
    table = Listing(title=f"robustify bench: {cfg['model']} ({cfg['architecture']}, {cfg['parameters'] / 1e6:.2f} M "
                          f"params), {size}, batch {cfg['batch_size']}, {precision}{layout}", name="method",
                    drop=("passes\n/ batch", "images\n/ s", "time\n/ batch"))
    cuda = report["hardware"]["device_type"] == "cuda"
    table.add_column("method")
    for header in ("passes\n/ batch", "time\n/ batch", "images\n/ s", "x natural\n/ batch",
                   f"x natural\n/ {cfg['epochs']}-epoch run") + (("peak GPU\nmemory",) if cuda else ()):
        table.add_column(header, justify="right")
    for r in results:
        cells = [_label(r), str(r["passes_per_batch"]), _fmt_seconds(r["seconds_per_batch"]),
                 f"{r['images_per_second']:.1f}", f"{r['relative_cost_per_batch']:.2f}",
                 f"{r['relative_cost_per_run']:.2f}"]
        if cuda:
            cells.append(f"{r['peak_memory_mb'] / 1024:.2f} GiB")
        table.add_row(*cells)
    return table


def bench_notes(report: dict[str, Any]) -> list[str]:
    """The lines printed under the table: what each method's passes are, the hardware, how it was timed."""
    hw, cfg = report["hardware"], report["config"]
    lines = [f"{_label(r)}: {r['note']}" for r in report["results"]]
    threads = "" if hw["device_type"] == "cuda" else f", {hw['torch_threads']} torch threads"
    lines.append(f"{hw['device_type']}: {hw['device_name']} ({hw['cpu_count']} CPUs{threads}), torch {hw['torch']}")
    lines.append(f"median over {cfg['timed_steps']} timed minibatches per method (after {cfg['warmup_steps']} "
                 "untimed), on synthetic data already on the device (data loading excluded)")
    if BASELINE not in cfg["methods"]:
        lines.append(f"{BASELINE} was timed too: it is the cost unit")
    for row in report.get("state_memory", {}).values():
        lines.append(f"weights + gradients + {cfg['optimizer']} state, {row['label']}: " + (
            f"{row['total'] / 2**20:.1f} MiB ({row['weights'] / 2**20:.1f} + {row['gradients'] / 2**20:.1f} + "
            f"{row['optimizer_state'] / 2**20:.1f})" if "total" in row else f"not measured: {row['error']}"))
    noisy = [f"{_label(r)} {_fmt_seconds(r['seconds_per_batch_min'])}-{_fmt_seconds(r['seconds_per_batch_max'])}"
             for r in report["results"] if "seconds_per_batch_min" in r
             and r["seconds_per_batch_max"] > NOISY_SPREAD * r["seconds_per_batch_min"]]
    if noisy:
        lines.append(f"warning: step times varied more than {NOISY_SPREAD:g}x ({', '.join(noisy)}): the machine is "
                     "busy or needs more --warmup; compare the ratios with care or raise --steps")
    return lines


@contextlib.contextmanager
def progress_reporter(first: str = "loading the model") -> Iterator[Callable[[str], None]]:
    """A spinner line on a terminal, one stderr line per message in a log or CI (a long CPU run shows where it is)."""
    err = Console(stderr=True, highlight=False)
    interactive = sys.stderr.isatty()
    status = err.status(f"robustify bench: {first}") if interactive else contextlib.nullcontext()
    with status:
        def progress(msg: str) -> None:
            if interactive:
                status.update(f"robustify bench: {msg}")  # type: ignore[union-attr]
            else:
                err.print(f"robustify bench: {msg}", markup=False)

        yield progress


def print_and_save(report: dict[str, Any], table: Table | None, lines: Sequence[str],
                   output: str | os.PathLike | None) -> None:
    """The table and notes on stdout; the JSON report written atomically to ``output``."""
    console = output_console(highlight=False)
    if table is not None:
        console.print(table, crop=False)
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)  # whole lines: logs and greps see them unbroken
    if output is not None:
        atomic_write_json(output, report)
        print(f"wrote {output}")


def main(recipe: str = "quickstart", model: str | None = None, batch_size: int | None = None,
         image_size: int | None = None, methods: str | Sequence[str] = DEFAULT_METHODS, steps: int = 10,
         warmup: int = 3, epochs: int | None = None, num_classes: int | None = None,
         mixed_precision: str | None = None, channels_last: bool = False, overrides: Sequence[str] = (),
         output: str | os.PathLike | None = None, data: str | None = None,
         data_images: int = 256, show: bool = True) -> dict[str, Any]:
    """What ``robustify bench`` does: configure, measure, print the table (``show``) and the notes, write ``output``
    (JSON, atomically). With ``data``, the data pipeline is timed too and the report says which of it and the step
    bounds training."""
    names = parse_methods(methods)
    _check_counts(steps, warmup, epochs, num_classes)
    from .data_pipeline import IMAGENET_LIKE

    if data == IMAGENET_LIKE:  # decode figures on stand-ins made here: no model, no data set to download
        from .data_pipeline import decode_figures, decode_lines

        report = decode_figures(data_images, image_size or 224)
        lines = decode_lines(report)
        print("\n".join(lines))
        if output is not None:
            from ..fileio import atomic_write_json

            atomic_write_json(output, report)
        return report
    if data is not None:
        overrides = [*overrides, f"data.name={data}"]
    cfg = bench_config(recipe, model, batch_size, image_size, mixed_precision, channels_last, overrides)
    with progress_reporter() as progress:
        report = run_bench(cfg, names, steps=steps, warmup=warmup, epochs=epochs, num_classes=num_classes,
                           progress=progress)
        if data is not None:
            from .data_pipeline import time_pipeline, verdict

            progress(f"data pipeline: decoding and augmenting {data_images} examples of {data}")
            shape = tuple(report["config"]["input_size"])
            report["data_pipeline"] = time_pipeline(data, cfg.data.train_split, shape, cfg.data.augment,
                                                    data_images, cfg.data.num_workers)
            report["bound_by"] = verdict(report["data_pipeline"], report["results"])
    lines = bench_notes(report)
    if data is not None:
        from .data_pipeline import verdict_lines

        lines += verdict_lines(report)
    print_and_save(report, bench_table(report) if show else None, lines, output)
    return report
