"""The model card (README.md of a run folder and of a pushed repo), rendered from the run's record
(:class:`robustify.publish.runrecord.RunRecord`) with ``huggingface_hub.ModelCard``, built from a string (no
template engine: :func:`compose`).

The YAML front matter is what machines read: ``library_name: timm`` (so the Hub offers the timm snippet), the base
model and the data set (Hub ids only; omitted when there is none), the inherited license, tags, ``model-index``
results of the strongest evaluation (each metric named with its attack, budget and number of examples; threat
model, precision and resolution in its config and args) and a ``robustbench`` block with the fields RobustBench's
model_info files use, meaning what RobustBench means (``additional_data: true`` for real images beyond the target's
training split, such as ImageNet weights fine-tuned on CIFAR, and false for ImageNet-1k weights fine-tuned on
ImageNet-1k; ``autoattack_acc`` only from the standard AutoAttack), which is also the shape of a ``zoo/``
entry. The body is what people read: the threat model (with the resolution attacks perturb at and the BatchNorm
mode), what the model is robust to and what not, every evaluation under its own header (attack, budget, examples,
precision, resolution), how it was made and what that cost, which weights were exported, and how to use it with
plain timm (pixels in [0,1], normalized by the caller).

Units: ``model-index`` values are fractions in [0,1], as in metrics.json; the ``robustbench`` block uses percent, as
RobustBench does.

Must not: state a number that is not in the run's record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .. import sections
from ..report import pct
from ..runfolder import EPS_CURVE_PLOT, HISTORY_PLOT
from . import public
from .runrecord import Evaluation, RunRecord, before_after_rows, corruption_rows, eps_text, resolution_text

PLOTS = {  # plots a run folder may hold (written by trainer / evaluation), shown in this order when present
    EPS_CURVE_PLOT: "Robust accuracy as eps grows (it must fall towards 0; a flat curve would mean gradient masking)",
    HISTORY_PLOT: "Training history: probe clean/PGD accuracy, loss and learning rate per epoch",
}

BIBTEX = {
    "wong2020fast": """@inproceedings{wong2020fast,
  title     = {Fast is better than free: Revisiting adversarial training},
  author    = {Wong, Eric and Rice, Leslie and Kolter, J. Zico},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2020}
}""",
    "shafahi2019free": """@inproceedings{shafahi2019free,
  title     = {Adversarial Training for Free!},
  author    = {Shafahi, Ali and Najibi, Mahyar and Ghiasi, Amin and Xu, Zheng and Dickerson, John and
               Studer, Christoph and Davis, Larry S. and Taylor, Gavin and Goldstein, Tom},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2019}
}""",
    "madry2018towards": """@inproceedings{madry2018towards,
  title     = {Towards Deep Learning Models Resistant to Adversarial Attacks},
  author    = {Madry, Aleksander and Makelov, Aleksandar and Schmidt, Ludwig and Tsipras, Dimitris and Vladu, Adrian},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2018}
}""",
    "jeddi2020simple": """@article{jeddi2020simple,
  title   = {A Simple Fine-tuning Is All You Need: Towards Robust Deep Learning Via Adversarial Fine-tuning},
  author  = {Jeddi, Ahmadreza and Shafiee, Mohammad Javad and Wong, Alexander},
  journal = {arXiv preprint arXiv:2012.13628},
  year    = {2020}
}""",
    "croce2020reliable": """@inproceedings{croce2020reliable,
  title     = {Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks},
  author    = {Croce, Francesco and Hein, Matthias},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2020}
}""",
}
METHOD_PAPERS = {"fgsm-rs": "wong2020fast", "free": "shafahi2019free", "pgd": "madry2018towards",
                 "apgd": "croce2020reliable"}
SCHEDULE_PAPERS = {"slow-start-fast-decay": "jeddi2020simple", "cyclic": "wong2020fast"}
METHOD_TEXT = {
    "natural": "natural (non-adversarial) fine-tuning: a baseline, not a defense",
    "fgsm-rs": "FGSM with a random start (Fast AT, Wong et al. 2020)",
    "free": "free adversarial training (Shafahi et al. 2019)",
    "pgd": "PGD adversarial training (Madry et al. 2018)",
    "apgd": "APGD adversarial training (APGD of Croce & Hein 2020 as the attack, as in Singh et al. 2023)",
}


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * float(value), 2)


def _threat(record: RunRecord, ev: Evaluation | None = None) -> str:
    t = record.training
    size = ev.input_size if ev is not None else t.input_size
    return f"{t.norm}, eps={eps_text(t.eps)}, {resolution_text(size)}"


def robustbench_block(record: RunRecord) -> dict[str, Any]:
    """RobustBench's model_info fields for the strongest evaluation (accuracies in percent), plus how the PGD
    figure was measured and at which resolution and precision. ``autoattack_acc`` appears only for the standard
    AutoAttack; ``additional_data`` is RobustBench's (:func:`robustify.publish.robustbench.additional_data`: true for
    real images beyond the target's training split, such as an ImageNet backbone fine-tuned on CIFAR)."""
    from .robustbench import additional_data

    t, s = record.training, record.strongest()
    block: dict[str, Any] = {
        "threat_model": t.norm, "eps": eps_text(t.eps), "dataset": t.dataset, "architecture": t.architecture,
        "clean_acc": _percent(s.clean_acc),
    }
    if s.aa_version == "standard":
        block["autoattack_acc"] = _percent(s.autoattack_acc)
    block |= {"pgd_acc": _percent(s.pgd_acc), "attack": s.pgd_text or "none", "n_examples": s.n_examples,
              "resolution": resolution_text(s.input_size), "precision": s.precision,
              "additional_data": additional_data(record)[0], "number_forward_passes": 1,
              "method": t.method.get("name", "?")}
    return block


def eval_results(record: RunRecord) -> list[EvalResult]:
    """model-index entries of the strongest evaluation: clean accuracy, then each robust accuracy, each named with
    its attack, budget and number of examples, with the threat model (incl. resolution) as metric config and every
    setting in the metric args."""
    t, s = record.training, record.strongest()
    threat = _threat(record, s)
    n = s.n_examples
    common: dict[str, Any] = dict(task_type="image-classification", task_name="Image Classification",
                                  dataset_type=t.dataset_hub_id or t.dataset, dataset_name=t.dataset,
                                  dataset_split=s.split)
    setup = {"n_examples": n, "precision": s.precision, "input_size": list(s.input_size), "evaluation": s.label}
    tm_args = {"threat_model": t.norm, "eps": t.eps}

    def robust(name: str, value: float, args: dict[str, Any]) -> EvalResult:
        return EvalResult(metric_type="robust_accuracy", metric_name=f"{name} robust accuracy ({threat}, n={n})",
                          metric_value=value, metric_config=threat, metric_args=args | tm_args | setup, **common)

    clean_name = f"clean accuracy (n={n}, {resolution_text(s.input_size)})"
    results = [EvalResult(metric_type="accuracy", metric_name=clean_name,
                          metric_value=s.clean_acc, metric_config="clean", metric_args=dict(setup), **common)]
    if s.fgsm_acc is not None:
        results.append(robust("FGSM", s.fgsm_acc, {"attack": "fgsm", "steps": 1, "restarts": 1}))
    if s.pgd_acc is not None:
        p = s.pgd or {}
        results.append(robust(f"PGD-{p.get('steps', '?')} x{p.get('restarts', 1)} ({p.get('loss', 'ce')})", s.pgd_acc,
                              {"attack": "pgd", "steps": p.get("steps"), "restarts": p.get("restarts"),
                               "loss": p.get("loss"), "alpha": p.get("alpha")}))
    if s.autoattack_acc is not None:
        aa = s.autoattack or {}
        name = "AutoAttack (standard)" if s.aa_version == "standard" else \
            f"AutoAttack ({s.aa_version} version, not comparable with RobustBench)"
        results.append(robust(name, s.autoattack_acc, {"attack": "autoattack", "version": s.aa_version,
                                                       "attacks": aa.get("attacks"), "package": aa.get("package")}))
    if s.robust_acc is not None:
        results.append(robust("Worst-case (per example, every attack above)", s.robust_acc,
                              {"attack": "every attack above, per example"}))
    return results


def _evaluation_section(index: int, ev: Evaluation, record: RunRecord, reported: bool) -> list[str]:
    """One evaluation under its own header: who, which examples, precision, resolution, when; then its table."""
    t = record.training
    title = f"### {index}. {ev.label}" + (" (reported: the strongest evaluation)" if reported else "")
    when = f"; measured {ev.evaluated_at}" if ev.evaluated_at else ""
    lines = [title, "", f"{ev.setup_text[0].upper()}{ev.setup_text[1:]}{when}.", ""]
    before = ev.before or {}
    columns = ["attack and budget", "this model"] + ([f"base model `{t.base_model}` (before)"] if before else [])
    rows = [("clean", ev.clean_acc, before.get("clean_acc"))]
    if ev.fgsm_acc is not None:
        rows.append(("FGSM, one step of eps, no random start", ev.fgsm_acc, before.get("fgsm_acc")))
    if ev.pgd_text:
        rows.append((ev.pgd_text, ev.pgd_acc, before.get("pgd_acc")))
    if ev.aa_text:
        aa = ev.autoattack or {}
        attacks = ", ".join(aa.get("attacks") or [])
        rows.append((f"{ev.aa_text}" + (f": {attacks}" if attacks else "") +
                     (f" ({aa['package']})" if aa.get("package") else ""), ev.autoattack_acc, None))
    if ev.robust_acc is not None:
        rows.append(("worst case per example over the attacks above", ev.robust_acc, None))
    for row in before_after_rows(ev):  # beyond the threat model: unseen norms, corruptions
        if row["what"] in ("unseen", "corruptions"):
            rows.append((_beyond_name(row), row["after"], row["before"], row.get("unit")))
    lines += ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for name, value, base, *unit in rows:
        show = _shown(unit[0] if unit else None)
        cells = [name, show(value)] + ([show(base)] if before else [])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    checks = ev.checks
    if isinstance(checks, dict) and checks.get("verdict"):
        status = "passed" if checks.get("passed") else "FAILED"
        lines += [f"Gradient-masking checks ({status}): {checks['verdict']}", ""]
    return lines


def _shown(unit: str | None):  # noqa: ANN202 - a formatter
    """How a before/after value is written: accuracies as percentages; ``percent`` values (mCE) are already one."""
    return (lambda v: "n/a" if v is None else f"{v:.1f}%") if unit == "percent" else pct


def _beyond_name(row: dict[str, Any]) -> str:
    """A before/after row's first cell: what was measured and by which attack."""
    if row["what"] == "unseen":
        return f"unseen: {row['threat']}, {row['attack']}"
    return f"{row['threat']} ({row['attack']})"


def _beyond_lines(record: RunRecord) -> list[str]:
    """'Measured beyond the threat model': each unseen threat and the corruptions, the base model beside it when
    finetune measured both (its evaluation holds ``before``)."""
    lines = []
    ev = record.beyond_source("unseen")
    if ev is not None:
        base = {(u.get("norm"), u.get("eps")): u.get("acc") for u in (ev.before or {}).get("unseen") or []}
        parts = []
        for u in ev.unseen or []:
            was = base.get((u.get("norm"), u.get("eps")))
            parts.append(f"{u.get('threat')}: {pct(u.get('acc'))}" + (f" (base model {pct(was)})" if was is not None
                                                                       else ""))
        lines.append(f"- **Unseen threat models** (not trained for; {ev.unseen[0].get('label')}, "
                     f"{ev.n_examples} examples): " + "; ".join(parts) + ".")
    ev = record.beyond_source("corruptions")
    if ev is not None:  # corruptions: the corruptions suite's summary (robustify/evaluate/corruptions/)
        rows = corruption_rows(ev.corruptions, (ev.before or {}).get("corruptions"))
        text = "; ".join(f"{r['threat']}: {_shown(r.get('unit'))(r['after'])}"
                         + (f" (base model {_shown(r.get('unit'))(r['before'])})" if r["before"] is not None else "")
                         for r in rows)
        lines.append(f"- **Common corruptions**: {text or 'measured'}.")
    return lines


def _not_robust_to(record: RunRecord, eps: str) -> str:
    """What the model was not measured against, so nothing here has a number: other norms and corruptions drop
    out once an evaluation measured them."""
    t = record.training
    items = [f"larger eps than {eps}"]
    if record.beyond_source("unseen") is None:
        items.append(f"other norms than {t.norm}")
    if record.beyond_source("corruptions") is None:
        items.append("common corruptions")
    items += ["patches", "physical or semantic changes", "or inputs unlike the training data"]
    return ", ".join(items)


def _before_after_section(record: RunRecord) -> list[str]:
    """The trade fine-tuning made, side by side (metrics.json's ``before_after``): only when finetune measured
    beyond the threat model; clean and seen alone are in its evaluation's own table."""
    trade = record.before_after()
    if not trade:
        return []
    lines = ["## Before and after fine-tuning",
             f"The base model `{trade['base_model']}` and this model on the same {trade['n_examples']} examples with "
             f"the same attacks ({trade['evaluation']}):", "",
             "| measured | base model (before) | this model (after) | change |", "|---|---|---|---|"]
    for r in trade["rows"]:
        show = _shown(r.get("unit"))
        where = f" [{r['evaluation']}]" if r.get("evaluation") else ""
        name = {"clean": "clean", "seen": f"seen (the threat model): {r.get('threat')}, {r.get('attack')}"}.get(
            r["what"]) or _beyond_name(r)
        change = "n/a" if r["before"] is None or r["after"] is None else (
            f"{r['after'] - r['before']:+.1f} pts" if r.get("unit") == "percent" else
            f"{100 * (r['after'] - r['before']):+.1f} pts")
        lines.append(f"| {name}{where} | {show(r['before'])} | {show(r['after'])} | {change} |")
    return lines + [""]


def _eps_curve_table(evaluation: dict[str, Any] | None) -> list[str]:
    curve = (evaluation or {}).get("eps_curve") or {}
    points = curve.get("points") or []
    if not points:
        return []
    attack = curve.get("attack", {})
    sub = (evaluation or {}).get("subset") or {}
    where = f" on the first {sub.get('first_n', '?')} `{sub.get('split', '?')}` examples at " \
            f"{resolution_text(sub.get('input_size') or [])}" if sub else ""
    head = f"Accuracy as eps grows ({attack.get('name', 'pgd').upper()}-{attack.get('steps', '?')}, " \
           f"{attack.get('loss', 'ce')} loss, one restart{where}, from the latest `robustify eval`):"
    return [head, "", "| eps | " + " | ".join(eps_text(p["eps"]) if p["eps"] else "0" for p in points) + " |",
            "|---" * (len(points) + 1) + "|", "| accuracy | " + " | ".join(pct(p["acc"]) for p in points) + " |", ""]


def _method_args(method: dict[str, Any]) -> str:
    args = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in method.items() if k != "name"]
    return ", ".join(args) or "no arguments"


def _citations(record: RunRecord) -> list[str]:
    t = record.training
    keys = [METHOD_PAPERS.get(t.method.get("name", "")), SCHEDULE_PAPERS.get(t.schedule.get("name", ""))]
    if any(e.autoattack_acc is not None for e in record.evaluations):
        keys.append("croce2020reliable")
    seen: list[str] = []
    for key in keys:
        if key and key not in seen:
            seen.append(key)
    return [BIBTEX[k] for k in seen]


def _robust_summary(ev: Evaluation) -> str:
    parts = []
    if ev.pgd_text:
        parts.append(f"{pct(ev.pgd_acc)} accuracy under {ev.pgd_text}")
    if ev.aa_text:
        parts.append(f"{pct(ev.autoattack_acc)} under {ev.aa_text}")
    if ev.robust_acc is not None:
        parts.append(f"{pct(ev.robust_acc)} against every attack run (per example)")
    return "; ".join(parts) or "no robust accuracy recorded"


def _frontier_lines(record: RunRecord) -> list[str]:
    """Card lines for the run's options (each registered option's own, then few-shot), from the record's options
    and history; none when no option was on."""
    opts, lines = record.training.options or {}, []
    for unit in sections.options():  # each registered option's own lines (train/options/), in registry order
        lines += unit.card_lines(record)
    if "per_class" in opts:
        lines.append(f"- Few-shot: {opts['per_class']} training examples per class (seeded, balanced).")
    return lines


def _weights_text(record: RunRecord) -> str:
    t = record.training
    epoch = t.selected_epoch if t.selected_epoch is not None else "?"
    # the weights an option exported (the weight average), in its own words (train/options/, through sections)
    which = next((f"{unit.exported_text} at " for unit in sections.options()
                  if unit.exported_as is not None and unit.exported_as == t.weights), "")
    probe = "held-out" if (t.probe or {}).get("probe_split") == "heldout" else "training"
    if t.stopped:
        return f"{which}epoch {epoch}, the last good epoch before training stopped ({t.stopped})"
    if t.selection == "best-robust":
        return f"{which}epoch {epoch} of {t.epochs}, the epoch with the best robust accuracy on the {probe} probe"
    return f"{which}epoch {epoch}, the last epoch"


def _body(record: RunRecord, license: str | None, repo_id: str | None, recipe_yaml: str | None,
          files: Iterable[str], evaluation: dict[str, Any] | None) -> str:
    t, cost = record.training, record.cost
    s = record.strongest()
    eps = eps_text(t.eps)
    spec = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    files = set(files)
    hardware = cost.get("hardware", {})
    start = f"adversarially fine-tuning `{t.base_model}`" if t.pretrained else \
        f"adversarial training of `{t.architecture}` from random initialisation"
    bn = t.bn_mode or ("n/a (natural training)" if t.method.get("name") == "natural" else "not recorded")
    lines = [
        f"# {t.name}",
        "",
        f"An adversarially robust `{t.architecture}` image classifier for `{t.dataset}`, made with "
        f"[robustify](https://github.com/robustify/robustify) by {start}. "
        "It loads with plain timm; robustify is not needed to use it.",
        "",
        "## Threat model",
        f"- {t.norm} perturbations of radius **eps = {eps}** in [0,1] pixel space (before normalization), at the "
        f"resolution the attacks perturb: **{resolution_text(s.input_size)}** (the model's input size "
        f"{tuple(t.input_size)}; eps means something else at another resolution).",
        f"- BatchNorm mode while the training attacks were generated: `{bn}`; "
        "every evaluation attacks the model in eval mode.",
        "",
        "## What it is robust to, and what not",
        f"- **Robust to**: the threat model above: {_robust_summary(s)}, against {pct(s.clean_acc)} on clean "
        f"inputs ({s.n_examples} `{s.split}` examples, {s.precision}).",
        *_beyond_lines(record),
        f"- **Not robust to**: {_not_robust_to(record, eps)}. Robust accuracy is an upper bound measured "
        "by the attacks named here; stronger or adaptive attacks may find more errors"
        + ("." if s.aa_version == "standard" else
           ", and the standard AutoAttack (RobustBench's evaluation) was not run for the reported numbers."),
    ]
    if t.stopped:
        lines.append(f"- Training stopped early: {t.stopped}.")
    worst = record.worst_case(s)
    lines += ["", *_before_after_section(record), "## Results",
              "Each evaluation below names its attacks and budgets, its examples, precision and resolution. The "
              "reported one (the front matter's `model-index` and `robustbench` numbers) is the strongest: the most "
              "examples, then AutoAttack standard > other AutoAttack versions > PGD, then the larger budget; a weaker "
              "evaluation never replaces it.", ""]
    order = [s] + [e for e in reversed(record.evaluations) if e is not s]
    for i, ev in enumerate(order, 1):
        lines += _evaluation_section(i, ev, record, reported=ev is s)
    if worst is not None and worst[0] < min((acc for acc, _ in s.robust_numbers()), default=2.0):
        lines += [f"Lowest robust accuracy any evaluation found on the reported examples: **{pct(worst[0])}** "
                  f"({worst[1]}).", ""]
    lines += _eps_curve_table(evaluation)
    for name, caption in PLOTS.items():
        if name in files:
            lines += [f"![{caption}]({name})", "", f"*{caption}.*", ""]
    from .robustbench import card_lines

    lines += card_lines(record)  # where it stands on RobustBench's board (cached board only; never online)
    own = sections.declared("precision").get(t.mixed_precision)  # a precision an option implements: its words
    lines += [
        "## How it was made",
        f"- Base model: `{t.base_model}`" + (f" ([{t.base_model_hub_id}](https://huggingface.co/"
                                            f"{t.base_model_hub_id}))" if t.base_model_hub_id else "")
        + ("" if t.pretrained else " (architecture only: trained from scratch)") + f"; data: `{t.dataset}` "
        f"(`{t.train_split}` to train, `{t.eval_split}` to evaluate).",
        f"- Method: `{t.method.get('name')}`, {METHOD_TEXT.get(t.method.get('name', ''), t.method.get('name'))}; "
        f"{_method_args(t.method)}.",
        f"- Learning-rate schedule: `{t.schedule.get('name')}`, peak lr {t.schedule.get('lr', 0):g}; {t.epochs} "
        f"epochs, batch size {t.batch_size}, optimizer {t.optimizer}, training precision {t.mixed_precision}"
        + (f" ({own.precision_card})" if own is not None else "") + ".",
        *_frontier_lines(record),
        f"- Exported weights: {_weights_text(record)}.",
        f"- Cost: {cost.get('wall_seconds', 0.0):.1f} s wall time on {hardware.get('device', '?')} "
        f"(x{cost.get('world_size', 1)} process(es)); {cost.get('optimizer_steps', '?')} optimizer steps; "
        f"{cost.get('example_passes', 0):,} forward/backward passes over examples "
        f"({cost.get('passes_per_batch', '?')} per minibatch)"
        + (f"; gradient all-reduce through `{cost['comm_hook']}`" if cost.get("comm_hook") else "")
        + (f" ({cost['comm_bytes_per_step']:,.0f} bytes per step per process)" if cost.get("comm_bytes_per_step")
           else "")
        + "".join(unit.cost_text(cost) for unit in sections.options()) + ".",  # each option's clause
        "- Files: `recipe.yaml` (the resolved recipe; local paths reduced to file names), `metrics.json` "
        "(`before`/`after`, every evaluation, per-epoch history, cost), `config.json` (timm config plus a "
        "`robustness` block).",
        "",
    ]
    if recipe_yaml:
        lines += ["<details><summary>The recipe (recipe.yaml)</summary>", "", "```yaml", recipe_yaml.rstrip(), "```",
                  "", "</details>", ""]
    lines += [
        "## Usage with plain timm",
        "The model expects *normalized* inputs like every timm model; the threat model is defined on pixels in "
        "[0,1], so an attack must perturb the [0,1] image and normalize inside the model it attacks:",
        "",
        "```python",
        "import timm, torch",
        f'model = timm.create_model("{spec}", pretrained=True).eval()',
        "cfg = model.pretrained_cfg",
        "mean = torch.tensor(cfg[\"mean\"]).view(1, -1, 1, 1)",
        "std = torch.tensor(cfg[\"std\"]).view(1, -1, 1, 1)",
        "x = torch.rand(1, *cfg[\"input_size\"])                 # pixels in [0, 1], at the input size above",
        "logits = model((x - mean) / std)                      # [0,1] -> normalize -> model",
        "```",
        "",
        f'With robustify, `robustify.load("{spec}")` returns the model with normalization inside ([0,1] inputs), '
        "ready for attacks.",
        "",
    ]
    if license:
        lines += [f"License: `{license}`, inherited from the base model `{t.base_model}`.", ""]
    else:
        lines += [f"License: the base model `{t.base_model}` states none; check its terms before reuse.", ""]
    cites = _citations(record)
    if cites:
        lines += ["## Citation", "The methods that made this model:", "", "```bibtex", "\n\n".join(cites), "```", ""]
    return "\n".join(lines)


def render_card(record: RunRecord, license: str | None = None, *, repo_id: str | None = None,
                recipe_yaml: str | None = None, files: Iterable[str] = (),
                evaluation: dict[str, Any] | None = None) -> ModelCard:
    """The card of ``record``.

    ``repo_id`` fills the usage snippet (``hf-hub:ORG/NAME``; a ``local-dir:`` placeholder without it),
    ``recipe_yaml`` is shown in the card, ``files`` (names in the folder or repo) decides which plots to embed, and
    ``evaluation`` (eval.json of ``robustify eval``) adds the accuracy-vs-eps table.
    """
    t = record.training
    data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=license,
        base_model=t.base_model_hub_id if t.pretrained else None,
        datasets=trained_on(record),
        tags=["image-classification", "timm", "adversarial-robustness", "robustify", f"{t.norm.lower()}-robust",
              t.method.get("name", "?")],
        model_name=t.name,
        eval_results=eval_results(record),
        robustbench=robustbench_block(record),
    )
    return compose(data, _body(record, license, repo_id, recipe_yaml, files, evaluation))


def trained_on(record: RunRecord) -> list[str] | None:
    """The card's ``datasets``: the Hub data sets the weights were trained on, the target's and every set an option
    mixed in (extra labelled data, an unlabeled pool) that lives on the Hub, each once; None: none on the Hub."""
    from .robustbench import extra_sets

    ids = [record.training.dataset_hub_id, *(s.get("hub_id") for s in extra_sets(record))]
    return list(dict.fromkeys(i for i in ids if i)) or None


def compose(data: ModelCardData, body: str) -> ModelCard:
    """A card from its front matter and its body, without a template engine: the body holds user text (the recipe,
    names), and a template would read ``{{``, ``{%`` or ``{#`` in it as its own syntax (huggingface_hub's
    ``from_template`` renders with Jinja, which then fails on, or silently drops, such text). The layout is the one
    ``from_template`` gave (front matter, a blank line, the body without its final newline), so a card is byte for
    byte the card an earlier version wrote and an unchanged run pushes no new commit."""
    body = body.removesuffix("\n")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def run_card(record: RunRecord, config: Mapping[str, Any], recipe_yaml: str | None, files: Iterable[str], *,
             evaluation: dict[str, Any] | None = None, repo_id: str | None = None) -> str:
    """README.md of a run folder (export, ``robustify eval``) or of its pushed repo: the one place that gathers the
    card's inputs. The license is the base model's (config.json's ``pretrained_cfg``), the recipe is shown as
    published (:func:`public.recipe`: local paths reduced to names), ``files`` decides which plots are embedded."""
    license_ = (config.get("pretrained_cfg") or {}).get("license")
    shown = public.recipe(recipe_yaml, record.training.name) if recipe_yaml else None
    return str(render_card(record, license=license_, repo_id=repo_id, recipe_yaml=shown, files=files,
                           evaluation=evaluation))
