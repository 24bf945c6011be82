"""FOSC-controlled PGD (Wang et al. 2019): the criterion's value, threshold 0 equal to plain PGD bit for bit (the
attack and a training step), a large threshold computing fewer input gradients, the linear schedule, the history
fields and their state across a resume, and the config's rules. Tiny batches of the quickstart model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustify import attacks
from robustify.config import build_config
from robustify.errors import ConfigError
from robustify.train.methods import build_method
from robustify.train.options.fosc import FoscOption, FOSCSchedule, fosc, pgd_fosc
from tests.helpers import quickstart_batch, quickstart_model, step_context


def test_fosc_is_zero_at_the_linf_corner_and_positive_elsewhere():
    grad = torch.tensor([[1.0, -2.0, 0.5]])
    corner = 0.1 * grad.sign()
    assert fosc(grad, corner, 0.1, "Linf").item() == pytest.approx(0.0, abs=1e-7)
    assert fosc(grad, torch.zeros_like(grad), 0.1, "Linf").item() == pytest.approx(0.35)
    assert fosc(grad, -corner, 0.1, "Linf").item() == pytest.approx(0.7)
    assert fosc(grad, torch.zeros_like(grad), 2.0, "L1").item() == pytest.approx(4.0)  # dual: Linf


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 1.0)])
def test_threshold_zero_is_plain_pgd_bit_for_bit(norm: str, eps: float):
    model = quickstart_model()
    x, y = quickstart_batch(12)
    torch.manual_seed(3)
    plain = attacks.pgd(model, x, y, eps, 2.5 * eps / 4, steps=4, norm=norm)
    torch.manual_seed(3)
    delta, value, grads = pgd_fosc(model, x, y, eps, 2.5 * eps / 4, 4, norm, threshold=0.0)
    assert torch.equal(plain, delta)
    assert int(grads) == 12 * 4 and (value >= -1e-6).all()


def test_a_large_threshold_costs_fewer_input_gradients_and_stops_examples_early():
    model = quickstart_model()
    x, y = quickstart_batch(12)
    torch.manual_seed(0)
    _, full_value, full = pgd_fosc(model, x, y, 0.1, 0.05, 4, "Linf", threshold=0.0)
    median = float(full_value.median())
    torch.manual_seed(0)
    _, _, some = pgd_fosc(model, x, y, 0.1, 0.05, 4, "Linf", threshold=median * 50)
    torch.manual_seed(0)
    delta, _, one = pgd_fosc(model, x, y, 0.1, 0.05, 4, "Linf", threshold=float("inf"))
    assert int(full) == 48 and int(one) == 12 and int(one) <= int(some) <= int(full)
    # stopped at the first evaluation: still the random start, in the ball and the box
    assert delta.abs().max() <= 0.1 + 1e-6 and ((x + delta) >= 0).all() and ((x + delta) <= 1).all()


def test_a_training_step_at_threshold_zero_equals_plain_pgd_training():
    x, y = quickstart_batch(8)
    models = []
    for on in (False, True):
        cfg = build_config("quickstart", ["method.name=pgd", "method.steps=3", f"method.fosc={str(on).lower()}",
                                          "method.fosc_start=0", "threat.eps=0.1", "train.epochs=2"])
        torch.manual_seed(0)
        model = quickstart_model().train()
        method = build_method(cfg.method, cfg.threat)
        ctx = step_context(model, [])
        if on:  # the option hooks its attack into the step, as the trainer attaches it
            option = FoscOption(cfg)
            option.attach(ctx, None, model)
        for _ in range(2):
            method.step(ctx, x, y)
        models.append(model)
    assert option.history_fields(None, 1)["attack_grads"] == 8 * 3 * 2  # the option's attack ran in both steps
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_threshold_falls_linearly_to_zero_and_its_state_round_trips():
    s = FOSCSchedule(0.6)
    s.total_epochs = 4
    seen = []
    for _ in range(4):
        seen.append(s.threshold())
        s.record(torch.tensor([0.2, 0.4]), torch.tensor(6))
        row = s.end_epoch()
        assert row["fosc"] == pytest.approx(0.3) and row["attack_grads"] == 6
    assert seen == pytest.approx([0.6, 0.4, 0.2, 0.0])
    s2 = FOSCSchedule(0.6)
    s2.total_epochs = 4
    s.record(torch.tensor([1.0]), torch.tensor(2))
    s2.load_state_dict(json.loads(json.dumps(s.state_dict())))  # checkpoints keep the method state as JSON
    assert s2.epochs_seen == 4 and s2.end_epoch()["fosc"] == 1.0


def test_config_rules_for_fosc():
    cfg = build_config("quickstart", ["method.name=pgd", "method.fosc=true", "method.fosc_start=0.3"])
    assert cfg.method.fosc and cfg.method.fosc_start == 0.3
    for sets, message in [(["method.fosc=true"], "method.fosc=true with method.name='fgsm-rs' is not accepted"),
                          (["method.name=pgd", "method.fosc=true", "method.loss=trades"], "method.loss=ce"),
                          (["method.name=pgd", "method.fosc_start=-1"], "method.fosc_start=-1 is negative"),
                          (["method.fosc=maybe"], "method.fosc='maybe' is not accepted; use true or false")]:
        with pytest.raises(ConfigError, match=message):
            build_config("quickstart", sets)


def test_fosc_history_and_resume(tmp_path: Path):
    from robustify.train.trainer import finetune

    run = tmp_path / "run"
    sets = ["method.name=pgd", "method.steps=2", "method.fosc=true", "method.fosc_start=5", "train.epochs=3",
            "data.max_train_examples=192", "train.probe_size=16", "train.probe_steps=1", "eval.n_examples=16",
            "eval.pgd_steps=1", "train.probe_split=train", f"output_dir={run}"]
    finetune(build_config("quickstart", [*sets, "train.stop_after=1"]))
    m = finetune(build_config("quickstart", [*sets, "train.stop_after=null"]), resume=True)
    rows = json.loads((run / "history.json").read_text())
    assert [r["fosc_threshold"] for r in rows] == [5.0, 2.5, 0.0]  # the schedule continued across the resume
    assert all(r["fosc"] >= 0 for r in rows)
    per_epoch = 192 // 64 * 64 * 2  # examples x steps when nothing stops (threshold 0)
    assert rows[-1]["attack_grads"] == per_epoch and rows[0]["attack_grads"] <= per_epoch
    assert [r["fosc"] for r in m["history"]] == [r["fosc"] for r in rows]
