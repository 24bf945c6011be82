"""``robustify bench --time-to-robust``: how much sooner adversarial fine-tuning reaches a robust accuracy than
adversarial training from scratch, on a recipe's data (default: the quickstart's). The splits are decoded once into
memory at the recipe's attack resolution (:func:`preprocessing`, as the trainer builds it) and neither contender gets
augmentation, so this suits small data sets or ``--limit-train``.

Two contenders, same architecture, same data, same threat model, same evaluation:

* ``finetune`` -- the quickstart recipe: FGSM-RS with the slow-start/fast-decay schedule, from the bundled naturally
  pretrained backbone (the pretraining cost is *excluded*: the point of robustify is to start from a model that
  already exists);
* ``scratch`` -- PGD-AT (Madry et al. 2018; ``method.steps`` 7 by default) from a random initialisation, with a
  one-cycle (``cyclic``) schedule spanning its epoch budget, as from-scratch adversarial training is usually run.

After every epoch both are evaluated with PGD on the test split (the quickstart's PGD-10, eval-mode BatchNorm,
the same kernel as ``finetune``'s evaluation). The target robust accuracy is ``target_acc`` or, by default, the best
the fine-tuning run reaches; each contender's cost is what it spent until the end of the first epoch at which it
reached the target: training wall seconds (evaluation excluded and reported apart) and forward/backward passes
(example passes: examples x passes per minibatch, as ``metrics.json`` counts them). ``speedup`` is scratch over
finetune; when scratch does not reach the target within its budget, it is reported with ``reached: false`` and the
speedup is a lower bound (``speedup_is_lower_bound: true``).

A from-scratch run's schedule spans its epoch budget, so how soon it reaches the target depends on the budget it was
given, and a budget too short never gets there. ``scratch_epochs`` is therefore a list of budgets (default 15, 30,
60) tried in increasing order, each a fresh run from a new random initialisation, until one reaches the target: the
``scratch`` block is that run (the cheapest budget tried that reaches the target; the shorter failed runs are listed
in ``scratch_runs`` and *not* charged to it, which favours scratch), or the longest one if none does;
``counting_failed_budgets`` gives the ratios with them charged, as a user who does not know the budget would pay.

Each epoch runs the trainer's step code itself (:func:`robustify.bench.steps.method_step`: the registered method,
:class:`~robustify.train.optim.OptimizerStepper`, Accelerate), on minibatches drawn like the trainer's (shuffled each
epoch, last short batch dropped). The data come through :func:`robustify.data.get_dataset` and are decoded once
here, so the loop's coupling to the data module is that one function.

Must not: report a ratio without the budgets that failed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

from ..config import FinetuneConfig, build_config
from ..data import get_dataset
from ..data.preprocessing import Preprocessing
from ..errors import UserError
from ..evaluate.kernel import sharded_pgd_accuracy
from ..models import build_robust_model, create_backbone
from ..train import options
from ..train.hardware import resolve_hardware_settings, target_device_type
from ..train.trainer import make_accelerator
from .steps import cpu_name, method_step

SCRATCH_METHOD = {"name": "pgd", "steps": 7}
SCRATCH_SCHEDULE = {"name": "cyclic", "lr": 0.1, "peak_fraction": 0.4}
DEFAULT_SCRATCH_EPOCHS = (15, 30, 60)


def decode(spec: str, split: str, size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole (small) split as [0,1] float tensors at ``size`` x ``size`` and labels."""
    from PIL import Image

    ds = get_dataset(spec, split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    images, labels = [], []
    for row in ds:
        img = row["image"].convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        images.append(np.asarray(img))
        labels.append(int(row["label"]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(), torch.tensor(labels)


def preprocessing(backbone: torch.nn.Module, cfg: FinetuneConfig) -> Preprocessing:
    """The recipe's preprocessing, as the trainer builds it: the backbone's data config plus ``data.image_size`` /
    ``data.attack_size`` (CIFAR recipes decode and attack at 32 px and let the model resize inside)."""
    from timm.data import resolve_data_config

    return Preprocessing.from_data_config(resolve_data_config(model=backbone), cfg.data)


def _run(label: str, cfg: FinetuneConfig, pretrained: bool, train: tuple[torch.Tensor, torch.Tensor],
         test: tuple[torch.Tensor, torch.Tensor], epochs: int, target: float | None, eval_steps: int,
         progress: Callable[[str], None] | None) -> dict[str, Any]:
    """Train for up to ``epochs`` (stopping at ``target``), evaluating PGD accuracy after each epoch."""
    set_seed(cfg.train.seed)
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    backbone = create_backbone(cfg.model.name, pretrained=pretrained, num_classes=int(train[1].max()) + 1)
    base = build_robust_model(backbone, preprocessing(backbone, cfg), source=cfg.model.name)
    if cfg.model.channels_last:
        base = base.to(memory_format=torch.channels_last)
    b = cfg.data.batch_size
    per_epoch = train[0].shape[0] // b
    if per_epoch == 0:
        raise UserError(f"data.batch_size={b} is larger than the training split ({train[0].shape[0]} examples)")
    method, step, raw = method_step(cfg.method.name, cfg, base, accelerator, epochs * per_epoch)
    xtr, ytr = train[0].to(device), train[1].to(device)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    seconds = eval_seconds = 0.0
    example_passes = 0
    history: list[dict[str, Any]] = []
    reached_at: dict[str, Any] | None = None
    for epoch in range(1, epochs + 1):
        order = torch.randperm(xtr.shape[0], generator=gen).to(device)
        raw.train()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for i in range(per_epoch):
            idx = order[i * b:(i + 1) * b]
            x = xtr[idx]
            if cfg.model.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            step(x, ytr[idx])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        example_passes += per_epoch * b * method.passes_per_batch
        t1 = time.perf_counter()
        # fp32, as the trainer's verdicts (an option's fp32 copy: pure-bf16 trains bf16 weights)
        ev = sharded_pgd_accuracy(options.evaluation_model(cfg, raw), test[0], test[1], cfg.threat.eps, cfg.threat.norm,
                                  steps=eval_steps,
                                  seed=cfg.train.seed, batch_size=cfg.data.eval_batch_size, device=device,
                                  progress=False)
        eval_seconds += time.perf_counter() - t1
        row = {"epoch": epoch, "seconds": seconds, "example_passes": example_passes, "clean_acc": ev["clean_acc"],
               "pgd_acc": ev["pgd_acc"]}
        history.append(row)
        if progress:
            progress(f"{label} epoch {epoch}/{epochs}: PGD-{eval_steps} {ev['pgd_acc']:.1%}, clean "
                     f"{ev['clean_acc']:.1%}, {seconds:.1f} s training")
        if reached_at is None and target is not None and ev["pgd_acc"] >= target:
            reached_at = row
            break
    accelerator.free_memory()
    accelerator.end_training()
    return {"method": method.describe(), "schedule": cfg.schedule.name, "lr": cfg.schedule.lr,
            "pretrained": pretrained, "epoch_budget": epochs, "history": history, "reached_at": reached_at,
            "eval_seconds": eval_seconds, "batch_size": b, "batches_per_epoch": per_epoch}


def _block(run: dict[str, Any], target: float) -> dict[str, Any]:
    """What the JSON reports for one contender: the cost of reaching ``target`` (or of its whole budget)."""
    hit = next((r for r in run["history"] if r["pgd_acc"] >= target), None)
    last = hit or run["history"][-1]
    best = max(r["pgd_acc"] for r in run["history"])
    return {"reached": hit is not None, "seconds": last["seconds"], "passes": last["example_passes"],
            "epochs": last["epoch"], "robust_acc": last["pgd_acc"], "clean_acc": last["clean_acc"],
            "best_robust_acc": best, **{k: run[k] for k in ("method", "schedule", "lr", "pretrained", "epoch_budget",
                                                             "eval_seconds", "history")}}


def parse_budgets(text: str | int | Sequence[int]) -> tuple[int, ...]:
    """``--scratch-epochs``: one epoch budget or a comma-separated list of them ("15,30,60"), sorted."""
    items = [text] if isinstance(text, int) else text.split(",") if isinstance(text, str) else list(text)
    try:
        budgets = sorted({int(str(b).strip()) for b in items})
    except ValueError:
        budgets = []
    if not budgets or budgets[0] < 1:
        raise UserError(f"--scratch-epochs {text!r} is not accepted; give whole numbers > 0, e.g. 15 or 15,30,60")
    return tuple(budgets)


def run_time_to_robust(recipe: str = "quickstart", overrides: tuple[str, ...] | list[str] = (),
                       scratch_epochs: int | str | Sequence[int] = DEFAULT_SCRATCH_EPOCHS,
                       finetune_epochs: int | None = None,
                       target_acc: float | None = None, scratch_steps: int = SCRATCH_METHOD["steps"],
                       limit_train: int | None = None, limit_eval: int | None = None,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tuning vs PGD-AT from scratch to the same PGD accuracy; returns the JSON described in the module doc."""
    budgets = parse_budgets(scratch_epochs)
    if finetune_epochs is not None and finetune_epochs < 1:
        raise UserError(f"--epochs {finetune_epochs} is not accepted; give a whole number > 0")
    if target_acc is not None and not 0 < target_acc <= 1:
        raise UserError(f"--target-acc {target_acc} is not accepted; use a fraction in (0, 1]")
    if not 7 <= scratch_steps <= 10:
        raise UserError(f"--scratch-steps {scratch_steps} is not accepted; PGD-AT from scratch uses 7 to 10 steps")
    ft = build_config(recipe, list(overrides))
    if finetune_epochs is not None:
        ft.train.epochs = finetune_epochs
    resolve_hardware_settings(ft, target_device_type())
    size = preprocessing(create_backbone(ft.model.name, pretrained=False), ft).input_size[-1]
    eval_n = min(ft.eval.n_examples, limit_eval) if limit_eval else ft.eval.n_examples
    t0 = time.perf_counter()
    train = decode(ft.data.name, ft.data.train_split, size, limit_train)
    test = decode(ft.data.name, ft.data.eval_split, size, eval_n)
    decode_seconds = time.perf_counter() - t0

    sc = copy.deepcopy(ft)
    sc.method.name, sc.method.steps, sc.method.alpha = SCRATCH_METHOD["name"], scratch_steps, None
    for key, value in SCRATCH_SCHEDULE.items():
        setattr(sc.schedule, key, value)
    steps = ft.eval.pgd_steps
    finetune = _run("finetune", ft, True, train, test, ft.train.epochs, target_acc, steps, progress)
    target = target_acc if target_acc is not None else max(r["pgd_acc"] for r in finetune["history"])
    tried: list[dict[str, Any]] = []
    for budget in budgets:  # shortest first; stop at the first budget that reaches the target
        sc.train.epochs = budget
        tried.append(_block(_run(f"scratch ({budget}-epoch budget)", sc, False, train, test, budget, target, steps,
                                 progress), target))
        if tried[-1]["reached"]:
            break
    a, b = _block(finetune, target), tried[-1]
    speedup = b["seconds"] / a["seconds"] if a["reached"] and a["seconds"] > 0 else None
    passes_ratio = b["passes"] / a["passes"] if a["reached"] and a["passes"] > 0 else None
    # what a user who does not know the right budget pays: every scratch run tried, the failed shorter ones too
    all_seconds, all_passes = sum(r["seconds"] for r in tried), sum(r["passes"] for r in tried)
    with_failed = ({"seconds": all_seconds, "passes": all_passes, "speedup": all_seconds / a["seconds"],
                    "passes_ratio": all_passes / a["passes"]} if speedup is not None and passes_ratio is not None
                   else None)
    device = target_device_type()
    return {
        "target": {"pgd_acc": target, "chosen": "given" if target_acc is not None else "best fine-tuning accuracy",
                   "attack": f"PGD-{steps} Linf eps={ft.threat.eps:g}" if ft.threat.norm == "Linf"
                   else f"PGD-{steps} {ft.threat.norm} eps={ft.threat.eps:g}",
                   "split": ft.data.eval_split, "n_examples": test[0].shape[0]},
        "finetune": a, "scratch": b,
        "scratch_runs": [{k: r[k] for k in ("epoch_budget", "reached", "epochs", "seconds", "passes",
                                            "best_robust_acc")} for r in tried],
        "speedup": speedup, "speedup_is_lower_bound": not b["reached"], "passes_ratio": passes_ratio,
        "counting_failed_budgets": with_failed,
        "data": {"name": ft.data.name, "train_examples": train[0].shape[0], "input_size": list(train[0].shape[1:]),
                 "decode_seconds": decode_seconds},
        "excluded": "the natural pretraining of the fine-tuned backbone; data decoding; the per-epoch evaluation "
                    "(reported as eval_seconds); from-scratch runs with shorter budgets that did not reach the target "
                    "(listed in scratch_runs)",
        "hardware": {"device_type": device, "device_name": torch.cuda.get_device_name() if device == "cuda"
                     else cpu_name(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }


def ttr_lines(report: dict[str, Any]) -> list[str]:
    t = report["target"]
    lines = [f"target: {t['pgd_acc']:.1%} {t['attack']} on {t['n_examples']} {t['split']} examples ({t['chosen']})"]
    for key in ("finetune", "scratch"):
        r = report[key]
        m = r["method"]
        what = f"{m['name']}" + (f"-{m['steps']}" if "steps" in m else "")
        start = "pretrained backbone" if r["pretrained"] else "random init"
        state = (f"reached {r['robust_acc']:.1%} after {r['epochs']} epoch(s)" if r["reached"] else
                 f"NOT reached in {r['epoch_budget']} epochs (best {r['best_robust_acc']:.1%})")
        lines.append(f"{key}: {what}, {r['schedule']} lr {r['lr']:g}, from {start}: {state}: {r['seconds']:.1f} s "
                     f"training, {r['passes']:,} example passes (+{r['eval_seconds']:.1f} s evaluation)")
    if len(report["scratch_runs"]) > 1:
        tried = [f"{r['epoch_budget']} epochs (" + ("reached" if r["reached"] else f"best {r['best_robust_acc']:.1%}")
                 + ")" for r in report["scratch_runs"]]
        lines.append("scratch budgets tried, each from a fresh init: " + ", ".join(tried))
    if report["speedup"] is not None:
        bound = ">= " if report["speedup_is_lower_bound"] else ""
        lines.append(f"speedup (time to the target): {bound}{report['speedup']:.1f}x in wall time, "
                     f"{bound}{report['passes_ratio']:.1f}x in passes")
        failed = report["counting_failed_budgets"]
        if len(report["scratch_runs"]) > 1 and failed:
            lines.append(f"counting the shorter scratch budgets that failed too: {bound}{failed['speedup']:.1f}x in "
                         f"wall time, {bound}{failed['passes_ratio']:.1f}x in passes")
    lines.append(f"excluded: {report['excluded']}")
    hw = report["hardware"]
    lines.append(f"{hw['device_type']}: {hw['device_name']}, {hw['torch_threads']} torch threads, torch {hw['torch']}")
    return lines


def main(recipe: str = "quickstart", overrides: tuple[str, ...] | list[str] = (),
         scratch_epochs: int | str | Sequence[int] = DEFAULT_SCRATCH_EPOCHS, finetune_epochs: int | None = None,
         target_acc: float | None = None, scratch_steps: int = 7, limit_train: int | None = None,
         limit_eval: int | None = None, output: str | None = None) -> dict[str, Any]:
    """What ``robustify bench --time-to-robust`` does: both runs, the summary lines, the JSON to ``output``."""
    from .steps import print_and_save, progress_reporter

    t0 = time.perf_counter()
    with progress_reporter("decoding the data") as progress:
        report = run_time_to_robust(recipe, overrides, scratch_epochs, finetune_epochs, target_acc, scratch_steps,
                                    limit_train, limit_eval, progress)
    report["total_seconds"] = time.perf_counter() - t0
    print_and_save(report, None, [*ttr_lines(report), f"total {report['total_seconds']:.0f} s"], output)
    return report
