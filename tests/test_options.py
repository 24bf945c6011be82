"""The options registry (train/options/): an option that is off is not built (no option code in the step), every
registered option is what the record and the card ask (through robustify/sections.py), and each option's record
entry and card line appear exactly once."""

from __future__ import annotations

from types import SimpleNamespace

from robustify import sections
from robustify.config import build_config
from robustify.publish import card, runrecord
from robustify.train import options


def test_every_option_off_builds_none_and_each_on_builds_itself():
    assert options.active(build_config("quickstart", [])) == []  # the quickstart's step runs no option code
    on = {"eps_warmup": "threat.eps_warmup_fraction=0.5", "awp": "train.awp=true", "ema": "train.ema=true",
          "freeze": "model.freeze=stem", "grad_compression": "train.grad_compression=bf16",
          "local_sgd": "train.local_sgd_steps=2", "pure_bf16": "train.mixed_precision=pure-bf16"}
    for name, setting in on.items():
        assert [o.name for o in options.active(build_config("quickstart", [setting]))] == [name]


def test_the_record_and_the_card_ask_the_registry_and_name_each_option_once():
    assert [u.name for u in sections.options()] == list(options.OPTIONS)
    cfg = build_config("quickstart", ["threat.eps_warmup_fraction=0.5", "train.awp=true", "model.freeze=stem"])
    opts = runrecord.frontier_options(cfg)
    assert list(opts) == ["eps_warmup_fraction", "awp", "freeze"]
    record = SimpleNamespace(training=SimpleNamespace(options=opts, eps=cfg.threat.eps),
                             history=[{"epoch": 1, "train_eps": cfg.threat.eps}])
    lines = card._frontier_lines(record)
    assert len(lines) == 3 and len(set(lines)) == 3
    assert [line.split(":")[0] for line in lines] == ["- Epsilon warm-up", "- Adversarial weight perturbation (AWP, Wu "
                                                      "et al. 2020)", "- Frozen parameters (model.freeze, last stage)"]
