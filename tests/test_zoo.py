"""The zoo: shipped entries validate, `robustify zoo list/show` print them, and mistakes name the file and field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from robustify.cli import main
from robustify.errors import UserError
from robustify.publish import zoo
from robustify.publish.card import robustbench_block
from robustify.publish.runrecord import RunRecord

QUICKSTART = "quickstart-digits-test_resnet-linf-0.1"


@pytest.fixture(autouse=True)
def _wide_tables(monkeypatch) -> None:
    """The tables are read cell by cell: a width that fits every column, whatever the runner's terminal (a
    pytest-xdist worker has none, and 80 columns would leave some out)."""
    monkeypatch.setenv("COLUMNS", "200")


def _quickstart_data() -> dict:
    path = next(p for p in zoo.zoo_files() if p.stem == QUICKSTART)
    return yaml.safe_load(path.read_text())


def test_shipped_entries_validate_and_the_quickstart_demo_comes_first() -> None:
    entries = zoo.load_zoo()
    assert entries and entries[0].name == QUICKSTART
    first = entries[0]
    assert first.demo and first.hub_id == "robustify/quickstart-digits-test-resnet" and first.recipe == "quickstart"
    assert first.threat_model == "Linf" and first.eps_value == pytest.approx(0.1)
    assert "not published on the real Hugging Face Hub" in " ".join(first.notes.split())


def test_entries_carry_the_cards_robustbench_fields() -> None:
    robustness = {"threat_model": {"norm": "Linf", "eps": 0.1}, "dataset": "quickstart", "base_model": "quickstart",
                  "architecture": "test_resnet", "method": {"name": "fgsm-rs"}, "input_size": [3, 32, 32]}
    metrics = {"after": {"clean_acc": 0.9, "pgd_acc": 0.6, "pgd": {"steps": 10}, "n_examples": 500}}
    record = RunRecord.from_dicts(robustness, metrics)
    block = robustbench_block(record)
    assert set(block) <= {f.name for f in dataclasses.fields(zoo.ZooEntry)}
    # a block copied from a card, plus the Hub id and recipe, is a valid entry
    entry = zoo.parse_entry({**block, "name": "x", "hub_id": "o/x", "base_model": "quickstart", "recipe": "quickstart"})
    assert entry.robust_acc == (60.0, "PGD") and entry.resolution == "32x32" and entry.additional_data
    assert zoo.entry_from_record(record, "x", "o/x", "quickstart") == {
        **block, "name": "x", "hub_id": "o/x", "base_model": "quickstart", "recipe": "quickstart"}


def test_zoo_list_shows_the_quickstart(capsys) -> None:
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    e = zoo.get_entry(QUICKSTART)
    row = next(line for line in out.splitlines() if QUICKSTART in line)
    for cell in (e.base_model, e.dataset, e.threat_model, e.eps, f"{e.clean_acc:.1f}%", f"{e.pgd_acc:.1f}% PGD",
                 e.method, e.hub_id, "(demo)"):
        assert cell in row
    for header in ("name", "base model", "data", "threat model", "eps", "clean", "robust", "method", "Hub id"):
        assert header in out
    assert main(["zoo"]) == 0 and QUICKSTART in capsys.readouterr().out  # bare 'zoo' lists too


def test_zoo_show_gives_the_load_command_and_the_recipe(capsys) -> None:
    assert main(["zoo", "show", QUICKSTART]) == 0
    out = capsys.readouterr().out
    assert 'timm.create_model("hf-hub:robustify/quickstart-digits-test-resnet", pretrained=True)' in out
    assert "robustify finetune --recipe quickstart" in out and "slow-start-fast-decay" in out  # the recipe itself
    assert "[demo]" in out and "hub_id" in out and "n_examples" in out
    assert main(["zoo", "show", "robustify/quickstart-digits-test-resnet"]) == 0  # by Hub id too


def test_zoo_show_unknown_name_suggests(capsys) -> None:
    assert main(["zoo", "show", "quickstart-digits"]) == 2
    err = capsys.readouterr().err
    assert "no model named" in err and QUICKSTART in err


def test_adding_a_model_is_adding_a_file(tmp_path: Path, monkeypatch, capsys) -> None:
    data = _quickstart_data() | {"name": "cifar10-resnet18-linf-8", "hub_id": "org/r18", "eps": "8/255",
                                 "demo": False, "autoattack_acc": 41.5, "overrides": ["threat.eps=8/255"]}
    (tmp_path / "cifar10-resnet18-linf-8.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(zoo, "ZOO_DIRS", (*zoo.ZOO_DIRS, tmp_path))
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "cifar10-resnet18-linf-8" in out and "41.5% AutoAttack" in out and QUICKSTART in out
    assert main(["zoo", "show", "cifar10-resnet18-linf-8"]) == 0
    assert "--set threat.eps=8/255" in capsys.readouterr().out


@pytest.mark.parametrize(("change", "message"), [
    ({"hubid": "o/x"}, "unknown field 'hubid' (did you mean 'hub_id'?)"),
    ({"hub_id": None}, "missing field 'hub_id'"),
    ({"clean_acc": "high"}, "field 'clean_acc'='high' is not accepted; use a number"),
    ({"clean_acc": 0.978 * 1000}, "percentages in [0, 100]"),
    ({"eps": "eight"}, "field 'eps'='eight'"),
    ({"threat_model": "linf"}, "choose one of: Linf, L2"),
    ({"hub_id": "no-namespace"}, "use ORG/NAME"),
    ({"name": "other-name"}, "must equal the file name"),
    ({"pgd_acc": None, "autoattack_acc": None}, "needs a robust accuracy"),
    ({"demo": "yes"}, "field 'demo'='yes' is not accepted; use true or false"),
])
def test_bad_entries_name_the_file_and_field(tmp_path: Path, change: dict, message: str) -> None:
    data = {k: v for k, v in (_quickstart_data() | change).items() if not (k == "hub_id" and v is None)}
    path = tmp_path / f"{QUICKSTART}.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as err:
        zoo.load_zoo([tmp_path])
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_field_and_invalid_yaml(tmp_path: Path) -> None:
    data = _quickstart_data()
    del data["recipe"]
    (tmp_path / f"{QUICKSTART}.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="missing field 'recipe'"):
        zoo.load_zoo([tmp_path])
    (tmp_path / f"{QUICKSTART}.yaml").write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        zoo.load_zoo([tmp_path])
