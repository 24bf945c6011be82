"""The L1 threat model (Croce & Hein 2021): the exact projection onto the L1 ball intersected with the [0,1] box
(checked against an independent Dykstra solution and as a property over random inputs), the sparse box-aware step,
PGD-L1 getting stronger with eps, the config's L1 rules, and PGD-L1 training plus an L1 evaluation (AutoAttack L1
through pyautoattack, the eps curve, the masking checks) on the quickstart model. Tiny sizes: seconds each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustify import attacks
from robustify.config import build_config
from robustify.errors import ConfigError
from robustify.evaluate.kernel import pgd_correct
from tests.helpers import quickstart_batch, quickstart_model


# ------------------------------------------------------------------------------- an independent reference
def _l1_ball(v: torch.Tensor, eps: float) -> torch.Tensor:
    """Projection of one float64 vector onto the L1 ball by sorting (Duchi et al. 2008), written independently."""
    if v.abs().sum() <= eps:
        return v.clone()
    u = v.abs().sort(descending=True).values
    css = u.cumsum(0)
    k = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    rho = int((u - (css - eps) / k > 0).nonzero().max())
    theta = (css[rho] - eps) / (rho + 1)
    return v.sign() * (v.abs() - theta).clamp_min(0)


def _dykstra(x: torch.Tensor, v: torch.Tensor, eps: float, iters: int = 20000) -> torch.Tensor:
    """Dykstra's alternating projections onto the box [-x, 1-x] and the L1 ball: converges to the Euclidean
    projection onto their intersection (a generic method sharing nothing with robustify's threshold search)."""
    lo, hi = -x, 1 - x
    z, p, q = v.clone(), torch.zeros_like(v), torch.zeros_like(v)
    for _ in range(iters):
        y = torch.minimum(torch.maximum(z + p, lo), hi)
        p = z + p - y
        z_new = _l1_ball(y + q, eps)
        q = y + q - z_new
        if torch.allclose(z_new, z, atol=1e-14, rtol=0) and torch.allclose(y, z_new, atol=1e-14, rtol=0):
            return z_new  # stalled and feasible for both sets
        z = z_new
    return z


@pytest.mark.parametrize("seed", range(12))
def test_projection_equals_an_independent_solution_on_small_vectors(seed: int):
    g = torch.Generator().manual_seed(seed)
    n = 3 + seed % 6
    x = torch.rand(n, generator=g, dtype=torch.float64)
    if seed % 3 == 0:
        x[0], x[1] = 0.0, 1.0  # pixels on the box's bounds
    v = torch.randn(n, generator=g, dtype=torch.float64) * (0.3 + seed % 4)
    eps = float(torch.rand((), generator=g, dtype=torch.float64) * n * 0.4 + 0.05)
    ours = attacks.project_l1_box(x[None], v[None], eps)[0]
    ref = _dykstra(x, v, eps)
    assert torch.allclose(ours, ref, atol=1e-7), (ours, ref)
    # and it is not merely "the ball, then the box": that point is feasible but farther in general
    naive = torch.minimum(torch.maximum(_l1_ball(v, eps), -x), 1 - x)
    assert (ours - v).norm() <= (naive - v).norm() + 1e-12


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 64), batch=st.integers(1, 4), scale=st.floats(1e-3, 50.0), eps=st.floats(1e-3, 80.0),
       seed=st.integers(0, 2**31 - 1), saturate=st.booleans())
def test_every_projected_point_is_in_the_ball_and_the_box(n, batch, scale, eps, seed, saturate):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n, generator=g)
    if saturate:  # many pixels exactly 0 or 1, as in digits and MNIST-like images
        x = (x > 0.5).float()
    v = torch.randn(batch, n, generator=g) * scale
    d = attacks.project_l1_box(x, v, eps)
    assert d.double().abs().sum(1).max() <= eps * (1 + 1e-6)  # summed exactly (float64) over the float32 output
    assert ((x + d) >= 0).all() and ((x + d) <= 1).all()
    # the projection of a feasible point is the point itself (to float rounding)
    assert torch.allclose(attacks.project_l1_box(x, d, eps), d, atol=1e-5 * max(1.0, eps / n))


@pytest.mark.parametrize("eps", [0.5, 12.0, 200.0])
def test_attacks_stay_in_the_intersection_on_images(eps: float):
    model = quickstart_model()
    x, y = quickstart_batch(8)
    g = torch.Generator().manual_seed(0)
    for delta in (attacks.random_init(x, eps, "L1", g), attacks.fgsm(model, x, y, eps, norm="L1"),
                  attacks.pgd(model, x, y, eps, steps=3, norm="L1", restarts=2, generator=g)):
        assert delta.flatten(1).double().abs().sum(1).max() <= eps * (1 + 1e-6)
        assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()


def test_the_l1_step_is_sparse_and_skips_pixels_the_box_blocks():
    x = torch.tensor([[1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    grad = torch.tensor([[9.0, -8.0, 1.0, -2.0, 0.5, 0.1, 0.0, 0.2, 3.0, -0.3]])
    direction = attacks.l1_direction(grad, x, torch.zeros_like(x), sparsity=0.2)
    # the two largest |grad| push pixels that are already at 1 (up) and 0 (down): skipped; the next two move
    assert direction.tolist() == [[0.0, 0.0, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0]]
    assert attacks.l1_direction(grad, sparsity=0.2).abs().sum() == 1
    assert (attacks.l1_direction(grad, sparsity=0.2) != 0).sum() == 2


def test_pgd_l1_accuracy_falls_with_eps():
    model = quickstart_model()
    x, y = quickstart_batch(32)
    accs = [pgd_correct(model, x, y, eps, "L1", steps=4, generator=torch.Generator().manual_seed(0)).float().mean()
            for eps in (0.0, 6.0, 24.0, 96.0)]
    assert accs[0] > 0.9
    assert all(b <= a for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] < 0.1 and accs[2] < accs[0] - 0.3, accs


# ----------------------------------------------------------------------------------------------------- config
def test_l1_config_accepts_budgets_above_one_and_refuses_single_step_methods():
    cfg = build_config("quickstart", ["threat.norm=L1", "threat.eps=12", "method.name=pgd", "method.steps=5"])
    assert cfg.threat.eps == 12
    with pytest.raises(ConfigError, match="single-step L1 training overfits catastrophically"):
        build_config("quickstart", ["threat.norm=L1", "threat.eps=12"])  # the quickstart's fgsm-rs
    with pytest.raises(ConfigError, match=r"did you mean 12/255\? \(an L1 or L2 budget may exceed 1"):
        build_config("quickstart", ["threat.eps=12"])
    with pytest.raises(ConfigError, match="threat.norm='L0' is not accepted; choose one of: Linf, L2, L1"):
        build_config("quickstart", ["threat.norm=L0"])


# ------------------------------------------------------------------------------------- training + evaluation
@pytest.fixture(scope="module")
def l1_run(tmp_path_factory) -> Path:
    from robustify.train.trainer import finetune

    run = tmp_path_factory.mktemp("l1") / "run"
    finetune(build_config("quickstart", [
        "threat.norm=L1", "threat.eps=12", "method.name=pgd", "method.steps=2", "train.epochs=3",
        "data.max_train_examples=384", "train.probe_size=32", "train.probe_steps=2", "eval.n_examples=64",
        "eval.pgd_steps=4", "train.probe_split=train", "schedule.lr=0.05", f"output_dir={run}"]))
    return run


def test_pgd_l1_training_raises_l1_robust_accuracy(l1_run: Path):
    m = json.loads((l1_run / "metrics.json").read_text())
    assert m["after"]["pgd"]["norm"] == "L1" and m["after"]["pgd"]["eps"] == 12
    # three short epochs: measured 48.4% -> 75.0% PGD-L1 (64 examples; torch 2.14), the clean accuracy 100% -> 90.6%
    # (two epochs gave 57.8% on an earlier torch and 53.1% on 2.14: too close to the bar)
    assert m["after"]["pgd_acc"] > m["before"]["pgd_acc"] + 0.05, (m["before"], m["after"])
    robustness = json.loads((l1_run / "config.json").read_text())["robustness"]
    assert robustness["threat_model"] == {"norm": "L1", "eps": 12.0}
    assert "eps = 12**" in (l1_run / "README.md").read_text()  # the card says 12, not 3060/255


def test_l1_evaluation_runs_autoattack_l1_the_curve_and_the_checks(l1_run: Path):
    pytest.importorskip("pyautoattack")
    import robustify
    from robustify.evaluate.report import EvalSettings, evaluate, large_eps, load_examples

    model = robustify.load(str(l1_run))
    ex = load_examples("quickstart", "test", 24, model, progress=False)
    s = EvalSettings(eps=12.0, norm="L1", preset="quick", pgd_steps=5, pgd_restarts=1, aa_version="quick",
                     aa_overrides={"apgd_iter": 5, "target_classes": 2, "fab_iter": 3, "square_queries": 20})
    r = evaluate(model, ex, s, progress=False)
    assert r["autoattack"]["norm"] == "L1" and r["autoattack_acc"] <= r["pgd_acc"] + 1e-9
    assert [p["eps"] for p in r["eps_curve"]["points"]] == [0.0, 3.0, 6.0, 12.0, 24.0]
    checks = {c["name"]: c for c in r["checks"]["items"]}
    assert checks["large_eps"]["status"] == "pass", checks["large_eps"]
    assert large_eps("L1", 12.0, (3, 32, 32)) == 0.5 * 3 * 32 * 32  # erases any image: |x - grey|_1 <= d / 2
    with pytest.raises(Exception, match="or > 0 for L2 and L1"):
        EvalSettings(eps=-1.0, norm="L1").validate()
