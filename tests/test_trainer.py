"""The trainer's parts: the guard verdict, in-memory best weights, global-batch lr scaling, gradient accumulation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustify.config import build_config, scaled_lr
from robustify.errors import ConfigError
from robustify.train.checkpoint import BestWeights, TrainState
from robustify.train.trainer import finetune, guard_verdict
from tests.helpers import quickstart_model


def test_guard_verdict_flags_a_collapse_and_the_best_epoch():
    state = TrainState(best_probe=0.5, best_epoch=2)
    assert guard_verdict(state, 0.55, 3, 0.2) == "best"
    assert guard_verdict(state, 0.4, 3, 0.2) == ""
    assert guard_verdict(state, 0.2, 3, 0.2).startswith("catastrophic overfitting")
    assert guard_verdict(TrainState(), 0.0, 1, 0.2) == "best"  # the first epoch is always the best so far


def test_best_weights_live_in_memory_and_restore_exactly():
    model, best = quickstart_model(), BestWeights()
    best.capture(model)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    best.restore(model)  # no file involved: each process (node) keeps its own copy
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_lr_follows_the_global_batch_by_the_recipe_rule():
    def cfg(rule: str, ref: int | None = 256):
        sets = ["schedule.lr=0.1", f"schedule.lr_scale_rule={rule}"] + ([f"train.global_batch={ref}"] if ref else [])
        return build_config("quickstart", sets)

    assert scaled_lr(cfg("linear"), 2048) == pytest.approx(0.8)
    assert scaled_lr(cfg("sqrt"), 1024) == pytest.approx(0.2)
    assert scaled_lr(cfg("none", None), 2048) == 0.1  # no reference batch: lr as given
    assert scaled_lr(cfg("none"), 2048) == 0.1


def test_gradient_accumulation_steps_once_per_group_and_refuses_free(tmp_path: Path, capsys):
    cfg = build_config("quickstart", ["data.max_train_examples=320", "train.epochs=1", "eval.n_examples=32",
                                      "eval.pgd_steps=1", "train.probe_size=32", "train.probe_steps=1",
                                      "data.batch_size=64", "train.grad_accum=2", "train.global_batch=64",
                                      "schedule.lr_scale_rule=linear", "train.probe_split=train",
                                      f"output_dir={tmp_path / 'run'}"])
    metrics = finetune(cfg)
    # 5 minibatches in groups of 2: steps after minibatches 2, 4 and (closing the epoch's partial group) 5
    assert metrics["cost"]["optimizer_steps"] == 3
    assert metrics["cost"]["global_batch"] == 128
    assert metrics["cost"]["peak_lr"] == pytest.approx(2 * cfg.schedule.lr)  # linear rule from 64 to 128
    assert "scaled linear" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="grad_accum=2 with method.name='free'"):
        build_config("quickstart", ["method.name=free", "train.grad_accum=2"])


def test_heldout_probe_is_never_trained_on():
    """train.probe_split=heldout (the default): the probe's examples are not among the optimizer's minibatches."""
    from timm.data import resolve_data_config

    from robustify.data import build_loaders

    cfg = build_config("quickstart", ["data.batch_size=50"])
    data_config = resolve_data_config(model=quickstart_model().backbone)
    loaders = build_loaders(cfg.data, data_config, 16, 100, seed=0, probe_split="heldout")
    seen = {bytes(x.numpy()) for xb, _ in loaders.train_epoch(1) for x in xb}
    probe = {bytes((x * 255).round().to(torch.uint8).numpy()) for x in loaders.probe[0]}
    assert len(probe) == 100 and not probe & seen
    assert loaders.train_size == 1297 - 100 and loaders.probe_record["probe_split"] == "heldout"
    same = build_loaders(cfg.data, data_config, 16, 100, seed=0, probe_split="train")  # the old behaviour
    trained = {bytes(x.numpy()) for xb, _ in same.train_epoch(1) for x in xb}
    probed = {bytes((x * 255).round().to(torch.uint8).numpy()) for x in same.probe[0]}
    assert same.train_size == 1297 and probed & trained
