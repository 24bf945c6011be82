"""FOSC as a registered option (issue 26): no module of robustify/ but its own file, its registry line and the
config's schema names it; the step's attack hook is empty unless an option fills it; a checkpoint written when the
PGD method held the schedule (method state ``{"fosc": ...}``) resumes into the option; the card reads the start
threshold from a record of either layout. All cheap: no training."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import torch

from robustify import sections
from robustify.config import build_config
from robustify.train import options
from robustify.train.methods import StepContext
from robustify.train.options.fosc import FoscOption

ROOT = Path(__file__).resolve().parent.parent
SETS = ["method.name=pgd", "method.fosc=true", "method.fosc_start=0.5", "train.epochs=3"]


def test_fosc_is_a_registered_option_named_by_its_own_file_only():
    assert [o.name for o in options.active(build_config("quickstart", SETS))] == ["fosc"]
    assert options.active(build_config("quickstart", ["method.name=pgd"])) == []
    assert sections.declared("adversarial_only")["method.fosc"] is False
    # config.py holds the keys' schema (the dataclass fields), as for every option
    own = {ROOT / "robustify/train/options/fosc.py", ROOT / "robustify/train/options/__init__.py",
           ROOT / "robustify/config.py"}
    naming = [str(p.relative_to(ROOT)) for p in (ROOT / "robustify").rglob("*.py")
              if p not in own and re.search(r"(?i)fosc", re.sub(r"#.*", "", p.read_text()))]
    assert naming == [], naming


def test_the_pgd_attack_hook_is_empty_unless_an_option_fills_it():
    ctx = StepContext(model=torch.nn.Identity(), attack_model=torch.nn.Identity(), optimize=lambda loss: None,
                      autocast=lambda: None)
    assert ctx.pgd_attack is None
    option = FoscOption(build_config("quickstart", SETS))
    option.attach(ctx, None, ctx.model)
    assert ctx.pgd_attack == option.attack
    assert option.schedule.total_epochs == 3 and option.schedule.threshold() == 0.5  # the stage's epochs


def test_a_checkpoint_of_the_pgd_method_state_resumes_into_the_option():
    option = FoscOption(build_config("quickstart", SETS))
    rest = option.load_state_dict({"fosc": {"epochs_seen": 2, "sums": [1.0, 2.0, 6.0]}, "other": 1})
    assert rest == {"other": 1}
    assert option.schedule.threshold() == 0.0 and option.history_fields(None, 3) == {
        "fosc": 0.5, "fosc_threshold": 0.0, "attack_grads": 6}
    assert option.state_dict() == {"fosc": {"epochs_seen": 3, "sums": None}}  # the same entry the method wrote


def test_the_record_and_the_card_line_from_a_new_or_an_old_record():
    cfg = build_config("quickstart", SETS)
    assert FoscOption.record(cfg) == {"fosc_start": 0.5}
    assert FoscOption.record(build_config("quickstart", ["method.name=pgd"])) == {}
    new = SimpleNamespace(training=SimpleNamespace(options={"fosc_start": 0.5}, method={"name": "pgd"}))
    old = SimpleNamespace(training=SimpleNamespace(options=None, method={"name": "pgd", "fosc_start": 0.5}))
    plain = SimpleNamespace(training=SimpleNamespace(options=None, method={"name": "pgd"}))
    assert FoscOption.card_lines(new) == FoscOption.card_lines(old) and "from 0.5 in the first epoch" in \
        FoscOption.card_lines(new)[0]
    assert FoscOption.card_lines(plain) == []
