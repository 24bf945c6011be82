"""Follow-ups of the renovation (issue 26): pure-bf16 is a registered option that no other module of robustify/
names; refusal lines spell values as a user writes them; a checkpoint without a state the run registers is one
line, not Accelerate's FileNotFoundError; a run's relative local data is found from the folder ``finetune`` ran
in, whatever folder ``eval`` runs in. All cheap: no training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from robustify.config import build_config, spelled
from robustify.errors import ConfigError, UserError
from robustify.train import options

ROOT = Path(__file__).resolve().parent.parent


def test_pure_bf16_is_a_registered_option_named_by_its_own_file_only():
    assert [o.name for o in options.active(build_config("quickstart", ["train.mixed_precision=pure-bf16"]))] == [
        "pure_bf16"]
    cfg = build_config("quickstart", ["train.mixed_precision=pure-bf16"])
    assert options.own_precision(cfg) == "pure-bf16" and options.own_precision(build_config("quickstart")) is None
    own = {ROOT / "robustify/train/options/pure_bf16.py", ROOT / "robustify/train/options/__init__.py"}
    naming = [str(p.relative_to(ROOT)) for p in (ROOT / "robustify").rglob("*.py")
              if p not in own and re.search(r"\bpure_bf16\b|PureBf16", re.sub(r"#.*", "", p.read_text()))]
    assert naming == [], naming


@pytest.mark.parametrize(("sets", "line"), [
    (["train.mixed_precision=pure-bf16", "train.awp=true"],
     "train.mixed_precision='pure-bf16' with train.awp=true is not accepted"),
    (["train.mixed_precision=pure-bf16", "train.local_sgd_steps=2"], "set train.local_sgd_steps=null, or use"),
    (["train.local_sgd_steps=2", "train.ema=true"], "with train.ema=true is not accepted"),
    (["train.local_sgd_steps=2", "train.checkpoint_every=5"], "set train.checkpoint_every=null"),
])
def test_refusals_spell_values_as_a_user_writes_them(sets: list[str], line: str):
    with pytest.raises(ConfigError) as e:
        build_config("quickstart", sets)
    assert line in str(e.value) and not re.search(r"=(True|False|None)\b", str(e.value)), str(e.value)
    assert [spelled(v) for v in (True, False, None, "sgd", 0.5, 3)] == ["true", "false", "null", "'sgd'", "0.5", "3"]


def test_a_checkpoint_without_a_registered_state_is_one_line(tmp_path: Path):
    """A checkpoint written by an earlier robustify, which registered the weight average only in the stages with
    train.ema: the run now registers it once for the whole run, so the file is missing from a stage-1 checkpoint."""
    from accelerate import Accelerator

    from robustify.train.checkpoint import BestWeights, load_checkpoint
    from robustify.train.options.ema import AverageSlot

    acc = Accelerator(cpu=True)
    acc.register_for_checkpointing(AverageSlot())
    folder = tmp_path / "epoch-1"
    acc.save_state(str(folder))
    (folder / "custom_checkpoint_0.pkl").unlink()  # as the earlier robustify wrote it (nothing registered)
    with pytest.raises(UserError) as e:
        load_checkpoint(acc, folder, BestWeights(), acc.device)
    message = str(e.value)
    assert "\n" not in message and "holds 0 option state(s) where this run registers 1" in message, message
    assert "train.ema" in message
    assert "new --output-dir" in message


def test_a_runs_relative_data_is_found_from_the_folder_finetune_ran_in(tmp_path: Path, monkeypatch):
    """``finetune --data imagefolder:shapes --output-dir runs/pets`` in work/, then ``eval work/runs/pets`` from
    elsewhere: the recipe's relative path is resolved against the folder the run was made in (its output_dir
    tells), not against the current folder."""
    from robustify.evaluate.report import recipe_data
    from robustify.runfolder import RunFolder

    work = tmp_path / "work"
    run = work / "runs" / "pets"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("data:\n  name: imagefolder:shapes\noutput_dir: runs/pets\n")
    (work / "shapes").mkdir()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "shapes").mkdir(parents=True)  # another folder of the same name here: not the run's
    monkeypatch.chdir(elsewhere)
    public = "local imagefolder data set (shapes)"
    assert recipe_data(RunFolder(run), public) == f"imagefolder:{(work / 'shapes').resolve()}"
    (run / "recipe.yaml").write_text("data:\n  name: imagefolder:shapes\noutput_dir: /somewhere/else/pets\n")
    assert recipe_data(RunFolder(run), public) == "imagefolder:shapes"  # unknown origin: from here, as before
    monkeypatch.chdir(tmp_path)
    assert recipe_data(RunFolder(run), public) == public


def test_each_option_declares_its_keys_once_and_the_set_help_lists_them(capsys):
    """An option's keys live in its class (train/options/): they are config keys, no two options declare one key,
    ``--set``'s help is written from them, and the stage rules (adversarial-only keys, keys a stage may not change,
    model keys a stage may change) are the declarations of the registries, not tables in config.py."""
    from robustify import sections
    from robustify.cli import main
    from robustify.config import adversarial_only, all_keys

    units = list(options.OPTIONS.values())
    declared = [k for unit in units for k in unit.keys]
    assert declared and len(declared) == len(set(declared)) and set(declared) <= set(all_keys())
    assert all(unit.title for unit in units)
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for unit in units:
        assert " ".join(unit.usage().split()) in help_text.replace("- ", "-"), unit.usage()
    assert adversarial_only() == {"method.loss": "ce", "method.fosc": False, "train.awp": False}
    assert {"data.unlabeled", "train.teacher"} <= set(sections.declared("fixed"))
    assert set(sections.declared("stage")) == {"model.freeze"}
    config_source = (ROOT / "robustify/config.py").read_text()
    after_schema = config_source.split("def _coerce(")[1]  # after the dataclasses and their CHOICES
    assert not [k for k in declared if f'"{k}"' in after_schema]  # beyond the schema: no option key
