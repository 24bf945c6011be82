"""RobustBench's model_info format: what ``robustify export RUN --robustbench FILE.json`` (and ``push``) writes has
exactly the fields and types of RobustBench's own files (all of them, from the shared snapshot), and is written only
from the standard AutoAttack on RobustBench's protocol; any other evaluation is one line saying why, and no file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from robustify.cli import main
from robustify.publish.robustbench import FIELDS, NotComparable, model_info

try:
    from tests.zoo_runs import make_record, make_run
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from zoo_runs import make_record, make_run

SNAPSHOT = Path(__file__).resolve().parents[2] / "shared" / "robustbench" / "model_info"
FILES = sorted(SNAPSHOT.glob("*/*/*.json"))
ADVERSARIAL = [p for p in FILES if p.parent.name != "corruptions"]
OPTIONAL = {"unreliable", "external"}  # leaderboard bookkeeping fields RobustBench adds to some entries itself
needs_snapshot = pytest.mark.skipif(not SNAPSHOT.is_dir(), reason=f"no RobustBench snapshot at {SNAPSHOT}")


@needs_snapshot
def test_the_snapshot_is_there() -> None:
    assert len(FILES) == 236 and len(ADVERSARIAL) > 150  # 240 files, 4 of them corruptions CSVs


@needs_snapshot
def test_fields_and_types_are_robustbenchs() -> None:
    types: dict[str, set[type]] = {}
    for p in FILES:
        for k, v in json.loads(p.read_text()).items():
            types.setdefault(k, set()).add(type(v))
    ours = {
        (ds, norm, eps): model_info(make_record(dataset=ds, norm=norm, eps=eps, n=n, size=size, split=split),
                                    name="Robust fine-tuning", link="https://huggingface.co/o/n", authors="A. B.",
                                    venue="robustify")
        for ds, norm, eps, n, size, split in [
            ("cifar10", "Linf", 8 / 255, 10_000, 32, "test"), ("cifar10", "L2", 0.5, 10_000, 32, "test"),
            ("cifar100", "Linf", 8 / 255, 10_000, 32, "test"),
            ("imagenet-1k", "Linf", 4 / 255, 5_000, 224, "validation")]}
    for (ds, norm, _), info in ours.items():
        assert list(info) == list(FIELDS)
        for k, v in info.items():
            assert type(v) in types[k], (k, v, types[k])
        for p in ADVERSARIAL:  # the same fields as every adversarial entry (footnote is optional there)
            theirs = json.loads(p.read_text())
            assert set(theirs) - OPTIONAL <= set(info) and set(info) - {"footnote"} <= set(theirs), p.name
        board = "imagenet" if ds == "imagenet-1k" else ds
        same_board = [json.loads(p.read_text()) for p in SNAPSHOT.glob(f"{board}/{norm}/*.json")]
        assert info["eps"] in {t["eps"] for t in same_board}  # "8/255", "0.5", "4/255" written as RobustBench does
        assert info["dataset"] == same_board[0]["dataset"]
        for key in ("clean_acc", "autoattack_acc", "reported"):
            assert re.fullmatch(r"\d{1,3}\.\d\d", info[key])
        assert all(re.fullmatch(r"\d{1,3}\.\d\d", t["clean_acc"]) for t in same_board)
    assert ours[("cifar10", "Linf", 8 / 255)]["clean_acc"] == "85.12"
    assert ours[("cifar10", "Linf", 8 / 255)]["autoattack_acc"] == "43.21"
    assert ours[("cifar10", "Linf", 8 / 255)]["additional_data"] is True  # fine-tuned from pretrained weights


@pytest.mark.parametrize(("kw", "why"), [
    ({"aa": None}, "PGD only"),
    ({"aa": "quick"}, "quick AutoAttack"),
    ({"size": 224}, "other resolution: attacked at 224x224"),
    ({"n": 1000}, "1000 examples, RobustBench uses the first 10,000"),
    ({"eps": 4 / 255}, "leaderboard is at eps 8/255"),
    ({"dataset": "quickstart"}, "has no RobustBench leaderboard"),
    ({"dataset": "imagenet-1k", "eps": 4 / 255, "size": 224, "n": 1000, "split": "validation"}, "first 5,000"),
    ({"norm": "L2", "eps": 0.5, "dataset": "cifar100"}, "no cifar100 L2 leaderboard"),
])
def test_any_other_evaluation_says_why(kw: dict, why: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(NotComparable, match=re.escape(why)):
        model_info(make_record(**kw))
    run = make_run(tmp_path / "run", **kw)
    out = tmp_path / "rb.json"
    assert main(["export", str(run), "--robustbench", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not comparable" in err[0] and why in err[0]
    assert not out.exists()


def test_export_writes_the_file(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    out = tmp_path / "rb.json"
    assert main(["export", str(run), "--robustbench", str(out), "--name", "My model", "--authors", "Me"]) == 0
    info = json.loads(out.read_text())
    assert list(info) == list(FIELDS) and info["name"] == "My model" and info["authors"] == "Me"
    assert info["eps"] == "8/255" and info["autoattack_acc"] == "43.21"
    assert "AutoAttack 43.21%" in capsys.readouterr().out
