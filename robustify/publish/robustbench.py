"""RobustBench's format and leaderboard: a run's ``model_info`` JSON, and where a run would stand on the board.

``model_info`` (RobustBench/robustbench, ``model_info/<dataset>/<threat_model>/<Name>.json``) has exactly the fields
of :data:`FIELDS`, with those types: accuracies and ``eps`` are *strings* (``"53.12"``, ``"8/255"``), percentages
with two decimals. RobustBench fills ``autoattack_acc`` only from the standard AutoAttack on its protocol
(:data:`PROTOCOLS`: the first 10,000 CIFAR / 5,000 ImageNet test images at the data set's native resolution, at the
leaderboard's eps), so :func:`model_info` writes one only from such an evaluation and otherwise raises
:class:`NotComparable` with the reason in one line (PGD only, quick AutoAttack, another resolution, ...).

The leaderboard is the same files, fetched through GitHub's contents API at the repository's current commit
(``ROBUSTIFY_ROBUSTBENCH_API`` points elsewhere, e.g. at the tests' local server) and cached with that commit under
``ROBUSTIFY_CACHE_DIR`` (default ``~/.cache/robustify``)/robustbench; offline, the cache is used, or nothing (one
line). Hand-written on ``urllib``: RobustBench's own package fetches model weights, not the board, and pulls in a
large dependency tree for this. This module must not evaluate models.

Must not: write model_info from anything but the standard AutoAttack on RobustBench's protocol.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import sections
from ..errors import UserError
from .runrecord import Evaluation, RunRecord, eps_text, resolution_text

# RobustBench's model_info fields, in its files' order, with their JSON types (footnote may be null)
FIELDS: dict[str, tuple[type, ...]] = {
    "link": (str,), "name": (str,), "authors": (str,), "additional_data": (bool,), "number_forward_passes": (int,),
    "dataset": (str,), "venue": (str,), "architecture": (str,), "eps": (str,), "clean_acc": (str,),
    "reported": (str,), "autoattack_acc": (str,), "footnote": (str, type(None)),
}


@dataclass(frozen=True)
class Protocol:
    """How RobustBench evaluates one data set: the first ``n`` images of ``split`` at ``resolution``, at ``eps``."""

    n: int
    splits: tuple[str, ...]
    resolution: tuple[int, int]
    eps: dict[str, float]  # threat model -> the leaderboard's eps


PROTOCOLS = {
    "cifar10": Protocol(10_000, ("test",), (32, 32), {"Linf": 8 / 255, "L2": 0.5}),
    "cifar100": Protocol(10_000, ("test",), (32, 32), {"Linf": 8 / 255}),
    "imagenet": Protocol(5_000, ("validation", "val"), (224, 224), {"Linf": 4 / 255}),
}
DATASETS = {"cifar10": "cifar10", "uoft-cs/cifar10": "cifar10", "cifar-10": "cifar10",
            "cifar100": "cifar100", "uoft-cs/cifar100": "cifar100", "cifar-100": "cifar100",
            "imagenet": "imagenet", "imagenet-1k": "imagenet", "ilsvrc/imagenet-1k": "imagenet"}
DEFAULT_API = "https://api.github.com/repos/RobustBench/robustbench"
BRANCH = "master"


class NotComparable(UserError):
    """The run's evaluation is not RobustBench's: no model_info, no rank (the message says why)."""


def robustbench_dataset(record: RunRecord) -> str | None:
    t = record.training
    for name in (t.dataset, t.dataset_hub_id):
        if name and name.lower() in DATASETS:
            return DATASETS[name.lower()]
    return None


def _problems(ev: Evaluation, proto: Protocol) -> list[str]:
    """Why ``ev`` is not RobustBench's evaluation (empty: it is)."""
    out = []
    if ev.autoattack_acc is None:
        out.append("PGD only (no AutoAttack)")
    elif ev.aa_version != "standard":
        out.append(f"{ev.aa_version} AutoAttack (reduced budget; RobustBench runs the standard version)")
    if tuple(ev.input_size[-2:]) != proto.resolution:
        out.append(f"other resolution: attacked at {resolution_text(ev.input_size)}, RobustBench at "
                   f"{proto.resolution[0]}x{proto.resolution[1]}")
    if ev.n_examples != proto.n:
        out.append(f"{ev.n_examples} examples, RobustBench uses the first {proto.n:,}")
    if ev.split not in proto.splits:
        out.append(f"split {ev.split!r}, RobustBench uses {proto.splits[0]!r}")
    return out


def protocol_check(record: RunRecord) -> tuple[Evaluation | None, str | None]:
    """(the evaluation on RobustBench's protocol, None) or (None, why there is none)."""
    t = record.training
    ds = robustbench_dataset(record)
    if ds is None:
        return None, f"data set {t.dataset!r} has no RobustBench leaderboard (cifar10, cifar100, imagenet)"
    proto = PROTOCOLS[ds]
    board_eps = proto.eps.get(t.norm)
    if board_eps is None:
        return None, f"RobustBench has no {ds} {t.norm} leaderboard ({', '.join(proto.eps)} only)"
    if not math.isclose(t.eps, board_eps, rel_tol=1e-6):
        return None, f"eps {eps_text(t.eps)}: RobustBench's {ds} {t.norm} leaderboard is at eps {eps_text(board_eps)}"
    if not record.evaluations:
        return None, "the run has no evaluation"
    for ev in record.evaluations:
        if not _problems(ev, proto):
            return ev, None
    return None, "; ".join(_problems(record.strongest(), proto))


# --------------------------------------------------------------------------------------------- additional_data
# RobustBench's ``additional_data`` (read from its own model_info files, shared/robustbench): true when training saw
# *real* images beyond the target's training split: an ImageNet backbone fine-tuned on CIFAR (Debenedetti2022Light's
# CIFAR-10 XCiTs), ImageNet-21k pretraining for an ImageNet model (Bai2024MixedNUTS), an external unlabelled pool
# (Carmon2019Unlabeled). False for a model trained on its target's training split only, which includes an ImageNet-1k
# backbone adversarially fine-tuned on ImageNet-1k (Singh2023Revisiting starts from clean ImageNet-1k weights: false)
# and images *generated* by a model trained on that split, listed as false with a footnote ("It uses additional 1M
# synthetic images in training.": Wang2023Better, Bartoldson2024, Cui2023Decoupled).
# timm tags that name other data than ImageNet-1k in a pretrained tag (``augreg_in21k_ft_in1k``, ``ns_jft_in1k``,
# ``clip_laion2b_ft_in1k``, ``fb_swsl_ig1b_ft_in1k``): a ``_ft_`` (fine-tuned from something first) or one of these
OTHER_DATA_TAG = re.compile(r"(^|_)(ft|in(?!1k)\d+k|jft\w*|ig\d\w*|laion\w*|openai|clip\w*|yfcc\w*|datacomp\w*|"
                            r"dfn\w*|lvd\w*|cc\d+m|mim\w*|dino\w*|sw\w*|ssl\w*|merged\w*)(_|$)")


def imagenet1k_only(record: RunRecord) -> bool:
    """Whether the run's starting weights are timm weights trained on ImageNet-1k alone: a ``timm/`` Hub id or timm
    name whose pretrained tag ends in ``in1k`` and names no other data (:data:`OTHER_DATA_TAG`). Anything else (a
    model from another Hub organisation, local weights, the quickstart backbone, an untagged name) is not known to
    be, so it is counted as other data: RobustBench's flag is an admission, and claiming none needs evidence."""
    t = record.training
    for spec in (t.base_model_hub_id, t.base_model):
        if not spec:
            continue
        spec = spec.removeprefix("hf-hub:").split("@", 1)[0]
        if "/" in spec:
            org, _, spec = spec.partition("/")
            if org != "timm":
                continue
        _, dot, tag = spec.partition(".")
        if dot and tag.endswith("in1k"):
            return OTHER_DATA_TAG.search(tag) is None
    return False


def _count_text(n: int) -> str:
    """1000000 -> "1M", 20000000 -> "20M", 500000 -> "500K", as RobustBench's footnotes count images."""
    for unit, size in (("M", 1_000_000), ("K", 1_000)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return str(n)


def extra_sets(record: RunRecord) -> list[Mapping[str, Any]]:
    """The training sets beyond the target's training split the run record names: each registered option's
    (``added_data``, train/options/, asked through robustify/sections.py), in registry order. A record without
    options names none: the registries (which import torch) stay unloaded for a zoo listing."""
    if not record.training.options:
        return []
    return [s for unit in sections.options() for s in unit.added_data(record)]


def additional_data(record: RunRecord,
                    extra: Sequence[Mapping[str, Any]] | None = None) -> tuple[bool, str | None]:
    """RobustBench's ``additional_data`` for the run, and the footnote it calls for (None: none), by RobustBench's
    own rule (the comment above :data:`OTHER_DATA_TAG`).

    ``extra``: the labelled or unlabelled sets mixed into training besides the target's training split, each a
    mapping with ``name``, ``size`` (images, or None) and ``generated`` (true: made by a generative model trained
    on the target's training split only; false: real external images); None: those the record names
    (:func:`extra_sets`; real images the record names count either way). Starting weights count as other data unless
    the run is from scratch or is an ImageNet run from ImageNet-1k-only timm weights (:func:`imagenet1k_only`).
    """
    t = record.training
    recorded = extra_sets(record)
    extra = recorded if extra is None else extra
    # real images the record names count whatever ``extra`` says (an unlabeled pool, pseudo-labelled, has no size)
    real = any(not bool(e.get("generated")) for e in [*extra, *recorded])
    if t.pretrained and not (robustbench_dataset(record) == "imagenet" and imagenet1k_only(record)):
        real = True
    generated = [e for e in extra if bool(e.get("generated"))]
    if not generated:
        return real, None
    sizes = [e.get("size") for e in generated]
    count = f"{_count_text(sum(sizes))} " if all(isinstance(n, int) and n > 0 for n in sizes) else ""
    return real, f"It uses additional {count}synthetic images in training."


def model_info(record: RunRecord, name: str | None = None, link: str = "", authors: str = "", venue: str = "",
               footnote: str | None = None, extra: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The run's RobustBench model_info (fields and types of :data:`FIELDS`), or :class:`NotComparable`.
    ``extra``: the run's extra training sets, as :func:`additional_data` takes them (None: the record's)."""
    ev, why = protocol_check(record)
    if ev is None:
        raise NotComparable(f"no RobustBench model_info for run {record.training.name!r}: not comparable: {why}")
    t = record.training
    aa = f"{100 * ev.autoattack_acc:.2f}"
    flag, synthetic = additional_data(record, extra)
    ours = " ".join(part for part in (synthetic, (
        f"Evaluated with robustify eval (standard AutoAttack, first {ev.n_examples} {ev.split} images, "
        f"{ev.precision}); fine-tuned from pretrained weights.") if t.pretrained else None) if part)
    info = {
        "link": link, "name": name or f"{t.method.get('name')} adversarial fine-tuning of {t.base_model}",
        "authors": authors, "additional_data": flag, "number_forward_passes": 1,
        "dataset": robustbench_dataset(record), "venue": venue, "architecture": t.architecture,
        "eps": eps_text(t.eps), "clean_acc": f"{100 * ev.clean_acc:.2f}", "reported": aa, "autoattack_acc": aa,
        "footnote": footnote or ours or None,
    }
    check_fields(info)
    return info


def check_fields(info: dict[str, Any], where: str = "model_info",
                 fields: dict[str, tuple[type, ...]] | None = None) -> None:
    """Exactly :data:`FIELDS` (or ``fields``) with their types (a robustify bug otherwise, so a plain message)."""
    fields = FIELDS if fields is None else fields
    if list(info) != list(fields):
        raise ValueError(f"{where}: fields {list(info)} are not RobustBench's {list(fields)}")
    for k, types in fields.items():
        if not isinstance(info[k], types) or (int in types and isinstance(info[k], bool)):
            raise ValueError(f"{where}: field {k!r}={info[k]!r} is not of RobustBench's type {types}")


# ------------------------------------------------------------------------------------------------ leaderboard
def cache_dir() -> Path:
    root = os.environ.get("ROBUSTIFY_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "robustify"
    return Path(root).expanduser() / "robustbench"


def _get_json(url: str, timeout: float) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.github+json",
                                               "User-Agent": "robustify"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) URLs we build
        return json.loads(resp.read().decode("utf-8"))


def fetch(dataset: str, threat: str, timeout: float = 10.0) -> dict[str, Any]:
    """The leaderboard files at the repository's current commit, written to the cache; raises OSError/ValueError
    when the server cannot be reached or answers nonsense."""
    from ..fileio import atomic_write_json

    api = os.environ.get("ROBUSTIFY_ROBUSTBENCH_API", DEFAULT_API).rstrip("/")
    commit = _get_json(f"{api}/commits/{BRANCH}", timeout)["sha"]
    listing = _get_json(f"{api}/contents/model_info/{dataset}/{threat}?ref={commit}", timeout)
    entries = {}
    for item in listing:
        if item.get("type") == "file" and str(item.get("name", "")).endswith(".json"):
            entries[item["name"][:-5]] = _get_json(item["download_url"], timeout)
    board = {"dataset": dataset, "threat_model": threat, "commit": commit, "source": api,
             "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "entries": entries}
    path = cache_dir() / dataset / f"{threat}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, board)
    return board


def cached(dataset: str, threat: str) -> dict[str, Any] | None:
    try:
        board = json.loads((cache_dir() / dataset / f"{threat}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return board if isinstance(board, dict) and isinstance(board.get("entries"), dict) else None


def leaderboard(dataset: str, threat: str, offline: bool = False) -> tuple[dict[str, Any], str]:
    """(board, where it came from): fetched when online, else the cache; neither is one line (exit 2)."""
    why = "--offline"
    if not offline:
        try:
            return fetch(dataset, threat), "fetched"
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = f"RobustBench is unreachable ({' '.join(str(e).split())[:120] or type(e).__name__})"
    board = cached(dataset, threat)
    if board is None:
        raise UserError(f"no RobustBench {dataset} {threat} leaderboard: {why} and none is cached; run 'robustify "
                        "zoo compare' once online")
    return board, f"cached ({why})"


def _arch_key(name: str) -> str:
    """timm's ``wide_resnet50_2`` and RobustBench's ``WideResNet-50-2`` both become ``wideresnet502``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _entry(key: str, info: dict[str, Any]) -> dict[str, Any]:
    return {"id": key, "name": info.get("name"), "architecture": info.get("architecture"),
            "clean_acc": float(info["clean_acc"]), "autoattack_acc": float(info["autoattack_acc"]),
            "additional_data": bool(info.get("additional_data")), "venue": info.get("venue")}


def same_eps(spelled: str, eps: float) -> bool:
    """Whether a model_info ``eps`` string names the leaderboard's ``eps``: exactly (``"8/255"``, ``"0.5"``,
    ``"12"``), or as ``eps`` rounded to the decimals written, with at least two significant digits.

    RobustBench writes six CIFAR-10 Linf entries' 8/255 as ``"0.031"``; an exact comparison drops them and every
    rank below them is wrong. A relative tolerance is not used instead: ``"0.031"`` is 1.2% off 8/255 and a
    two-digit 4/255 (``"0.016"``) 2.0% off, so any tolerance that takes both sits at the edge of what it must take.
    "Is this eps, rounded as written" is exact about what it accepts (``"0.031"``, ``"0.0314"`` for 8/255;
    ``"0.016"``, ``"0.0157"`` for 4/255), and the two-digit floor keeps ``"0.03"`` (an eps papers do train at)
    from passing as 8/255; one-digit spellings (L2 ``"0.5"``, L1 ``"12"``) must be exact.
    """
    from decimal import ROUND_HALF_UP, Decimal

    from ..config import parse_number

    if math.isclose(parse_number(spelled, "eps"), eps, rel_tol=1e-6):
        return True
    text = spelled.strip()
    if not re.fullmatch(r"\d*\.\d+", text):
        return False  # a fraction or an integer that is not eps exactly
    written = Decimal(text)
    if len(written.as_tuple().digits) < 2:
        return False
    return Decimal(eps).quantize(Decimal(1).scaleb(written.as_tuple().exponent), ROUND_HALF_UP) == written


def _ranked(board: dict[str, Any], eps: float) -> tuple[list[dict[str, Any]], int]:
    """Entries at ``eps`` (as RobustBench spells it, :func:`same_eps`) with an AutoAttack number, best first; and
    how many 'unreliable' ones were left out."""
    out, unreliable = [], 0
    for key, info in board["entries"].items():
        if not isinstance(info, dict) or not info.get("autoattack_acc") or info.get("eps") is None:
            continue
        try:
            if not same_eps(str(info["eps"]), eps):
                continue
            entry = _entry(key, info)
        except (UserError, ValueError):
            continue
        if info.get("unreliable"):
            unreliable += 1
            continue
        out.append(entry)
    return sorted(out, key=lambda e: (-e["autoattack_acc"], -e["clean_acc"])), unreliable


def compare(record: RunRecord, offline: bool = False, board: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where ``record`` stands among RobustBench's entries for its data set, threat model and eps."""
    t = record.training
    ds = robustbench_dataset(record)
    ev, why = protocol_check(record)
    result: dict[str, Any] = {"run": t.name, "dataset": ds or t.dataset, "threat_model": t.norm,
                              "eps": eps_text(t.eps), "architecture": t.architecture,
                              "additional_data": additional_data(record)[0], "comparable": ev is not None,
                              "reason": why}
    if ds is None or t.norm not in PROTOCOLS[ds].eps or why and why.startswith("eps "):
        return result  # no leaderboard to show
    source = "given"
    if board is None:
        board, source = leaderboard(ds, t.norm, offline)
    entries, unreliable = _ranked(board, PROTOCOLS[ds].eps[t.norm])
    same = [e for e in entries if _arch_key(e["architecture"] or "") == _arch_key(t.architecture)]
    result |= {"leaderboard": {"commit": board.get("commit"), "fetched_at": board.get("fetched_at"),
                               "source": source, "entries": len(entries), "unreliable_left_out": unreliable},
               "best_overall": entries[0] if entries else None,
               "best_same_architecture": same[0] if same else None,
               "best_without_additional_data": next((e for e in entries if not e["additional_data"]), None)}
    if ev is not None:
        aa, clean = 100 * ev.autoattack_acc, 100 * ev.clean_acc
        result |= {"autoattack_acc": round(aa, 2), "clean_acc": round(clean, 2),
                   "rank": 1 + sum(e["autoattack_acc"] > round(aa, 2) for e in entries), "of": len(entries) + 1}
    return result


def _who(e: dict[str, Any] | None) -> str:
    if e is None:
        return "none"
    return (f"{e['id']} ({e['architecture']}): {e['autoattack_acc']:.2f}% AutoAttack, {e['clean_acc']:.2f}% clean"
            + (", extra data" if e["additional_data"] else ""))


def compare_text(r: dict[str, Any]) -> str:
    lines = [f"{r['run']}: {r['dataset']} {r['threat_model']} eps={r['eps']}, {r['architecture']}"]
    if r["comparable"]:
        lines.append(f"rank {r['rank']} of {r['of']} by AutoAttack ({r['autoattack_acc']:.2f}%, clean "
                     f"{r['clean_acc']:.2f}%)" + (" with additional data" if r["additional_data"] else ""))
    else:
        lines.append(f"not comparable: {r['reason']}")
    if "leaderboard" in r:
        b = r["leaderboard"]
        lines += [f"best overall: {_who(r['best_overall'])}",
                  f"best {r['architecture']}: {_who(r['best_same_architecture'])}",
                  f"best without additional data: {_who(r['best_without_additional_data'])}",
                  f"leaderboard: RobustBench at commit {str(b['commit'])[:8]}, {b['entries']} entries"
                  + (f" ({b['unreliable_left_out']} marked unreliable left out)" if b["unreliable_left_out"] else "")
                  + f", {b['source']} (fetched {b['fetched_at']})"]
    return "\n".join(lines)


def card_lines(record: RunRecord) -> list[str]:
    """The card's short leaderboard section, from the cached board only (rendering a card never goes online)."""
    try:
        ds = robustbench_dataset(record)
        if ds is None or record.training.norm not in PROTOCOLS[ds].eps:
            return []
        board = cached(ds, record.training.norm)
        r = compare(record, board=board) if board is not None else None
    except (UserError, ValueError, KeyError, TypeError):
        return []
    lines = ["## On the RobustBench leaderboard", ""]
    if r is None:
        ev, why = protocol_check(record)
        lines.append(f"Not placed: {'not comparable: ' + why if why else 'the leaderboard is not cached here'}; "
                     "`robustify zoo compare RUN_DIR` fetches it.")
        return lines + [""]
    lines.append(("- " + compare_text(r).split("\n", 1)[1].replace("\n", "\n- ")).replace("leaderboard: Robust",
                                                                                          "Robust"))
    return lines + [""]


# ------------------------------------------------------------------------------------------------ corruptions
# RobustBench's corruptions model_info: the same fields with ``corruptions_acc`` for ``autoattack_acc``
# (eps: the training eps of an adversarially trained model, as RobustBench's own files write it, else null)
CORRUPTIONS_FIELDS: dict[str, tuple[type, ...]] = {
    (k.replace("autoattack", "corruptions")): ((str, type(None)) if k == "eps" else v) for k, v in FIELDS.items()}
# the published set and the number of images per severity RobustBench's corruptions boards use (its ImageNet board
# also ranks 3D common corruptions and mCE against AlexNet, which robustify does not measure)
CORRUPTION_PROTOCOLS = {"cifar10": ("cifar10-c", 10_000), "cifar100": ("cifar100-c", 10_000)}
N_CORRUPTIONS = 15


def corruptions_check(record: RunRecord, result: dict[str, Any] | None) -> str | None:
    """None when ``result`` (the run folder's corruptions.json) is RobustBench's corruptions protocol; else why not."""
    ds = robustbench_dataset(record)
    if ds is None:
        return f"data set {record.training.dataset!r} has no RobustBench corruptions leaderboard (cifar10, cifar100)"
    if ds not in CORRUPTION_PROTOCOLS:
        return (f"RobustBench's {ds} corruptions board also ranks 3D common corruptions and mCE against AlexNet, "
                "which robustify does not measure")
    if result is None:
        return "the run has no corruption evaluation (robustify eval RUN --attack corruptions)"
    name, n = CORRUPTION_PROTOCOLS[ds]
    if result.get("source") != "published":
        return (f"on-the-fly corruptions (robustify's own images); RobustBench uses the published {name} images "
                "(--corruption-source published)")
    if result.get("published_set") != name:
        return f"evaluated on {result.get('published_set')}, RobustBench's {ds} board on {name}"
    if len(result.get("corruptions", [])) != N_CORRUPTIONS or list(result.get("severities", [])) != [1, 2, 3, 4, 5]:
        return (f"{len(result.get('corruptions', []))} corruptions at severities "
                f"{','.join(map(str, result.get('severities', [])))}; RobustBench averages all 15 at severities 1-5")
    if result.get("n_examples") != n:
        return f"{result.get('n_examples')} images per severity, RobustBench uses all {n:,}"
    if result.get("weights_sha256") != record.training.weights_sha256:
        return "the corruption evaluation measured other weights than the run folder's (evaluate it again)"
    return None


def corruptions_model_info(record: RunRecord, result: dict[str, Any] | None, name: str | None = None,
                           link: str = "", authors: str = "", venue: str = "",
                           footnote: str | None = None) -> dict[str, Any]:
    """The run's RobustBench corruptions model_info (:data:`CORRUPTIONS_FIELDS`), or :class:`NotComparable`."""
    why = corruptions_check(record, result)
    if why is not None:
        raise NotComparable(f"no RobustBench corruptions model_info for run {record.training.name!r}: not "
                            f"comparable: {why}")
    assert result is not None
    t = record.training
    acc = f"{100 * result['mean_corruption_acc']:.2f}"
    info = {
        "link": link, "name": name or f"{t.method.get('name')} adversarial fine-tuning of {t.base_model}",
        "authors": authors, "additional_data": bool(t.pretrained), "number_forward_passes": 1,
        "dataset": robustbench_dataset(record), "venue": venue, "architecture": t.architecture, "eps": eps_text(t.eps),
        "clean_acc": f"{100 * result['clean_acc']:.2f}", "reported": acc, "corruptions_acc": acc,
        "footnote": footnote or (f"Evaluated with robustify eval --attack corruptions on the published "
                                 f"{result['published_set']} images; fine-tuned from pretrained weights."
                                 if t.pretrained else None),
    }
    check_fields(info, fields=CORRUPTIONS_FIELDS)
    return info


def compare_corruptions(record: RunRecord, result: dict[str, Any] | None, offline: bool = False,
                        board: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where ``record``'s corruption accuracy stands on RobustBench's corruptions board for its data set."""
    t = record.training
    ds = robustbench_dataset(record)
    why = corruptions_check(record, result)
    out: dict[str, Any] = {"run": t.name, "dataset": ds or t.dataset, "threat_model": "corruptions",
                           "architecture": t.architecture, "additional_data": bool(t.pretrained),
                           "comparable": why is None, "reason": why}
    if ds is None or ds not in CORRUPTION_PROTOCOLS:
        return out
    source = "given"
    if board is None:
        board, source = leaderboard(ds, "corruptions", offline)
    entries = []
    for key, info in board["entries"].items():
        try:
            entries.append({"id": key, "name": info.get("name"), "architecture": info.get("architecture"),
                            "clean_acc": float(info["clean_acc"]), "corruptions_acc": float(info["corruptions_acc"]),
                            "additional_data": bool(info.get("additional_data"))})
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    entries.sort(key=lambda e: (-e["corruptions_acc"], -e["clean_acc"]))
    out |= {"leaderboard": {"commit": board.get("commit"), "fetched_at": board.get("fetched_at"), "source": source,
                            "entries": len(entries)}, "best_overall": entries[0] if entries else None}
    if result is not None:
        acc = round(100 * result["mean_corruption_acc"], 2)
        out |= {"corruptions_acc": acc, "clean_acc": round(100 * result["clean_acc"], 2),
                "source": result.get("source"),
                "would_rank": 1 + sum(e["corruptions_acc"] > acc for e in entries), "of": len(entries) + 1}
    return out


def compare_corruptions_text(r: dict[str, Any]) -> str:
    lines = [f"{r['run']}: {r['dataset']} common corruptions, {r['architecture']}"]
    if "corruptions_acc" in r:
        lines.append(f"{'rank' if r['comparable'] else 'would rank'} {r['would_rank']} of {r['of']} by corruption "
                     f"accuracy ({r['corruptions_acc']:.2f}%, clean {r['clean_acc']:.2f}%)")
    if not r["comparable"]:
        lines.append(f"not comparable: {r['reason']}")
    if "leaderboard" in r:
        b, best = r["leaderboard"], r["best_overall"]
        if best:
            lines.append(f"best overall: {best['id']} ({best['architecture']}): {best['corruptions_acc']:.2f}% "
                         f"corruptions, {best['clean_acc']:.2f}% clean")
        lines.append(f"leaderboard: RobustBench corruptions at commit {str(b['commit'])[:8]}, {b['entries']} entries, "
                     f"{b['source']} (fetched {b['fetched_at']})")
    return "\n".join(lines)
