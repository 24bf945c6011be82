"""The run folder has one owner: every file name is spelled in robustify/runfolder.py only, its files are read through
one reader (one line when one cannot be read) and the record is written by one writer; the card renders whatever
the recipe holds (no template engine); config's section checks come from the registries without config naming them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from robustify import runfolder
from robustify.errors import UserError
from robustify.publish import public
from robustify.publish.runrecord import RunRecord, check_seal, verify_weights
from robustify.runfolder import CARD, CONFIG, METRICS, RECIPE, RunFolder

from .zoo_runs import make_record, make_run

PACKAGE = Path(__file__).resolve().parents[1] / "robustify"
NAMES = {v for k, v in vars(runfolder).items() if k.isupper() and isinstance(v, str) and "*" not in v}
# Functions that still spell a name themselves, and why (each one a reason, not a convenience):
EXEMPT = {
    # an example --output file name in a message; fileio.py is below runfolder.py (runfolder writes through it)
    ("fileio.py", "check_output_file"),
}


def spellings(path: Path) -> list[tuple[str, int, str]]:
    """(function, line, name) for every string constant equal to a run-folder file name in ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def walk(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Constant) and isinstance(child.value, str) and child.value in NAMES:
                found.append((func, child.lineno, child.value))
            walk(child, name)

    walk(tree, "")
    return found


def test_every_run_folder_file_name_is_spelled_in_runfolder_only() -> None:
    assert {"model.safetensors", "config.json", "metrics.json", "README.md", "recipe.yaml", "history.json",
            "history.png", "eval.json", "eps_curve.png", "checkpoints", "trainer_state.json", ".lock"} <= NAMES
    bad = [f"{path.relative_to(PACKAGE)}:{line} ({func or 'module level'}) spells {name!r}"
           for path in sorted(PACKAGE.rglob("*.py")) if path.name != "runfolder.py"
           for func, line, name in spellings(path) if (path.relative_to(PACKAGE).as_posix(), func) not in EXEMPT]
    assert not bad, "ask robustify.runfolder for these names:\n" + "\n".join(bad)
    # the check sees a spelling (it would have flagged the modules before the change)
    assert spellings(Path(__file__)) and any(n == "config.json" for _, _, n in spellings(Path(__file__)))


def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    (tmp_path / METRICS).write_text("{not json")
    for name in (METRICS, CONFIG):  # invalid, missing
        with pytest.raises(UserError, match=rf"run folder .*: {name} cannot be read \(") as e:
            folder.read_json(name)
        assert "\n" not in str(e.value)
    (tmp_path / RECIPE).write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(UserError, match=f"{RECIPE} cannot be read"):
        folder.read_text(RECIPE)


def test_the_one_writer_seals_the_record_and_the_one_reader_reads_it_back(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    config = RunFolder(run).read_json(CONFIG)
    files = make_record().files(config)
    assert set(files) == {CONFIG, METRICS} and all(b.endswith(b"}\n") for b in files.values())
    written_config, written_metrics = json.loads(files[CONFIG]), json.loads(files[METRICS])
    check_seal(written_config, written_metrics, "x", "fix")  # the pair is sealed together
    assert written_config["pretrained_cfg"] == config["pretrained_cfg"]  # timm's fields kept
    record = RunRecord.read(run)  # make_run wrote it with RunRecord.write, which renders through files()
    assert record.robustness() == make_record().robustness() | {"weights_sha256": record.training.weights_sha256}
    assert verify_weights(run) == record.training.weights_sha256
    (run / CONFIG).write_text(json.dumps({"architecture": "test_resnet"}))  # a plain timm folder
    with pytest.raises(UserError, match="config.json has no 'robustness' block"):
        RunRecord.read(run)


def _model():
    from robustify.data.preprocessing import Preprocessing
    from robustify.models import build_robust_model

    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    pre = Preprocessing.from_data_config(dict(backbone.pretrained_cfg, input_size=(3, 32, 32)))
    return build_robust_model(backbone, pre, source="test")


def test_a_recipe_holding_template_syntax_exports_and_the_card_keeps_it_verbatim(tmp_path: Path) -> None:
    """Before, the card went through a Jinja template: ``{%`` raised TemplateSyntaxError at export, ``{#`` ... ``#}``
    vanished from the card, ``{{ x }}`` was replaced by nothing."""
    from robustify.publish.export import write_run_folder
    from robustify.publish.hub import publish_contents, read_run_folder

    recipe = ("model:\n  name: test_resnet\ndata:\n  name: cifar10\n"
              "notes: 'a {# comment #} b {{ value }} c {% tag %} d {#'\n# a comment with {# and {{ and {%\n")
    run = tmp_path / "run"
    write_run_folder(run, _model(), make_record(arch="test_resnet"), recipe)
    card = (run / CARD).read_text()
    shown = public.recipe(recipe, "run-a")
    assert shown.rstrip() in card
    for text in ("{# comment #}", "{{ value }}", "{% tag %}"):
        assert text in card
    assert (run / RECIPE).read_text() == recipe and verify_weights(run)
    # push renders the same card for the repo (from the record, with the repo's id)
    pushed = publish_contents(read_run_folder(run), "org/name")[CARD].decode()
    assert shown.rstrip() in pushed and "hf-hub:org/name" in pushed


def test_the_card_layout_is_the_one_the_template_gave() -> None:
    """Built from a string, a card is byte for byte what huggingface_hub's Jinja template wrote for text without
    template syntax: an unchanged run re-pushed makes no new commit."""
    pytest.importorskip("jinja2")
    from huggingface_hub import ModelCard, ModelCardData

    from robustify.publish.card import compose

    data = ModelCardData(library_name="timm", license="apache-2.0", tags=["a", "b"])
    for body in ("# title\n\ntext\n", "# title\n\ntext", "x\n\n"):
        old = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + body)
        assert str(compose(data, body)) == str(old)


def test_a_fresh_process_checks_the_registries_sections() -> None:
    """config.py names no registry: the facade loads them the first time a config is checked, so
    ``robustify.config.build_config`` alone still refuses an unknown method, schedule, and fills data.eval_split."""
    code = ("import sys\nfrom robustify.config import build_config\nfrom robustify.errors import ConfigError\n"
            "assert 'robustify.train.methods' not in sys.modules\n"
            "print(build_config('quickstart').data.eval_split)\n"
            "for s in ('method.name=bogus', 'schedule.name=bogus'):\n"
            "    try:\n        build_config('quickstart', [s])\n    except ConfigError as e:\n        print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "test"
    assert lines[1].startswith("method.name='bogus' is not accepted; choose one of: natural")
    assert lines[2].startswith("schedule.name='bogus' is not accepted")
