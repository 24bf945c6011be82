"""Unseen threat models (issue 29, points 2 and 3): a model trained for one norm is also attacked in the other two at
their standard radii, marked unseen; a finetune record and its card show them for the base model and the robust one
side by side, and "Not robust to" drops what was measured. Eps is printed by one rule (runrecord.eps_text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustify.config import build_config
from robustify.evaluate import unseen
from robustify.evaluate.report import EvalSettings, evaluate, load_examples
from robustify.publish.card import render_card
from robustify.publish.runrecord import from_finetune
from robustify.recipes import threat_text
from tests.helpers import quickstart_model

TINY_APGD = {"apgd_iter": 3}


def test_radii_follow_the_kind_of_data_set() -> None:
    assert unseen.unseen_threats("Linf", "cifar10", (3, 32, 32)) == [("L2", 0.5), ("L1", 12.0)]
    assert unseen.unseen_threats("L2", "imagenet-1k", (3, 224, 224)) == [("Linf", 4 / 255), ("L1", 255.0)]
    assert unseen.data_kind("uoft-cs/cifar100", (3, 224, 224)) == "cifar"  # RobustBench's name wins: upsampled CIFAR
    assert unseen.data_kind("imagefolder:/data/x", (3, 224, 224)) == "imagenet"  # unknown: by resolution
    assert unseen.data_kind("tiny-imagenet", (3, 64, 64)) == "cifar"
    assert unseen.unseen_threats("L1", "quickstart", (3, 32, 32)) == [("Linf", 8 / 255), ("L2", 0.5)]


def test_threat_text_prints_eps_through_eps_text() -> None:
    l1 = build_config("quickstart", ["threat.norm=L1", "threat.eps=12", "method.name=pgd"])
    assert threat_text(l1) == "L1 12 @32px"  # was "L1 3060/255 @32px"
    assert threat_text(build_config("quickstart", ["threat.eps=8/255"])) == "Linf 8/255 @32px"
    assert threat_text(build_config("quickstart", [])) == "Linf 0.1 @32px"


def test_eval_unseen_reports_the_other_norms_marked_unseen(monkeypatch) -> None:
    pytest.importorskip("pyautoattack")
    model = quickstart_model()
    ex = load_examples("quickstart", "test", 16, model, progress=False)
    s = EvalSettings(eps=0.1, attacks=("unseen",), preset="quick", aa_overrides=TINY_APGD)
    r = evaluate(model, ex, s, progress=False)
    assert [(u["norm"], u["eps"], u["seen"], u["threat"]) for u in r["unseen"]] == [
        ("L2", 0.5, False, "L2 eps=0.5"), ("L1", 12.0, False, "L1 eps=12")]
    assert all(u["label"] == "APGD-CE, 3 iterations" and u["acc"] <= r["clean_acc"] for u in r["unseen"])
    assert r["attack_work"][0] > 0 and "pgd_acc" not in r and "robust_acc" not in r  # unseen is not the worst case
    # without AutoAttack's package: robustify's PGD, labelled so
    from robustify.evaluate import autoattack

    monkeypatch.setattr(autoattack, "package_version", lambda: None)
    monkeypatch.setattr(unseen, "package_version", lambda: None)
    r2 = evaluate(model, ex, EvalSettings(eps=0.1, attacks=("unseen",), preset="quick", pgd_steps=1), progress=False)
    assert all(u["attack"] == "pgd" and "not installed" in u["label"] for u in r2["unseen"])


def _unseen(l2: float, l1: float) -> list[dict]:
    attack = unseen.UnseenAttack("apgd-ce", "APGD-CE, 10 iterations")
    return [unseen.result("L2", 0.5, "cifar", attack, round(l2 * 100), 100),
            unseen.result("L1", 12.0, "cifar", attack, round(l1 * 100), 100)]


def _record(with_unseen: bool):
    cfg = build_config("quickstart", ["eval.n_examples=100", "output_dir=/tmp/x"])
    pgd = {"norm": "Linf", "eps": 0.1, "steps": 10, "restarts": 1, "loss": "ce", "alpha": 0.025}
    after = {"clean_acc": 0.96, "pgd_acc": 0.6, "pgd": pgd, "n_examples": 100, "split": "test"}
    before = {"clean_acc": 0.99, "pgd_acc": 0.0, "pgd": pgd, "n_examples": 100, "split": "test"}
    if with_unseen:
        after["unseen"], before["unseen"] = _unseen(0.81, 0.42), _unseen(0.67, 0.17)
    return from_finetune(cfg, quickstart_model(), name="run-u", method={"name": "fgsm-rs"}, before=before,
                         after=after, history=[], cost={"epochs": 10}, selected_epoch=10, stopped=None)


def test_record_and_card_show_unseen_before_and_after() -> None:
    record = _record(True)
    metrics = record.metrics()
    rows = metrics["before_after"]["rows"]
    assert [(r["what"], r.get("threat"), r["before"], r["after"]) for r in rows] == [
        ("clean", None, 0.99, 0.96), ("seen", "Linf eps=0.1", 0.0, 0.6),
        ("unseen", "L2 eps=0.5", 0.67, 0.81), ("unseen", "L1 eps=12", 0.17, 0.42)]
    assert metrics["after"]["unseen"][0]["seen"] is False and metrics["before"]["unseen"][1]["acc"] == 0.17
    card = str(render_card(record))
    assert "## Before and after fine-tuning" in card
    assert "| unseen: L2 eps=0.5, APGD-CE, 10 iterations | 67.0% | 81.0% | +14.0 pts |" in card
    assert "**Unseen threat models**" in card and "L1 eps=12: 42.0% (base model 17.0%)" in card
    not_robust = next(line for line in card.splitlines() if line.startswith("- **Not robust to**"))
    assert "other norms" not in not_robust and "common corruptions" in not_robust  # measured: no longer listed
    # read back from the files it writes: the same record
    again = type(record).from_dicts(record.robustness(), json.loads(json.dumps(metrics)))
    assert again.metrics()["before_after"] == metrics["before_after"]


def test_a_record_without_unseen_is_unchanged() -> None:
    record = _record(False)
    assert "before_after" not in record.metrics()
    card = str(render_card(record))
    assert "Before and after fine-tuning" not in card and "other norms than Linf, common corruptions" in card


def test_finetune_with_eval_unseen_measures_before_and_after(tmp_path: Path) -> None:
    pytest.importorskip("pyautoattack")
    from robustify.train.trainer import finetune
    from tests.conftest import TINY

    # eval.pgd_steps=1 (TINY): the unseen APGD runs its minimum of 3 iterations (L1-APGD's schedule needs them)
    finetune(build_config("quickstart", TINY + ["eval.unseen=true", f"output_dir={tmp_path / 'run'}"]))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    unseen_rows = [r for r in metrics["before_after"]["rows"] if r["what"] == "unseen"]
    assert [r["threat"] for r in unseen_rows] == ["L2 eps=0.5", "L1 eps=12"]
    assert all(0 <= r["before"] <= 1 and 0 <= r["after"] <= 1 for r in unseen_rows)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "## Before and after fine-tuning" in card and "unseen: L1 eps=12, APGD-CE, 3 iterations" in card


def test_corruptions_from_a_later_eval_join_the_before_and_after() -> None:
    from robustify.publish.runrecord import Evaluation

    record = _record(True)
    names = ["gaussian_noise", "fog"]
    result = {"source": "on-the-fly", "corruptions": names, "severities": [1, 2, 3, 4, 5], "n_examples": 100,
              "clean_acc": 0.96, "mean_corruption_acc": 0.7, "mce": 85.0, "relative_mce": 90.0, "seconds": 3.0,
              "accuracy": {c: {str(s): 0.7 for s in range(1, 6)} for c in names},
              "baseline": {"model": "quickstart", "clean_acc": 0.99, "mean_corruption_acc": 0.6}}
    ev = Evaluation(source="robustify eval", preset="quick", norm="Linf", eps=0.1, split="test", n_examples=100,
                    input_size=[3, 32, 32], precision="fp32", clean_acc=0.96, data="quickstart", corruptions=result)
    record.add(ev)
    stored = record.metrics()
    assert "seconds" not in stored["evaluations"][-1]["corruptions"]  # the machine's, not the model's
    rows = [r for r in stored["before_after"]["rows"] if r["what"] == "corruptions"]
    assert [(r["before"], r["after"]) for r in rows] == [(0.6, 0.7), (100.0, 85.0), (100.0, 90.0)]
    assert all(r["evaluation"] == ev.label for r in rows)  # measured by a later evaluation, named
    card = str(render_card(record))
    assert "common corruptions (2 types, severities 1-5), mean accuracy (on-the-fly)" in card
    assert "| 60.0% | 70.0% | +10.0 pts |" in card and "| 100.0% | 85.0% | -15.0 pts |" in card
    not_robust = next(line for line in card.splitlines() if line.startswith("- **Not robust to**"))
    assert "common corruptions" not in not_robust and "other norms" not in not_robust
