"""Common corruptions (``robustify eval --attack corruptions``): the 15 corruptions of Hendrycks & Dietterich at
severities 1-5 on the fixed evaluation subset, from the published sets (RobustBench's protocol) or on the fly.

:mod:`.definitions` defines the corruptions, :mod:`.sources` reads the published sets, :mod:`.evaluate` runs the
sharded evaluation; this module is the suite entry ``robustify eval`` calls (:func:`run_suite`) and renders its
files (JSON, Markdown, a PNG of accuracy vs severity per family; names from ``runfolder.py``).

Must not: run an attack, or write a file itself (``evaluate.report`` writes all of an evaluation's files at once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...errors import UserError
from ...runfolder import CORRUPTIONS_PLOT, CORRUPTIONS_REPORT, CORRUPTIONS_TABLE
from .definitions import CORRUPTIONS, FAMILIES, SEVERITIES
from .evaluate import CorruptionSettings, evaluate_corruptions, parse_corruptions, parse_severities

__all__ = ["CORRUPTIONS", "FAMILIES", "SEVERITIES", "CorruptionSettings", "evaluate_corruptions", "files_for",
           "parse_corruptions", "parse_severities", "run_suite", "settings_from"]


def settings_from(options: dict[str, Any] | None, seed: int = 0, batch_size: int = 250) -> CorruptionSettings:
    """``robustify eval``'s corruption flags (``corruptions``, ``severities``, ``source``, ``data_repo``,
    ``baseline``, ``workers``) -> settings; a bad name is one line (:class:`UserError`)."""
    o = dict(options or {})
    workers = o.get("workers")
    if workers is not None and workers < 0:
        raise UserError(f"--corruption-workers {workers} is not accepted; use 0 or more")
    from .sources import SOURCES

    source = o.get("source") or "auto"
    if source not in SOURCES:
        raise UserError(f"--corruption-source {source!r} is not accepted; choose from: {', '.join(SOURCES)}")
    return CorruptionSettings(corruptions=parse_corruptions(o.get("corruptions")),
                              severities=parse_severities(o.get("severities")), source=source,
                              data_repo=o.get("data_repo"), baseline=o.get("baseline"), seed=seed,
                              workers=workers, batch_size=batch_size)


def run_suite(model: torch.nn.Module, ex: Any, settings: CorruptionSettings, transform: Any,
              device: torch.device | str, state: Any = None, progress: bool = True, baseline: str | None = None,
              num_classes: int | None = None, weights_sha256: str | None = None) -> dict[str, Any]:
    """The suite entry: ``model`` (and the baseline model ``baseline`` names, when it loads with the same classes)
    on every corruption x severity; the result dict ``robustify eval`` stores under ``corruptions``."""
    from ...models import load

    models: dict[str, torch.nn.Module] = {"model": model}
    note = None
    spec = settings.baseline if settings.baseline is not None else baseline
    if spec and spec != "none":
        try:
            base = load(spec)
        except UserError as e:
            base, note = None, f"baseline {spec!r} could not be loaded: {e}"
        if base is not None and num_classes is not None and base.num_classes != num_classes:
            base, note = None, (f"baseline {spec!r} has {base.num_classes} outputs, the evaluated model "
                                f"{num_classes}: no mCE")
        if base is not None:
            models[spec] = base
    elif spec is None:
        note = "no baseline model (--corruption-baseline MODEL gives one): no mCE"
    result = evaluate_corruptions(models, ex, settings, transform, device, state, progress)
    if note:
        result["baseline_note"] = note
    if weights_sha256:
        result["weights_sha256"] = weights_sha256  # export --robustbench checks it is still these weights
    return result


def markdown(r: dict[str, Any]) -> str:
    """The result as a Markdown table (corruption x severity, mean) with its source and summary lines."""
    sev = r["severities"]
    src = (f"published {r['published_set']} ({r['repo']})" if r["source"] == "published"
           else f"on-the-fly ({r['definitions']})")
    lines = [f"# Common corruptions: first {r['n_examples']} of {r['data']} {r['split']}", "",
             f"Source: {src}. " + ("Comparable with RobustBench's corruptions leaderboard when all 15 corruptions "
                                  "and 5 severities ran on its number of images." if r["source"] == "published"
                                  else "Not comparable with RobustBench (only the published sets are)."), "",
             f"Clean accuracy {100 * r['clean_acc']:.2f}%; mean corruption accuracy "
             f"{100 * r['mean_corruption_acc']:.2f}%"
             + (f"; mCE {r['mce']:.1f}%, relative mCE {r['relative_mce']:.1f}% against {r['baseline']['model']} "
                f"(mean corruption accuracy {100 * r['baseline']['mean_corruption_acc']:.2f}%)"
                if r.get("mce") is not None and r.get("relative_mce") is not None else "")
             + (f" ({r['baseline_note']})" if r.get("baseline_note") else ""), "",
             "| corruption | " + " | ".join(f"s{s}" for s in sev) + " | mean |",
             "|---|" + "---:|" * (len(sev) + 1)]
    for c in r["corruptions"]:
        acc = r["accuracy"][c]
        lines.append(f"| {c} | " + " | ".join(f"{100 * acc[str(s)]:.1f}" for s in sev)
                     + f" | {100 * r['per_corruption'][c]:.1f} |")
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: str | Path) -> None:
    """Accuracy vs severity, one panel per family (a line per corruption; the baseline dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...report import save_figure

    fams = [(f, [c for c in names if c in r["corruptions"]]) for f, names in FAMILIES.items()]
    fams = [(f, cs) for f, cs in fams if cs]
    fig, axes = plt.subplots(1, len(fams), figsize=(3.2 * len(fams), 3.2), sharey=True, squeeze=False)
    sev = r["severities"]
    for ax, (fam, cs) in zip(axes[0], fams, strict=True):
        for k, c in enumerate(cs):
            color = f"C{k}"
            ax.plot(sev, [r["accuracy"][c][str(s)] for s in sev], "o-", color=color, label=c, ms=3)
            if "baseline" in r:
                ax.plot(sev, [r["baseline"]["accuracy"][c][str(s)] for s in sev], "--", color=color, lw=1)
        ax.axhline(r["clean_acc"], color="gray", ls=":", lw=1)
        ax.set_title(fam, fontsize=10)
        ax.set_xlabel("severity")
        ax.set_xticks(sev)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy" + (f" (dashed: {r['baseline']['model']})" if "baseline" in r else ""))
    fig.suptitle(f"{r['source']} corruptions, first {r['n_examples']} of {r['data']}", fontsize=10)
    save_figure(fig, path)


def files_for(r: dict[str, Any], stem: str | None = None) -> dict[str, bytes]:
    """The result's files by name (the run folder's names; ``stem``: ``STEM_corruptions.*`` beside --output)."""
    import tempfile

    names = {CORRUPTIONS_REPORT: CORRUPTIONS_REPORT, CORRUPTIONS_TABLE: CORRUPTIONS_TABLE,
             CORRUPTIONS_PLOT: CORRUPTIONS_PLOT}
    if stem:
        names = {k: f"{stem}_{v}" for k, v in names.items()}
    with tempfile.TemporaryDirectory(prefix="robustify-plot-") as tmp:
        plot(r, Path(tmp) / "p.png")
        png = (Path(tmp) / "p.png").read_bytes()
    return {names[CORRUPTIONS_REPORT]: (json.dumps(r, indent=2) + "\n").encode(),
            names[CORRUPTIONS_TABLE]: markdown(r).encode(), names[CORRUPTIONS_PLOT]: png}
