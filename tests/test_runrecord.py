"""The run record: update rules (a weaker evaluation never replaces a stronger one), the card and RobustBench fields
rendered from it, public names, and the finetune run folder written through it. Synthetic records, except the
last tests, which read the session's quickstart run."""

from __future__ import annotations

import json
import os
import random
import re
import stat
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from robustify.config import build_config
from robustify.errors import UserError
from robustify.publish import public
from robustify.publish.card import render_card, robustbench_block
from robustify.publish.runrecord import SEAL_KEY, Evaluation, RunRecord, from_finetune
from robustify.publish.zoo import entry_from_record, parse_entry
from tests.helpers import quickstart_model

EPS = 8 / 255
PGD10 = {"norm": "Linf", "eps": EPS, "steps": 10, "restarts": 1, "loss": "ce", "alpha": 2.5 * EPS / 10}


def _finetune_record(n: int = 500) -> RunRecord:
    """A record as finetune writes it: PGD-10 on the first ``n`` test examples, before and after."""
    cfg = build_config("quickstart", [f"threat.eps={EPS}", f"eval.n_examples={n}", "output_dir=/home/alice/runs/x"])
    after = {"clean_acc": 0.98, "pgd_acc": 0.64, "pgd": PGD10, "n_examples": n, "split": "test"}
    before = {"clean_acc": 0.97, "pgd_acc": 0.0, "pgd": PGD10, "n_examples": n, "split": "test"}
    cost = {"wall_seconds": 30.0, "epochs": 10, "hardware": {"device": "cpu: x86_64", "mixed_precision": "no"}}
    return from_finetune(cfg, quickstart_model(), name="run-x", method={"name": "fgsm-rs", "alpha": 0.125 * EPS},
                         before=before, after=after, history=[], cost=cost, selected_epoch=9, stopped=None)


def _eval(n: int = 500, preset: str = "quick", aa: str | None = "quick", pgd: dict | None = None,
          pgd_acc: float = 0.62, aa_acc: float = 0.59, robust: float = 0.58, clean: float = 0.98) -> Evaluation:
    return Evaluation(source="robustify eval", preset=preset, norm="Linf", eps=EPS, split="test", n_examples=n,
                      input_size=[3, 32, 32], precision="fp32", clean_acc=clean, data="quickstart",
                      sha256_16="abcd" * 4, fgsm_acc=0.8, pgd_acc=pgd_acc,
                      pgd=pgd or (PGD10 | {"loss": "ce+cw"}), autoattack_acc=aa_acc if aa else None,
                      autoattack={"version": aa, "package": "pyautoattack 0.2",
                                  "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"]} if aa else None,
                      robust_acc=robust, evaluated_at="2026-12-01T00:00:00Z")


def _card(record: RunRecord, tmp_path: Path) -> ModelCard:
    render_card(record, "cc-by-4.0").save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")


# ----------------------------------------------------------------------------------------------- update rules
def test_a_smaller_evaluation_is_stored_beside_never_over(tmp_path: Path) -> None:
    record = _finetune_record(500)
    note = record.add(_eval(n=100, aa_acc=0.64, pgd_acc=0.66, clean=1.0))
    assert "still the stronger" in note
    m = record.metrics()
    assert m["after"]["n_examples"] == 500 and m["after"]["clean_acc"] == 0.98 and m["after"]["pgd_acc"] == 0.64
    assert [e["n_examples"] for e in m["evaluations"]] == [500, 100]
    assert m["before"]["n_examples"] == 500
    card = _card(record, tmp_path)
    assert "autoattack_acc" not in card.data.to_dict()["robustbench"]
    # each evaluation under its own header naming its examples: the 500-example "before" is never under a 100 header
    sections = card.text.split("\n### ")[1:]
    assert len(sections) == 2
    assert "n=500" in sections[0].splitlines()[0] and "(before)" in sections[0]
    assert "n=100" in sections[1].splitlines()[0] and "(before)" not in sections[1]
    assert "First 100 examples" in sections[1] and "| 100.0% |" in sections[1]


def test_quick_autoattack_never_passes_as_the_standard_one(tmp_path: Path) -> None:
    record = _finetune_record(500)
    assert "now the reported" in record.add(_eval(n=500))  # same examples, stronger attacks: it is reported
    after = record.metrics()["after"]
    assert "autoattack_acc" not in after and after["autoattack_quick_acc"] == 0.59
    assert "autoattack_acc" not in record.robustness()["results"]
    card = _card(record, tmp_path)
    assert "autoattack_acc" not in card.data.to_dict()["robustbench"]
    aa = [r for r in card.data.eval_results if r.metric_args.get("attack") == "autoattack"]
    assert len(aa) == 1 and "quick version, not comparable with RobustBench" in aa[0].metric_name
    assert aa[0].metric_args["version"] == "quick"
    for qualifier in re.findall(r"AutoAttack \(([^)]*)\)", card.text):  # never a bare "AutoAttack" number
        assert qualifier.startswith(("quick version", "RobustBench")), qualifier
    assert "| AutoAttack |" not in card.text and "AutoAttack (standard)" not in card.text


def test_standard_autoattack_is_robustbench_autoattack_acc(tmp_path: Path) -> None:
    record = _finetune_record(500)
    record.add(_eval(n=500, preset="standard", aa="standard", aa_acc=0.55, robust=0.54,
                     pgd=PGD10 | {"steps": 50, "restarts": 10, "loss": "ce+cw"}))
    block = _card(record, tmp_path).data.to_dict()["robustbench"]
    assert block["autoattack_acc"] == 55.0 and block["n_examples"] == 500
    assert record.metrics()["after"]["autoattack_acc"] == 0.55
    # a standard AutoAttack on fewer examples does not make it into the robustbench block
    small = _finetune_record(500)
    small.add(_eval(n=100, preset="standard", aa="standard"))
    assert "autoattack_acc" not in robustbench_block(small)


def test_a_later_pgd_evaluation_never_hides_autoattack() -> None:
    record = _finetune_record(500)
    record.add(_eval(n=500, aa="standard", preset="standard", aa_acc=0.55, robust=0.54))
    strongest = record.strongest()
    weaker = _eval(n=500, aa=None, preset="quick", pgd_acc=0.60, robust=0.60)
    assert "still the stronger" in record.add(weaker)
    after = record.metrics()["after"]
    assert after["autoattack_acc"] == 0.55 and after["robust_acc"] == 0.54 <= after["autoattack_acc"]
    assert record.strongest() is strongest
    # a PGD run that finds more than AutoAttack did on the same examples lowers the worst case, and says so
    record.add(_eval(n=500, aa=None, preset="standard", pgd=PGD10 | {"steps": 50, "restarts": 10},
                     pgd_acc=0.50, robust=0.50))
    assert record.strongest() is strongest  # AutoAttack still outranks PGD
    worst = record.metrics()["after"]["worst_case"]
    assert worst["acc"] == 0.50 and "PGD-50 x10" in worst["by"]
    assert "Lowest robust accuracy any evaluation found on the reported examples: **50.0%**" in \
        str(render_card(record))


def test_a_rerun_with_the_same_settings_replaces_its_earlier_copy() -> None:
    record = _finetune_record(500)
    record.add(_eval(n=500, aa_acc=0.59))
    assert "replaced" in record.add(_eval(n=500, aa_acc=0.58))
    assert len(record.evaluations) == 2 and record.metrics()["after"]["autoattack_quick_acc"] == 0.58


def test_another_threat_model_or_split_is_refused() -> None:
    record = _finetune_record(500)
    other = _eval()
    other.eps = 16 / 255
    with pytest.raises(UserError, match="eps="):
        record.add(other)
    other = _eval()
    other.split = "train"
    with pytest.raises(UserError, match="split 'train'"):
        record.add(other)


# ------------------------------------------------------------------------------------------------- the card
def test_card_numbers_equal_metrics_strongest_evaluation(tmp_path: Path) -> None:
    record = _finetune_record(500)
    record.add(_eval(n=100))
    record.add(_eval(n=500, aa="standard", preset="standard", aa_acc=0.55, robust=0.54))
    metrics = json.loads(json.dumps(record.metrics()))
    after = metrics["after"]
    card = _card(record, tmp_path)
    values = {r.metric_args.get("attack", "clean"): r.metric_value for r in card.data.eval_results}
    assert values == {"clean": after["clean_acc"], "fgsm": after["fgsm_acc"], "pgd": after["pgd_acc"],
                      "autoattack": after["autoattack_acc"], "every attack above, per example": after["robust_acc"]}
    for r in card.data.eval_results:  # every number names its attack, budget, examples, precision and resolution
        assert r.metric_args["n_examples"] == 500 and r.metric_args["precision"] == "fp32"
        assert r.metric_args["input_size"] == [3, 32, 32] and f"n={after['n_examples']}" in r.metric_name
    pgd = next(r for r in card.data.eval_results if r.metric_args.get("attack") == "pgd")
    assert pgd.metric_args["steps"] == after["pgd"]["steps"] and pgd.metric_args["restarts"] == after["pgd"]["restarts"]
    rb = card.data.to_dict()["robustbench"]
    assert rb["clean_acc"] == round(100 * after["clean_acc"], 2) and rb["pgd_acc"] == round(100 * after["pgd_acc"], 2)
    assert rb["resolution"] == "32x32" and rb["precision"] == "fp32" and rb["additional_data"] is True
    for header in re.findall(r"^### .*$", card.text, flags=re.M):
        assert re.search(r"n=\d+, fp32, 32x32", header), header
    assert "BatchNorm mode while the training attacks were generated: `train`" in card.text
    assert "Exported weights: epoch 9 of 10, the epoch with the best robust accuracy" in card.text
    assert card.data.to_dict().get("base_model") is None  # the bundled quickstart has no Hub id
    # the zoo entry renders from the same record and validates
    entry = parse_entry(entry_from_record(record, "x", "org/x", "quickstart"))
    assert entry.autoattack_acc == 55.0 and entry.resolution == "32x32" and entry.additional_data


def test_from_scratch_runs_are_not_additional_data() -> None:
    cfg = build_config("quickstart", ["model.pretrained=false", "model.name=test_resnet"])
    after = {"clean_acc": 0.5, "pgd_acc": 0.2, "pgd": PGD10, "n_examples": 50, "split": "test"}
    record = from_finetune(cfg, quickstart_model(), name="scratch", method={"name": "pgd"}, before=after,
                           after=after, history=[], cost={}, selected_epoch=1, stopped=None)
    assert robustbench_block(record)["additional_data"] is False
    assert record.training.base_model == "test_resnet" and record.training.base_model_hub_id is None
    card = render_card(record)
    assert "base_model" not in card.data.to_dict() and "from random initialisation" in card.text


# --------------------------------------------------------------------------------------------- public names
def test_public_names() -> None:
    assert public.model_name("hf-hub:org/net@v2") == ("org/net", "org/net")
    assert public.model_name("resnet18.a1_in1k") == ("resnet18.a1_in1k", "timm/resnet18.a1_in1k")
    assert public.model_name("quickstart") == ("quickstart", None)
    assert public.model_name("local-dir:/home/alice/m", {"architecture": "resnet18"}) == ("resnet18", None)
    assert public.model_name("local-dir:/home/alice/m", {"architecture": "resnet18",
                                                         "hf_hub_id": "timm/resnet18.a1_in1k"})[1] == \
        "timm/resnet18.a1_in1k"
    assert public.model_name("resnet18", pretrained=False) == ("resnet18", None)
    assert public.model_name("resnet18.a1_in1k", checkpoint="/home/alice/w.safetensors") == ("resnet18", None)
    assert public.dataset_name("cifar10") == ("cifar10", "uoft-cs/cifar10")
    assert public.dataset_name("org/pets") == ("org/pets", "org/pets")
    assert public.dataset_name("npz:/home/alice/digits.npz") == ("local npz data set (digits.npz)", None)
    assert public.dataset_name("imagefolder:/home/alice/pets/") == ("local imagefolder data set (pets)", None)
    recipe = public.recipe("model:\n  name: local-dir:/home/alice/base\n  checkpoint: /home/alice/w.safetensors\n"
                           "data:\n  name: npz:/home/alice/d.npz\noutput_dir: /home/alice/runs/x\n", "x")
    assert "alice" not in recipe and "output_dir: runs/x" in recipe and "npz:d.npz" in recipe
    assert "local-dir:base" in recipe


def test_local_traces_finds_paths_user_and_token() -> None:
    assert public.local_traces(b'{"model": "/home/alice/runs/x"}')
    assert public.local_traces("see C:\\Users\\alice\\x")
    assert public.local_traces("token hf_abcdef123456", token="hf_abcdef123456") == ["the Hugging Face token"]
    assert public.local_traces("a local copy", extra=["/srv/private-stuff"]) == []
    assert public.local_traces("under /srv/private-stuff/x", extra=["/srv/private-stuff"])
    assert not public.local_traces("https://github.com/robustify/robustify and timm/resnet18.a1_in1k, runs/x, "
                                   "local-dir:PATH/TO/THIS/FOLDER, eps 8/255")
    assert public.redact("warning at /tmp/x/y.py:3: slow") == "warning at <local path>:3: slow"
    # compressed plot bytes never trip the check by chance, but a path in a PNG text chunk does
    noise = random.Random(0).randbytes(4_000_000)
    assert public.local_traces(b"\x89PNG" + noise) == []
    assert public.local_traces(b"\x89PNG" + noise[:1000] + b"tEXtSource\x00/home/alice/plot.py" + noise[:1000])


def test_an_older_run_folder_is_read_and_made_public() -> None:
    robustness = {"name": "old", "threat_model": {"norm": "Linf", "eps": 0.1}, "method": {"name": "fgsm-rs"},
                  "schedule": {"name": "cyclic", "lr": 0.1}, "base_model": "local-dir:/home/alice/base",
                  "dataset": "npz:/home/alice/d.npz", "eval_split": "test", "architecture": "test_resnet",
                  "input_size": [3, 32, 32], "epochs": 2, "batch_size": 8, "optimizer": "sgd"}
    metrics = {"before": {"clean_acc": 0.9, "pgd_acc": 0.0, "n_examples": 500},
               "after": {"clean_acc": 1.0, "pgd_acc": 0.66, "n_examples": 100, "autoattack_acc": 0.64,
                         "autoattack_version": "quick", "evaluated_by": "robustify eval", "split": "test",
                         "pgd": {"steps": 10, "restarts": 1}}, "history": [], "cost": {}}
    record = RunRecord.from_dicts(robustness, metrics)
    text = json.dumps(record.metrics()) + json.dumps(record.robustness()) + str(render_card(record))
    assert "alice" not in text and "/home" not in text
    assert record.training.base_model == "test_resnet" and record.strongest().aa_version == "quick"
    assert "autoattack_acc" not in record.metrics()["after"]


# -------------------------------------------------------------------------------------- the finetune run folder
def test_finetune_writes_the_record(quickstart_run: Path) -> None:
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    config = json.loads((quickstart_run / "config.json").read_text())
    record = RunRecord.read(quickstart_run)
    assert record.metrics()["after"] == metrics["after"]
    # the files carry the seal written as they were saved; the record read back is the same record without it
    written = {k: v for k, v in config["robustness"].items() if k != SEAL_KEY}
    assert record.robustness() == written and config["robustness"][SEAL_KEY] == metrics[SEAL_KEY]
    ev = metrics["evaluations"][0]
    assert ev["source"] == "finetune" and ev["precision"] == "fp32" and ev["input_size"] == [3, 32, 32]
    assert ev["before"]["pgd_acc"] == metrics["before"]["pgd_acc"]
    r = config["robustness"]
    assert r["pretrained"] is True and r["resolution"] == "32x32" and r["bn_mode"] == "train"
    assert r["base_model"] == "quickstart" and r["dataset"] == "quickstart"
    front = yaml.safe_load((quickstart_run / "README.md").read_text().split("---")[1])
    assert front["robustbench"]["additional_data"] is True and front["robustbench"]["resolution"] == "32x32"
    for name in ("model.safetensors", "config.json", "metrics.json", "README.md", "recipe.yaml"):
        mode = stat.S_IMODE(os.stat(quickstart_run / name).st_mode)
        assert mode == 0o644, (name, oct(mode))
