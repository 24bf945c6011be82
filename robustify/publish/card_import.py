"""The model card of an imported third-party checkpoint (``robustify import`` / ``robustify pull ZOO_NAME``).

It states provenance first (source repo or RobustBench entry, file, commit, sha256, authors, paper, leaderboard
entry, license, converter and the original project's release the converter was checked against), then the threat
model the weights were trained for and how, then the published numbers, each labelled with who reported it and on
what protocol: "reported by ..., not measured here".
When ``robustify eval`` has measured the folder (its ``eval.json``), both are shown side by side. It must not
present a reported number as a measurement.

Must not: present a published number as measured here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LABELS = {"clean_acc": "clean accuracy", "autoattack_acc": "AutoAttack (standard) robust accuracy",
          "pgd_acc": "PGD robust accuracy", "corruptions_acc": "common-corruptions (ImageNet-C) accuracy"}


def render_import_card(prov: Any, arch: str, num_classes: int, cfg: Mapping[str, Any],
                       measured: Mapping[str, Any] | None = None):
    from huggingface_hub import ModelCardData

    from .card import compose

    p = prov
    name = p.zoo_name or p.filename
    data = ModelCardData(library_name="timm", pipeline_tag="image-classification", license=p.license,
                         tags=["image-classification", "timm", "adversarial-robustness", "robustify", "imported"]
                         + ([f"{p.norm.lower()}-robust"] if p.norm else []))
    where = (f"[{p.repo_id}](https://huggingface.co/{p.repo_id}), file `{p.filename}`, commit `{p.revision}`"
             if p.repo_id else p.source if p.source.startswith("robustbench:") else f"local file `{p.filename}`")
    checked = getattr(p, "converter_checked_against", None)
    lines = [
        f"# {name} (imported)", "",
        f"`{arch}` weights ({num_classes} classes) converted by `robustify import` from a third-party checkpoint; "
        "they load with plain timm (`model.safetensors` + `config.json`, normalization in `pretrained_cfg`).", "",
        "## Provenance",
        f"- Source: {where}; sha256 of the file `{p.sha256}`.",
    ]
    if getattr(p, "authors", None):
        lines.append(f"- Authors: {p.authors}.")
    if getattr(p, "paper", None):
        lines.append(f"- Paper: {p.paper}.")
    if getattr(p, "leaderboard", None):
        lines.append(f"- Leaderboard entry: {p.leaderboard}.")
    lines += [
        f"- License: {p.license or 'not stated by the source: check it before use'}.",
        f"- Converter: `{p.converter}`"
        + (f" (checked against {checked}: robustify's tests build this format with that package's own code, "
           "random weights, save it as the package saves it and compare logits of the package's model with the "
           "converted timm folder)." if checked else
           " (not checked against an original project's code: a generic layout, tested on files built here)."),
    ]
    lines += [f"- Dropped from the source file: {d}." for d in p.dropped]
    lines += [f"- Note: {n}." for n in p.notes]
    lines += ["", "## Threat model it was trained for"]
    if p.norm == "corruptions":
        lines.append("- Common corruptions (RobustBench's corruptions benchmark), not an Lp threat model"
                     + (f", on {p.dataset}" if p.dataset else "") + ".")
    elif p.norm:
        lines.append(f"- {p.norm}, eps = {p.eps} in [0,1] pixel units" + (f", on {p.dataset}" if p.dataset else "")
                     + ".")
    else:
        lines.append("- Not stated (import with --norm/--eps, or from a zoo entry).")
    if p.training:
        lines.append(f"- Training: {p.training}.")
    lines += ["", "## Published numbers (reported by their source, not measured here)"]
    if p.reported:
        lines += ["| metric | value | reported by | protocol |", "| --- | ---: | --- | --- |"]
        lines += [f"| {LABELS.get(r.metric, r.metric)} | {r.value:.2f}% | {r.by} | {r.protocol or '-'} |"
                  for r in p.reported]
    else:
        lines.append("None recorded.")
    lines += ["", "## Measured here"]
    if measured:
        tm = measured.get("threat_model") or {}
        lines.append(f"`robustify eval` on the first {measured.get('n_examples')} examples "
                     f"({tm.get('norm')}, eps={tm.get('eps')}):")
        for key in ("clean_acc", "pgd_acc", "autoattack_acc"):
            if isinstance(measured.get(key), (int, float)):
                lines.append(f"- {LABELS.get(key, key)}: {100 * measured[key]:.2f}%")
    else:
        lines.append("Nothing yet: `robustify eval FOLDER --data DATA --norm NORM --eps EPS --output FOLDER/eval.json` "
                     "measures it; `robustify import --refresh-card FOLDER` then shows both.")
    lines += ["", "## Use", "```python", "import timm",
              'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()',
              f"# inputs: [0,1] pixels at {tuple(cfg.get('input_size', ()))}, normalized with mean "
              f"{tuple(round(v, 4) for v in cfg.get('mean', ()))}, std "
              f"{tuple(round(v, 4) for v in cfg.get('std', ()))}",
              "```", ""]
    return compose(data, "\n".join(lines))
