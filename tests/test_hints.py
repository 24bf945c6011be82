"""The "did you mean" hint is spelled once (robustify.errors.did_you_mean) and every refusal of an unknown name uses
it: a flag, a config key, a zoo entry's field, a zoo name, a converter. Cheap: no training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from robustify.config import build_config
from robustify.errors import ConfigError, UserError, did_you_mean
from robustify.publish import converters
from robustify.publish.zoo import parse_entry

ROOT = Path(__file__).resolve().parent.parent


def test_the_hint_names_the_closest_choices_or_nothing():
    assert did_you_mean("schedule.lrate", ["schedule.lr", "train.epochs"]) == "did you mean 'schedule.lr'?"
    assert did_you_mean("--dry-rn", ["--dry-run", "--json"], quote="") == "did you mean --dry-run?"
    assert did_you_mean("zzz", ["schedule.lr"]) == ""
    two = did_you_mean("resnt", ["resnet-a", "resnet-b", "vit"], n=2, cutoff=0.3)
    assert two.startswith("did you mean '") and "'resnet-a'" in two and "'resnet-b'" in two and "vit" not in two


@pytest.mark.parametrize(("ask", "line"), [
    (lambda: build_config("quickstart", ["optim.momentun=0.9"]), "did you mean 'optim.momentum'?"),
    (lambda: parse_entry({"hubid": "o/x"}), "unknown field 'hubid' (did you mean 'hub_id'?)"),
    (lambda: converters.get("state-dikt"), "--format 'state-dikt' is not accepted (did you mean 'state-dict'?)"),
])
def test_each_refusal_of_an_unknown_name_carries_the_hint(ask, line: str):
    with pytest.raises((ConfigError, UserError)) as e:
        ask()
    assert line in str(e.value)


def test_no_other_module_spells_the_hint():
    spelled = [str(p.relative_to(ROOT)) for p in (ROOT / "robustify").rglob("*.py")
               if p.name != "errors.py" and re.search(r"get_close_matches|did you mean '", p.read_text())]
    assert spelled == [], spelled
