"""The model card (README.md of a run folder), rendered with ``huggingface_hub.ModelCard``.

The YAML front matter carries ``library_name: timm``, the base model, the data set, tags and ``model-index``
results, so the Hub shows the robust accuracy and plain timm users find the model; the body says what the model is
robust to (and what not), how it was made, and how to load it.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .report import pct

BODY = """
# {title}

An adversarially robust `{architecture}` image classifier made with
[robustify](https://github.com/robustify/robustify) by adversarially fine-tuning `{base_model}` on `{dataset}`.

## Threat model
- {norm} perturbations of radius **eps = {eps_text}** in [0,1] pixel space, at the model's input size {input_size}.
- Normalization (mean {mean}, std {std}) is part of the threat model's model: attacks perturb pixels *before* it.
- Robust only to this threat model: not to larger eps, other norms, corruptions, patches or distribution shift.

## Results
Measured on the first {n_examples} examples of the `{eval_split}` split.

| model | clean | {attack} |{aa_header}
|---|---|---|{aa_sep}
| before (`{base_model}`) | {before_clean} | {before_pgd} |{before_aa}
| after (this model) | {after_clean} | {after_pgd} |{after_aa}

## How it was made
- Method: `{method}` ({method_args}); BatchNorm mode during attacks: `{bn_mode}`.
- Schedule: `{schedule}`, peak lr {lr}, {epochs} epochs, batch size {batch_size}, optimizer {optim}.
- Cost: {wall:.1f} s wall time on {hardware}, {passes} forward/backward passes over examples.
- The full recipe is in `recipe.yaml`; the per-epoch history in `metrics.json`.

## Usage (plain timm, no robustify needed)
```python
import timm, torch
model = timm.create_model("hf-hub:ORG/NAME", pretrained=True).eval()   # or "local-dir:PATH/TO/THIS/FOLDER"
cfg = model.pretrained_cfg
x = torch.rand(1, *cfg["input_size"])                                    # pixels in [0, 1]
mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1); std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
logits = model((x - mean) / std)                                         # normalize inside your attack's model
```
With robustify: `robustify.load("hf-hub:ORG/NAME")` returns the model with normalization inside ([0,1] inputs).

## Citation
Methods: Wong, Rice, Kolter, *Fast is better than free* (ICLR 2020); Shafahi et al., *Adversarial training for
free!* (NeurIPS 2019); Jeddi, Shafiee, Wong, *A simple fine-tuning is all you need* (2020); Madry et al., *Towards
deep learning models resistant to adversarial attacks* (ICLR 2018).
"""


def eps_text(eps: float) -> str:
    """8/255 for eps values that are whole multiples of 1/255, else the decimal."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:g}"


def _results(after: dict[str, Any], dataset: str, split: str) -> list[EvalResult]:
    pgd = after.get("pgd", {})
    common = dict(task_type="image-classification", dataset_type=dataset, dataset_name=dataset, dataset_split=split)
    results = [EvalResult(metric_type="accuracy", metric_name="clean accuracy", metric_value=after["clean_acc"],
                          **common)]
    threat = f"{pgd.get('norm', 'Linf')}, eps={eps_text(pgd.get('eps', 0))}"
    results.append(EvalResult(
        metric_type="robust_accuracy", metric_name=f"PGD accuracy ({threat})", metric_value=after["pgd_acc"],
        metric_config=threat, metric_args={k: pgd.get(k) for k in ("steps", "restarts", "loss")}
        | {"attack": "pgd", "n_examples": after.get("n_examples")}, **common))
    if after.get("autoattack_acc") is not None:
        results.append(EvalResult(
            metric_type="robust_accuracy", metric_name=f"AutoAttack accuracy ({threat})",
            metric_value=after["autoattack_acc"], metric_config=threat,
            metric_args={"attack": "autoattack", "version": "standard", "n_examples": after.get("n_examples")},
            **common))
    return results


def render_card(robustness: dict[str, Any], metrics: dict[str, Any], license: str | None = None) -> ModelCard:
    """Build the card from the ``robustness`` block of config.json and metrics.json."""
    before, after, cost = metrics["before"], metrics["after"], metrics["cost"]
    r = robustness
    threat_model = r["threat_model"]
    data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=license or "apache-2.0",
        base_model=r["base_model"] if not r["base_model"].startswith(("local-dir:", "/", ".")) else None,
        datasets=[r["dataset"]] if "/" in r["dataset"] or r["dataset"] in ("cifar10", "cifar100", "mnist") else None,
        tags=["image-classification", "timm", "adversarial-robustness", "robustify",
              f"{threat_model['norm'].lower()}-robust"],
        model_name=r.get("name", "robustify-model"),
        eval_results=_results(after, r["dataset"], r.get("eval_split", "test")),
    )
    has_aa = after.get("autoattack_acc") is not None or before.get("autoattack_acc") is not None
    pgd = after.get("pgd", {})
    body = BODY.format(
        title=r.get("name", "robustify model"), architecture=r["architecture"], base_model=r["base_model"],
        dataset=r["dataset"], norm=threat_model["norm"], eps_text=eps_text(threat_model["eps"]),
        input_size=tuple(r["input_size"]), mean=tuple(round(m, 4) for m in r["mean"]),
        std=tuple(round(s, 4) for s in r["std"]), n_examples=after.get("n_examples"),
        eval_split=r.get("eval_split", "test"),
        attack=f"PGD-{pgd.get('steps')} x{pgd.get('restarts')} restarts",
        aa_header=" AutoAttack |" if has_aa else "", aa_sep="---|" if has_aa else "",
        before_clean=pct(before.get("clean_acc")), before_pgd=pct(before.get("pgd_acc")),
        before_aa=f" {pct(before.get('autoattack_acc'))} |" if has_aa else "",
        after_clean=pct(after.get("clean_acc")), after_pgd=pct(after.get("pgd_acc")),
        after_aa=f" {pct(after.get('autoattack_acc'))} |" if has_aa else "",
        method=r["method"]["name"], method_args=", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in r["method"].items() if k != "name"),
        bn_mode=r["method"].get("bn_mode", "train"), schedule=r["schedule"]["name"], lr=r["schedule"]["lr"],
        epochs=cost.get("epochs"), batch_size=r.get("batch_size"), optim=r.get("optimizer"),
        wall=cost.get("wall_seconds", 0.0), hardware=cost.get("hardware", {}).get("device", "?"),
        passes=f"{cost.get('example_passes', 0):,}",
    )
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body)
