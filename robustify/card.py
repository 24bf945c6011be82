"""The model card (README.md of a run folder and of a pushed repo), rendered with ``huggingface_hub.ModelCard``.

The YAML front matter is what machines read: ``library_name: timm`` (so the Hub offers the timm snippet), the base
model, the data set, the inherited license, tags, ``model-index`` results (clean and each robust accuracy, with the
threat model in the metric config and the attack settings in its args) and a ``robustbench`` block with the fields
RobustBench's model_info files use, which is also the shape of a ``zoo/`` entry. The body is what people read: what
the model is robust to and what not, how it was made and what that cost, the results, and how to use it with plain
timm (pixels in [0,1], normalized by the caller).

Units: ``model-index`` values are fractions in [0,1], as in metrics.json; the ``robustbench`` block uses percent, as
RobustBench does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .report import pct

PLOTS = {  # plots a run folder may hold (written by trainer / evaluation), shown in this order when present
    "eps_curve.png": "Robust accuracy as eps grows (it must fall towards 0; a flat curve would mean gradient masking)",
    "history.png": "Training history: probe clean/PGD accuracy, loss and learning rate per epoch",
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
METHOD_PAPERS = {"fgsm-rs": "wong2020fast", "free": "shafahi2019free", "pgd": "madry2018towards"}
SCHEDULE_PAPERS = {"slow-start-fast-decay": "jeddi2020simple", "cyclic": "wong2020fast"}
METHOD_TEXT = {
    "natural": "natural (non-adversarial) fine-tuning: a baseline, not a defense",
    "fgsm-rs": "FGSM with a random start (Fast AT, Wong et al. 2020)",
    "free": "free adversarial training (Shafahi et al. 2019)",
    "pgd": "PGD adversarial training (Madry et al. 2018)",
}


def eps_text(eps: float) -> str:
    """8/255 for eps values that are whole multiples of 1/255, else the decimal."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:g}"


def hub_base_model(name: str) -> str | None:
    """The Hub id of the base model for ``base_model:`` (None for local folders and the bundled quickstart).

    ``hf-hub:ORG/NAME`` gives ``ORG/NAME``; a timm name gives the Hub id of its default pretrained weights (timm
    knows it offline).
    """
    if name.startswith("hf-hub:"):
        return name[len("hf-hub:"):].split("@", 1)[0] or None
    if name.startswith(("local-dir:", "/", ".", "~")) or name == "quickstart":
        return None
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown or odd names simply have no Hub id
        return None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def hub_dataset(name: str) -> str | None:
    """The Hub id of the data set for ``datasets:`` (None for local data and the bundled quickstart digits)."""
    from .data import ALIASES

    if name in ALIASES:
        return ALIASES[name][0]
    if "/" in name and ":" not in name and not name.startswith((".", "/", "~")):
        return name
    return None


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * float(value), 2)


def _attack_text(after: dict[str, Any]) -> str:
    pgd = after.get("pgd", {})
    return f"PGD-{pgd.get('steps', '?')}, {pgd.get('restarts', 1)} restart(s), {pgd.get('loss', 'ce')} loss"


def robustbench_block(robustness: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """RobustBench's model_info fields (threat_model, eps as "8/255", clean_acc, autoattack_acc in percent,
    additional_data, architecture, ...), plus the PGD figure and how it was measured, since AutoAttack is optional."""
    after = metrics["after"]
    tm = robustness["threat_model"]
    return {
        "threat_model": tm["norm"],
        "eps": eps_text(tm["eps"]),
        "dataset": robustness["dataset"],
        "architecture": robustness["architecture"],
        "clean_acc": _percent(after.get("clean_acc")),
        "autoattack_acc": _percent(after.get("autoattack_acc")),
        "pgd_acc": _percent(after.get("pgd_acc")),
        "attack": _attack_text(after),
        "n_examples": after.get("n_examples"),
        "additional_data": False,
        "number_forward_passes": 1,
        "method": robustness["method"]["name"],
    }


def eval_results(robustness: dict[str, Any], metrics: dict[str, Any]) -> list[EvalResult]:
    """model-index entries: clean accuracy, then each robust accuracy with its threat model (metric config) and
    attack settings (metric args): FGSM and PGD when measured, AutoAttack when run, and the per-example worst case
    over every attack when ``robustify eval`` recorded it."""
    after = metrics["after"]
    dataset, split = robustness["dataset"], robustness.get("eval_split", "test")
    tm = robustness["threat_model"]
    threat = f"{tm['norm']}, eps={eps_text(tm['eps'])}"
    common: dict[str, Any] = dict(task_type="image-classification", task_name="Image Classification",
                                  dataset_type=hub_dataset(dataset) or dataset, dataset_name=dataset,
                                  dataset_split=split)
    n = after.get("n_examples")
    tm_args = {"threat_model": tm["norm"], "eps": tm["eps"]}

    def robust(name: str, value: float, args: dict[str, Any]) -> EvalResult:
        return EvalResult(metric_type="robust_accuracy", metric_name=f"{name} robust accuracy ({threat})",
                          metric_value=value, metric_config=threat, metric_args=args | tm_args | {"n_examples": n},
                          **common)

    results = [EvalResult(metric_type="accuracy", metric_name="clean accuracy", metric_value=after["clean_acc"],
                          metric_config="clean", metric_args={"n_examples": n}, **common)]
    if after.get("fgsm_acc") is not None:
        results.append(robust("FGSM", after["fgsm_acc"], {"attack": "fgsm", "steps": 1, "restarts": 1}))
    if after.get("pgd_acc") is not None:
        pgd = after.get("pgd", {})
        results.append(robust("PGD", after["pgd_acc"], {
            "attack": "pgd", "steps": pgd.get("steps"), "restarts": pgd.get("restarts"), "loss": pgd.get("loss"),
            "alpha": pgd.get("alpha")}))
    if after.get("autoattack_acc") is not None:
        aa = after.get("autoattack") or {}
        results.append(robust("AutoAttack", after["autoattack_acc"], {
            "attack": "autoattack", "version": aa.get("version", after.get("autoattack_version", "standard")),
            "attacks": aa.get("attacks"), "package": aa.get("package")}))
    if after.get("robust_acc") is not None:
        results.append(robust("Worst-case", after["robust_acc"], {"attack": "every attack above, per example"}))
    return results


def _robust_summary(after: dict[str, Any]) -> str:
    parts = []
    if after.get("pgd_acc") is not None:
        parts.append(f"{pct(after['pgd_acc'])} accuracy under {_attack_text(after)}")
    if after.get("autoattack_acc") is not None:
        parts.append(f"{pct(after['autoattack_acc'])} under AutoAttack")
    if after.get("robust_acc") is not None:
        parts.append(f"{pct(after['robust_acc'])} against every attack run (per example)")
    return "; ".join(parts) or "no robust accuracy recorded"


def _results_table(base_model: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    pgd = after.get("pgd", {})
    columns = [("clean", "clean_acc"), ("FGSM", "fgsm_acc"),
               (f"PGD-{pgd.get('steps', '?')} x{pgd.get('restarts', 1)}", "pgd_acc"),
               ("AutoAttack", "autoattack_acc"), ("worst case, all attacks", "robust_acc")]
    columns = [(title, key) for title, key in columns
               if key == "clean_acc" or after.get(key) is not None or before.get(key) is not None]
    rows = ["| model | " + " | ".join(t for t, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in ((f"before (`{base_model}`)", before), ("after (this model)", after)):
        rows.append(f"| {label} | " + " | ".join(pct(row.get(k)) for _, k in columns) + " |")
    return "\n".join(rows)


def _eps_curve_table(evaluation: dict[str, Any] | None) -> list[str]:
    curve = (evaluation or {}).get("eps_curve") or {}
    points = curve.get("points") or []
    if not points:
        return []
    attack = curve.get("attack", {})
    head = f"Accuracy as eps grows ({attack.get('name', 'pgd').upper()}-{attack.get('steps', '?')}, " \
           f"{attack.get('loss', 'ce')} loss, one restart):"
    return [head, "", "| eps | " + " | ".join(eps_text(p["eps"]) if p["eps"] else "0" for p in points) + " |",
            "|---" * (len(points) + 1) + "|", "| accuracy | " + " | ".join(pct(p["acc"]) for p in points) + " |", ""]


def _method_args(method: dict[str, Any]) -> str:
    args = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in method.items() if k != "name"]
    return ", ".join(args) or "no arguments"


def _citations(robustness: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    keys = [METHOD_PAPERS.get(robustness["method"]["name"]), SCHEDULE_PAPERS.get(robustness["schedule"]["name"])]
    if metrics["after"].get("autoattack_acc") is not None:
        keys.append("croce2020reliable")
    seen: list[str] = []
    for key in keys:
        if key and key not in seen:
            seen.append(key)
    return [BIBTEX[k] for k in seen]


def _body(robustness: dict[str, Any], metrics: dict[str, Any], license: str | None, repo_id: str | None,
          recipe_yaml: str | None, files: Iterable[str], evaluation: dict[str, Any] | None) -> str:
    r, before, after, cost = robustness, metrics["before"], metrics["after"], metrics["cost"]
    tm, method, schedule = r["threat_model"], r["method"], r["schedule"]
    eps = eps_text(tm["eps"])
    n = after.get("n_examples")
    spec = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    aa = after.get("autoattack_acc") is not None
    files = set(files)
    hardware = cost.get("hardware", {})
    lines = [
        f"# {r.get('name', 'robustify model')}",
        "",
        f"An adversarially robust `{r['architecture']}` image classifier for `{r['dataset']}`, made with "
        f"[robustify](https://github.com/robustify/robustify) by adversarially fine-tuning `{r['base_model']}`. "
        "It loads with plain timm; robustify is not needed to use it.",
        "",
        "## What it is robust to, and what not",
        f"- **Robust to**: {tm['norm']} perturbations of radius **eps = {eps}** in [0,1] pixel space "
        f"(before normalization), at the model's input size {tuple(r['input_size'])}: "
        f"{_robust_summary(after)}, against {pct(after.get('clean_acc'))} on clean inputs "
        f"({n} `{r.get('eval_split', 'test')}` examples).",
        f"- **Not robust to**: larger eps than {eps}, other norms than {tm['norm']}, common corruptions, patches, "
        "physical or semantic changes, or inputs unlike the training data. Robust accuracy is an upper bound measured "
        "by the attacks above; stronger or adaptive attacks may find more errors"
        + ("." if aa else ", and AutoAttack, the standard evaluation, was not run for this card."),
    ]
    if metrics.get("stopped"):
        lines.append(f"- Training stopped early: {metrics['stopped']}.")
    lines += [
        "",
        "## Results",
        f"Accuracy on the first {n} examples of the `{r.get('eval_split', 'test')}` split of `{r['dataset']}`; "
        f"threat model {tm['norm']}, eps = {eps}.",
        "",
        _results_table(r["base_model"], before, after),
        "",
    ]
    checks = after.get("checks")
    if isinstance(checks, dict) and checks.get("verdict"):
        status = "passed" if checks.get("passed") else "FAILED"
        lines += [f"Gradient-masking checks ({status}): {checks['verdict']}", ""]
    lines += _eps_curve_table(evaluation)
    for name, caption in PLOTS.items():
        if name in files:
            lines += [f"![{caption}]({name})", "", f"*{caption}.*", ""]
    lines += [
        "## How it was made",
        f"- Method: `{method['name']}`, {METHOD_TEXT.get(method['name'], method['name'])}; {_method_args(method)}.",
        f"- BatchNorm mode while attacks were generated: `{method.get('bn_mode', 'n/a')}`.",
        f"- Learning-rate schedule: `{schedule['name']}`, peak lr {schedule['lr']:g}; {cost.get('epochs')} epochs "
        f"(selected epoch {metrics.get('selected_epoch', '?')}), batch size {r.get('batch_size')}, optimizer "
        f"{r.get('optimizer')}.",
        f"- Cost: {cost.get('wall_seconds', 0.0):.1f} s wall time on {hardware.get('device', '?')} "
        f"(x{cost.get('world_size', 1)} process(es)); {cost.get('optimizer_steps', '?')} optimizer steps; "
        f"{cost.get('example_passes', 0):,} forward/backward passes over examples "
        f"({cost.get('passes_per_batch', '?')} per minibatch).",
        "- Files: `recipe.yaml` (the fully resolved recipe), `metrics.json` (before/after results, per-epoch "
        "history, cost), `config.json` (timm config plus a `robustness` block).",
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
        lines += [f"License: `{license}`, inherited from the base model `{r['base_model']}`.", ""]
    else:
        lines += [f"License: the base model `{r['base_model']}` states none; check its terms before reuse.", ""]
    cites = _citations(r, metrics)
    if cites:
        lines += ["## Citation", "The methods that made this model:", "", "```bibtex", "\n\n".join(cites), "```", ""]
    return "\n".join(lines)


def render_card(robustness: dict[str, Any], metrics: dict[str, Any], license: str | None = None, *,
                repo_id: str | None = None, recipe_yaml: str | None = None,
                files: Iterable[str] = (), evaluation: dict[str, Any] | None = None) -> ModelCard:
    """Build the card from the ``robustness`` block of config.json and metrics.json.

    ``repo_id`` fills the usage snippet (``hf-hub:ORG/NAME``; a ``local-dir:`` placeholder without it),
    ``recipe_yaml`` is shown in the card, ``files`` (names in the folder or repo) decides which plots to embed, and
    ``evaluation`` (eval.json of ``robustify eval``) adds the accuracy-vs-eps table.
    """
    r = robustness
    data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=license,
        base_model=hub_base_model(r["base_model"]),
        datasets=[d] if (d := hub_dataset(r["dataset"])) else None,
        tags=["image-classification", "timm", "adversarial-robustness", "robustify",
              f"{r['threat_model']['norm'].lower()}-robust", r["method"]["name"]],
        model_name=r.get("name", "robustify-model"),
        eval_results=eval_results(r, metrics),
        robustbench=robustbench_block(r, metrics),
    )
    body = _body(r, metrics, license, repo_id, recipe_yaml, files, evaluation)
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + body)
