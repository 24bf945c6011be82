"""``robustify eval --attack`` runs exactly the suites it names (issue 29, point 6): ``clean`` is clean accuracy and
nothing else (no input gradient, no curve), the curve and the masking checks run when named, and the first line
printed is the plan: what will run, the passes it counts and roughly how long."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustify.cli import main
from robustify.evaluate.report import EvalSettings, evaluate, load_examples, plan_work
from tests.helpers import quickstart_model

EPS = 0.1


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return quickstart_model()


@pytest.fixture(scope="module")
def examples(model):
    return load_examples("quickstart", "test", 24, model, progress=False)


def test_attack_clean_runs_clean_only_no_gradient_no_curve(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval.json"
    code = main(["eval", "quickstart", "--data", "quickstart", "--eps", "0.1", "--attack", "clean", "--n-examples",
                 "256", "--output", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("robustify eval will run: clean on 256 examples"), lines[0]
    assert "at most 256 forward and no input-gradient passes" in lines[0] and "up to about" in lines[0]
    report = json.loads(out.read_text())
    assert report["attacks"] == ["clean"] and report["attack_work"] == [0] and report["forward_work"] == [256]
    assert not {"fgsm_acc", "pgd_acc", "autoattack_acc", "robust_acc", "eps_curve", "checks", "unseen"} & set(report)
    assert not (tmp_path / "eval_eps_curve.png").exists()  # no curve, so no plot
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_counted_work_matches_the_plan_for_one_pgd_run(model, examples) -> None:
    s = EvalSettings(eps=EPS, attacks=("pgd",), preset="quick", pgd_steps=3, pgd_restarts=1, pgd_losses=("ce",))
    report = evaluate(model, examples, s, progress=False)
    # the first PGD run attacks every example, one input gradient per step: exactly what the plan counts
    assert report["attacks"] == ["clean", "pgd"] and report["attack_work"] == [24 * 3]
    assert sum(w[2] for w in plan_work(s, examples, 10)) == 24 * 3
    assert "fgsm_acc" not in report and "eps_curve" not in report and "checks" not in report


def test_curve_and_checks_run_when_named(model, examples) -> None:
    s = EvalSettings(eps=EPS, attacks=("clean", "curve"), preset="quick", pgd_steps=1, pgd_restarts=1)
    report = evaluate(model, examples, s, progress=False)
    assert [p["eps"] for p in report["eps_curve"]["points"]] == pytest.approx([0, 0.025, 0.05, 0.1, 0.2])
    assert "checks" not in report and "pgd_acc" not in report
    assert report["attack_work"][0] <= sum(w[2] for w in plan_work(s, examples, 10))
    s = EvalSettings(eps=EPS, attacks=("checks",), preset="quick", pgd_steps=1, pgd_restarts=1)
    items = {i["name"]: i["status"] for i in evaluate(model, examples, s, progress=False)["checks"]["items"]}
    assert items["attack_order"] == "skipped" and items["eps_curve"] == "skipped"  # nothing to compare against
    assert items["gradients"] != "skipped" and items["large_eps"] != "skipped"


def test_no_curve_drops_the_suite_and_a_bad_suite_is_one_line(capsys) -> None:
    s = EvalSettings(eps=EPS, attacks=("clean", "pgd", "curve", "checks"), curve=False).validate()
    assert s.attacks == ("clean", "pgd", "checks") and not s.curve and s.checks
    assert main(["eval", "quickstart", "--data", "quickstart", "--eps", "0.1", "--attack", "clean,curves"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--attack 'curves' is not accepted" in err[0] and "unseen" in err[0]
