"""Robust evaluation: attack ordering, the eps curve, the JSON report and plot, the gradient-masking checks (a masked
model is flagged, the robust quickstart model is not), PGD strength and reproducibility, agreement with an
independent PGD, and ``robustify eval`` on a run folder. Small budgets throughout: offline, CPU, seconds each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import robustify
from robustify import attacks
from robustify.cli import main
from robustify.evaluate.autoattack import sharded_autoattack
from robustify.evaluate.kernel import sharded_pgd_accuracy
from robustify.evaluate.report import EvalSettings, Examples, evaluate, load_examples, pgd_robust
from robustify.report import plot_eps_curve
from tests.helpers import quickstart_batch, quickstart_model

EPS = 0.1  # the quickstart threat model (Linf)
TINY_AA = {"apgd_iter": 10, "target_classes": 2, "fab_iter": 10, "square_queries": 100}


def _settings(**kwargs) -> EvalSettings:
    base = dict(eps=EPS, preset="quick", pgd_steps=10, pgd_restarts=2, aa_version="quick", aa_overrides=TINY_AA)
    return EvalSettings(**(base | kwargs))


@pytest.fixture(scope="module")
def robust_model(quickstart_run: Path) -> torch.nn.Module:
    return robustify.load(str(quickstart_run))


@pytest.fixture(scope="module")
def examples(robust_model) -> Examples:
    return load_examples("quickstart", "test", 120, robust_model, progress=False)


@pytest.fixture(scope="module")
def report(robust_model, examples) -> dict:
    return evaluate(robust_model, examples, _settings(), progress=False)


class QuantizedInput(torch.nn.Module):
    """A deliberately gradient-masked model: it rounds its input to 8 grey levels, a step whose gradient is zero."""

    def __init__(self, model: torch.nn.Module, levels: int = 8):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * (self.levels - 1)) / (self.levels - 1))


def test_attacks_are_ordered_and_accuracy_falls_with_eps(report):
    assert report["autoattack_acc"] <= report["pgd_acc"] <= report["fgsm_acc"] <= report["clean_acc"]
    assert report["robust_acc"] <= report["autoattack_acc"]
    assert report["clean_acc"] > 0.9 and report["pgd_acc"] > 0.3  # the quickstart model is robust
    accs = [p["acc"] for p in report["eps_curve"]["points"]]
    eps = [p["eps"] for p in report["eps_curve"]["points"]]
    assert eps == sorted(eps) and eps[0] == 0 and EPS in eps
    assert all(b <= a for a, b in zip(accs, accs[1:], strict=False)), accs
    per_attack = report["autoattack"]["per_attack"]
    cascade = [per_attack[k] for k in ("clean", "apgd-ce", "apgd-t", "fab-t", "square")]
    assert all(b <= a for a, b in zip(cascade, cascade[1:], strict=False))  # each attack runs on what is left


def test_robust_model_passes_the_checks(report):
    checks = report["checks"]
    assert checks["passed"], [(i["name"], i["verdict"]) for i in checks["items"] if i["status"] == "fail"]
    statuses = {i["name"]: i["status"] for i in checks["items"]}
    assert set(statuses) == {"attack_order", "eps_curve", "large_eps", "iterations", "black_box", "gradients"}
    assert "skipped" not in statuses.values()
    assert all(i["verdict"] for i in checks["items"])


def test_report_schema_is_json(report, tmp_path):
    data = json.loads(json.dumps(report))  # plain JSON: no tensors
    for key in ("clean_acc", "fgsm_acc", "pgd_acc", "autoattack_acc", "robust_acc"):
        assert isinstance(data[key], float) and 0 <= data[key] <= 1
    assert data["n_examples"] == 120
    assert data["subset"] == {"data": "quickstart", "split": "test", "first_n": 120, "input_size": [3, 32, 32],
                              "sha256_16": data["subset"]["sha256_16"]}
    assert data["threat_model"] == {"norm": "Linf", "eps": EPS}
    assert {"norm", "eps", "steps", "restarts", "loss", "alpha"} <= set(data["pgd"])
    assert data["pgd"]["steps"] == 10 and data["pgd"]["restarts"] == 2 and data["pgd"]["loss"] == "ce+cw"
    aa = data["autoattack"]
    assert aa["version"] == "custom" and aa["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["settings"]["square_queries"] == 100 and aa["package"].startswith("pyautoattack")
    assert all(set(p) == {"eps", "acc"} for p in data["eps_curve"]["points"])
    assert {"passed", "verdict", "items"} <= set(data["checks"])
    assert all({"name", "title", "status", "verdict", "details"} <= set(i) for i in data["checks"]["items"])


def test_eps_curve_plot_is_a_png(report, tmp_path):
    from PIL import Image

    path = tmp_path / "curve.png"
    plot_eps_curve(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 200


def test_gradient_masked_model_is_flagged(robust_model):
    masked = QuantizedInput(quickstart_model()).eval()  # a non-robust model that hides its gradients
    ex = load_examples("quickstart", "test", 64, robust_model, progress=False)
    res = evaluate(masked, ex, _settings(pgd_restarts=1, pgd_losses=("ce",)), progress=False)
    status = {i["name"]: i["status"] for i in res["checks"]["items"]}
    assert not res["checks"]["passed"]
    assert status["gradients"] == "fail"  # exactly zero input gradients
    assert status["black_box"] == "fail"  # Square breaks what the white-box attacks could not
    assert res["pgd_acc"] > res["autoattack_acc"] + 0.2  # PGD alone would have called it robust
    assert "gradient masking" in res["checks"]["verdict"]


def test_pgd_is_at_least_as_strong_as_fgsm_and_reproducible():
    model = quickstart_model()
    x, y = quickstart_batch(128)
    eps = 0.02
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        fgsm_ok = clean & (model(x + attacks.fgsm(model, x, y, eps, random_start=False)).argmax(1) == y)

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return pgd_robust(model, x, y, eps, "Linf", steps=10, restarts=2, losses=("ce", "cw"), generator=gen)

    first, again = run(0), run(0)
    assert torch.equal(first, again)  # same seed, same examples counted robust
    assert int((~first).sum()) >= int((~fgsm_ok).sum()) > int((~clean).sum())
    assert not (first & ~clean).any()  # a misclassified example is never robust


def test_evaluation_is_reproducible_with_a_seed(robust_model, examples):
    small = Examples(examples.x[:32], examples.y[:32], "quickstart", "test", examples.num_classes)
    budget = {"apgd_iter": 5, "fab_iter": 5, "square_queries": 30}
    settings = dict(pgd_steps=5, pgd_restarts=2, curve=False, aa_overrides=TINY_AA | budget)

    def run(seed: int) -> dict:
        res = evaluate(robust_model, small, _settings(seed=seed, **settings), progress=False)
        res["autoattack"].pop("seconds")
        return {k: v for k, v in res.items() if k != "seconds"}  # everything but the timings

    assert run(3) == run(3)


def _independent_pgd_acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                         alpha: float, seed: int) -> float:
    """A textbook PGD written independently of robustify.attacks (x_adv form, .backward(), last iterate only)."""
    torch.manual_seed(seed)
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        F.cross_entropy(model(x_adv), y).backward()
        with torch.no_grad():
            x_adv = x_adv + alpha * x_adv.grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        return ((model(x_adv).argmax(1) == y) & (model(x).argmax(1) == y)).float().mean().item()


def test_pgd_agrees_with_an_independent_implementation(robust_model, examples):
    x, y = examples.x.float() / 255, examples.y
    steps, alpha = 10, 2.5 * EPS / 10
    ours = pgd_robust(robust_model, x, y, EPS, "Linf", steps, 1, ("ce",), alpha,
                      torch.Generator().manual_seed(0)).float().mean().item()
    theirs = _independent_pgd_acc(robust_model, x, y, EPS, steps, alpha, seed=0)
    assert abs(ours - theirs) <= 0.02, (ours, theirs)
    assert ours <= theirs + 1 / len(y)  # counting every iterate can only find more


def test_sharded_pgd_accuracy_keeps_the_trainer_contract(robust_model):
    x, y = quickstart_batch(32)
    res = sharded_pgd_accuracy(robust_model, x, y, EPS, steps=3, seed=0, batch_size=16, progress=False)
    assert {"clean_acc", "pgd_acc", "pgd", "n_examples", "precision"} <= set(res) and res["n_examples"] == 32
    assert res["pgd_acc"] <= res["clean_acc"] and res["precision"] == "fp32"
    assert res == sharded_pgd_accuracy(robust_model, x, y, EPS, steps=3, seed=0, batch_size=16, progress=False)
    cw = sharded_pgd_accuracy(robust_model, x, y, EPS, steps=3, restarts=2, loss="ce+cw", progress=False)
    assert cw["pgd"]["loss"] == "ce+cw" and cw["pgd"]["restarts"] == 2


def test_autoattack_accuracy_for_finetune(robust_model, monkeypatch):
    from robustify.evaluate import autoattack
    monkeypatch.setitem(autoattack.VERSIONS, "standard", autoattack.AutoAttackSettings(**TINY_AA))
    x, y = quickstart_batch(32)
    res = sharded_autoattack(robust_model, x, y, EPS, "Linf", batch_size=16, progress=False)
    assert 0 <= res["autoattack_acc"] <= res["autoattack"]["per_attack"]["clean"] <= 1
    assert res["autoattack_version"] == "standard" and res["autoattack"]["n_examples"] == 32
    assert all(p.grad is None for p in robust_model.parameters())  # FAB's .backward() left no weight gradients


def test_eval_command_updates_the_run_folder(quickstart_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(quickstart_run, run)
    out = tmp_path / "eval.json"
    code = main(["eval", str(run), "--attack", "clean,fgsm,pgd,curve,checks", "--preset", "quick", "--pgd-steps", "5",
                 "--n-examples", "100", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "PGD" in printed and "gradient-masking checks" in printed
    report = json.loads(out.read_text())
    assert report["n_examples"] == 100 and "autoattack_acc" not in report
    assert (tmp_path / "eval_eps_curve.png").is_file() and (run / "eps_curve.png").is_file()
    kept = json.loads((run / "eval.json").read_text())
    assert kept["pgd_acc"] == report["pgd_acc"] and kept["model"] == "this run folder (run)"  # no local path
    assert "run folder: the evaluation was stored beside" in printed  # 100 examples never replace 500
    metrics = json.loads((run / "metrics.json").read_text())
    original = json.loads((quickstart_run / "metrics.json").read_text())
    assert metrics["after"] == original["after"] and metrics["after"]["n_examples"] == 500
    stored = metrics["evaluations"][-1]
    assert stored["pgd_acc"] == report["pgd_acc"] and stored["clean_acc"] == report["clean_acc"]
    assert stored["pgd"]["steps"] == 5 and stored["n_examples"] == 100 and stored["preset"] == "quick"
    assert "autoattack_acc" not in stored
    results = json.loads((run / "config.json").read_text())["robustness"]["results"]
    assert results["n_examples"] == 500 and results["pgd_acc"] == original["after"]["pgd_acc"]
    card = (run / "README.md").read_text()
    assert "eps_curve.png" in card and "robustify eval --preset quick: PGD-5 x1 (ce+cw), n=100" in card
    assert robustify.load(str(run)) is not None  # timm still loads the folder

    # another threat model is measured and reported, but never written into the run's card
    before = (run / "metrics.json").read_text()
    assert main(["eval", str(run), "--attack", "clean,pgd", "--preset", "quick", "--pgd-steps", "2",
                 "--n-examples", "20", "--eps", "0.05", "--no-curve", "--no-checks"]) == 0
    assert "run folder not updated: evaluated at Linf eps=0.05" in capsys.readouterr().out
    assert (run / "metrics.json").read_text() == before


def test_eval_errors_are_one_line(quickstart_run, monkeypatch, capsys):
    from robustify.evaluate import autoattack

    monkeypatch.setattr(autoattack, "package_version", lambda: None)
    assert main(["eval", str(quickstart_run), "--attack", "clean,pgd,autoattack"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("robustify: error: --attack autoattack needs the optional package pyautoattack: "
                           'pip install -e ".[autoattack]" (in your robustify clone)')
    assert main(["eval", "quickstart", "--eps", "0.1"]) == 2  # not a run folder: --data is needed
    assert "--data is needed" in capsys.readouterr().err
    assert main(["eval", str(quickstart_run), "--attack", "clean,bim"]) == 2
    assert "--attack 'bim' is not accepted" in capsys.readouterr().err
    assert main(["eval", str(quickstart_run), "--eps", "2"]) == 2
    assert "--eps 2 is not accepted" in capsys.readouterr().err
