"""Every training method on the quickstart data with the same budget, measured on the exported weights.

    python scripts/compare_methods.py [--epochs 4] [--train-examples 640] [--n-eval 100] [--output-dir runs/compare]
                                      [--only NAME,...]

Each setting is one ``robustify finetune`` of the quickstart recipe (same backbone, data, schedule, epochs and
seed; only the method options differ). Its run folder is then loaded back the way a user would (timm's
``local-dir:`` through ``robustify.load``) and measured on the first ``--n-eval`` test images: clean accuracy,
PGD-10 and quick AutoAttack at the setting's eps. The table also gives wall time, forward/backward passes and
whether catastrophic overfitting occurred: the guard fired, or at the last epoch the accuracy on the method's own
training inputs exceeds the probe's PGD accuracy by more than 50 points (FGSM "solved", PGD not: Wong et al.'s
hallmark). Fine-tuning the pretrained backbone did not overfit catastrophically in any setting we tried (eps up to
0.3, alpha up to 2.5 eps), so two extra settings train from scratch at eps 0.15: FGSM without a random start, which
does, against N-FGSM. The table is printed as
Markdown and written with the raw results to OUTPUT_DIR/compare.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from robustify.config import build_config
from robustify.data import to_unit
from robustify.evaluate.autoattack import run_autoattack, settings_for
from robustify.evaluate.kernel import sharded_pgd_accuracy
from robustify.evaluate.report import load_examples
from robustify.fileio import atomic_write_json
from robustify.models import load
from robustify.train.trainer import finetune

# name -> overrides of the quickstart recipe: adversarial fine-tuning of the pretrained backbone at eps 0.1
SETTINGS: dict[str, list[str]] = {
    "natural": ["method.name=natural"],
    "fgsm-rs": ["method.name=fgsm-rs"],
    "n-fgsm": ["method.name=n-fgsm"],
    "n-fgsm + ema": ["method.name=n-fgsm", "train.ema=true"],
    "fgsm-rs + trades": ["method.name=fgsm-rs", "method.loss=trades"],
    "free (m=4)": ["method.name=free", "method.replays=4"],
    "pgd-3": ["method.name=pgd", "method.steps=3"],
    "deat (M+)": ["method.name=deat"],
}
# the fine-tuning frontier's options (docs/methods-frontier.md), each against its plain method above
SETTINGS |= {
    "fgsm-rs + eps warm-up 0.3": ["method.name=fgsm-rs", "threat.eps_warmup_fraction=0.3"],
    "fgsm-rs + awp": ["method.name=fgsm-rs", "train.awp=true"],
    "fgsm-rs + trades + awp": ["method.name=fgsm-rs", "method.loss=trades", "train.awp=true"],
    "fgsm-rs + freeze stages:2": ["method.name=fgsm-rs", "model.freeze=stages:2"],
    "lp-ft: 1 probe epoch then fgsm-rs": ["method.name=fgsm-rs", "stages=[{name: probe, model: {freeze: backbone}, "
                                           "method: {name: natural}, train: {epochs: 1}}, {name: adversarial}]"],
}
# the catastrophic-overfitting regime: training from scratch at eps 0.15 with a flat learning rate, 12 epochs on
# all 1297 training images; FGSM from the clean input (n-fgsm with no noise, alpha = eps) against N-FGSM
SCRATCH = ["model.pretrained=false", "threat.eps=0.15", "schedule.name=constant", "schedule.lr=0.1",
           "train.epochs=12", "data.max_train_examples=null"]
SETTINGS |= {
    "scratch: fgsm (no random start)": [*SCRATCH, "method.name=n-fgsm", "method.noise_factor=0"],
    "scratch: n-fgsm": [*SCRATCH, "method.name=n-fgsm"],
}
CO_GAP = 0.5  # accuracy on its own training inputs this far above the probe's PGD accuracy: catastrophic overfitting
COMMON = ["data.max_train_examples={train}", "train.probe_size=128", "train.probe_steps=5", "eval.n_examples=32",
          "eval.pgd_steps=2"]


def measure(run_dir: Path, eps: float, n_eval: int) -> dict:
    """Clean, PGD-10 and quick AutoAttack accuracy of the run folder's exported weights."""
    model = load(str(run_dir))
    ex = load_examples("quickstart", "test", n_eval, model, progress=False)
    x, y = to_unit(ex.x), ex.y
    pgd = sharded_pgd_accuracy(model, x, y, eps, "Linf", steps=10, seed=0, progress=False)
    aa = run_autoattack(model, ex.x, y, eps, "Linf", settings_for("quick"), progress=False)
    return {"clean_acc": pgd["clean_acc"], "pgd10_acc": pgd["pgd_acc"], "autoattack_quick_acc": aa["autoattack_acc"]}


def run_setting(name: str, overrides: list[str], epochs: int, out: Path, n_eval: int, train_examples: int) -> dict:
    run_dir = out / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("=", "")
    shutil.rmtree(run_dir, ignore_errors=True)
    common = [c.format(train=train_examples) for c in COMMON]
    cfg = build_config("quickstart", [*common, f"train.epochs={epochs}", *overrides, f"output_dir={run_dir}"])
    t0 = time.perf_counter()
    metrics = finetune(cfg)
    wall = time.perf_counter() - t0
    stopped = metrics.get("stopped") or ""
    history = metrics["history"]
    return {
        "setting": name, "overrides": overrides, "eps": cfg.threat.eps, **measure(run_dir, cfg.threat.eps, n_eval),
        "wall_seconds": wall, "train_seconds": metrics["cost"]["wall_seconds"],
        "example_passes": metrics["cost"]["example_passes"], "epochs_run": metrics["cost"]["epochs"],
        "method": cfg.method.name, "guard_fired": stopped.startswith("catastrophic"), "guard_note": stopped,
        "last_train_acc": history[-1]["train_acc"], "last_probe_pgd_acc": history[-1]["probe_robust_acc"],
        "weights": metrics.get("weights", "raw"), "selected_epoch": metrics.get("selected_epoch"),
        "probe_robust_acc": [h["probe_robust_acc"] for h in history],
        "strength": [h["strength"] for h in history if "strength" in h],
    }


def table(rows: list[dict]) -> str:
    lines = ["| setting | eps | clean | PGD-10 | AA (quick) | train wall s | passes (k examples) | train-input acc / "
             "probe PGD, last epoch | catastrophic overfitting |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        co = "no"
        if r["method"] == "natural":
            co = "n/a (no attack)"
        elif r["guard_fired"]:
            co = f"yes: the guard rolled back to epoch {r['selected_epoch']}"
        elif r["last_train_acc"] - r["last_probe_pgd_acc"] > CO_GAP:
            co = "yes (the probe never rose, so the guard had nothing to roll back to)"
        name = r["setting"] + (f" (strength {r['strength']})" if r["strength"] else "")
        lines.append(f"| {name} | {r['eps']:g} | {r['clean_acc']:.1%} | {r['pgd10_acc']:.1%} | "
                     f"{r['autoattack_quick_acc']:.1%} | {r['train_seconds']:.0f} | {r['example_passes'] / 1000:.1f} "
                     f"| {r['last_train_acc']:.0%} / {r['last_probe_pgd_acc']:.0%} | {co} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-examples", type=int, default=640, help="the first N quickstart training images")
    p.add_argument("--n-eval", type=int, default=100, help="test images for clean / PGD-10 / AutoAttack (quick)")
    p.add_argument("--output-dir", default="runs/compare")
    p.add_argument("--only", help="comma-separated setting names (default: all)")
    p.add_argument("--table", metavar="COMPARE_JSON", help="only print the table of an earlier compare.json")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())["rows"]))
        return
    names = list(SETTINGS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"--only: unknown setting {unknown[0]!r}; choose from: {', '.join(SETTINGS)}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    rows = []
    for name in names:
        rows.append(run_setting(name, SETTINGS[name], args.epochs, out, args.n_eval, args.train_examples))
        atomic_write_json(out / "compare.json", {"rows": rows})
    record = {"rows": rows, "epochs": args.epochs, "n_eval": args.n_eval, "train_examples": args.train_examples,
              "total_seconds": time.perf_counter() - t0,
              "machine": f"{platform.machine()} {platform.processor()} ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    atomic_write_json(out / "compare.json", record)
    print(table(rows))
    print(f"\n{len(rows)} settings, {args.epochs} epochs on {args.train_examples} training images each, "
          f"{args.n_eval} test images; "
          f"{record['total_seconds'] / 60:.1f} min on {record['machine']}, {record['date']}")


if __name__ == "__main__":
    main()
