"""RobustBench's corruptions board: ``robustify export RUN --robustbench FILE --threat-model corruptions`` writes
exactly the fields and types of RobustBench's corruptions files, only from the published CIFAR-10-C / CIFAR-100-C
images on its protocol (anything else is one line saying why, and no file), and ``zoo compare --threat-model
corruptions`` places the run on that board."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustify.cli import main
from robustify.evaluate.corruptions import CORRUPTIONS
from robustify.publish.robustbench import CORRUPTIONS_FIELDS, compare_corruptions, corruptions_model_info
from robustify.runfolder import CORRUPTIONS_REPORT

try:
    from tests.zoo_runs import make_record, make_run
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from zoo_runs import make_record, make_run

SNAPSHOT = Path(__file__).resolve().parents[2] / "shared" / "robustbench" / "model_info"
needs_snapshot = pytest.mark.skipif(not SNAPSHOT.is_dir(), reason=f"no RobustBench snapshot at {SNAPSHOT}")


def result(weights: str | None, **kw) -> dict:
    """A corruptions.json as robustify eval writes it (the fields the export reads)."""
    r = {"source": "published", "published_set": "cifar10-c", "corruptions": list(CORRUPTIONS),
         "severities": [1, 2, 3, 4, 5], "n_examples": 10_000, "clean_acc": 0.8512, "mean_corruption_acc": 0.7531,
         "weights_sha256": weights}
    return r | kw


def corrupted_run(tmp_path: Path, dataset: str = "cifar10", **kw) -> Path:
    run = make_run(tmp_path / "run", dataset=dataset)
    sha = json.loads((run / "config.json").read_text())["robustness"]["weights_sha256"]
    (run / CORRUPTIONS_REPORT).write_text(json.dumps(result(sha, **kw)))
    return run


@needs_snapshot
def test_fields_and_types_are_robustbenchs_corruptions_files() -> None:
    for ds, pub in (("cifar10", "cifar10-c"), ("cifar100", "cifar100-c")):
        record = make_record(dataset=ds)
        info = corruptions_model_info(record, result(record.training.weights_sha256, published_set=pub),
                                      name="Robust fine-tuning", venue="robustify")
        assert list(info) == list(CORRUPTIONS_FIELDS) and info["corruptions_acc"] == "75.31" and info["eps"] == "8/255"
        for p in SNAPSHOT.glob(f"{ds}/corruptions/*.json"):
            theirs = json.loads(p.read_text())
            assert set(theirs) - {"footnote"} == set(info) - {"footnote"}, p.name
            for k, v in theirs.items():
                assert v is None or type(v) is type(info[k]) or k == "footnote", (p.name, k)


@pytest.mark.parametrize(("kw", "why"), [
    ({"source": "on-the-fly"}, "on-the-fly corruptions (robustify's own images)"),
    ({"n_examples": 1000}, "1000 images per severity, RobustBench uses all 10,000"),
    ({"corruptions": ["fog"]}, "1 corruptions at severities 1,2,3,4,5"),
    ({"weights_sha256": "0" * 64}, "measured other weights"),
    ({"dataset": "imagenet-1k"}, "also ranks 3D common corruptions"),
    ({"dataset": "quickstart"}, "has no RobustBench corruptions leaderboard"),
])
def test_any_other_corruption_evaluation_says_why(kw: dict, why: str, tmp_path: Path, capsys) -> None:
    run = corrupted_run(tmp_path, **kw)
    out = tmp_path / "rb.json"
    assert main(["export", str(run), "--robustbench", str(out), "--threat-model", "corruptions"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not comparable" in err[0] and why in err[0], err
    assert not out.exists()


def test_export_and_compare_from_the_published_set(tmp_path: Path, capsys) -> None:
    run = corrupted_run(tmp_path)
    out = tmp_path / "rb.json"
    assert main(["export", str(run), "--robustbench", str(out), "--threat-model", "corruptions"]) == 0
    assert json.loads(out.read_text())["corruptions_acc"] == "75.31"
    board = {"commit": "abc", "fetched_at": "now", "entries": {
        "A": {"name": "a", "architecture": "WRN", "clean_acc": "90.00", "corruptions_acc": "80.00"},
        "B": {"name": "b", "architecture": "WRN", "clean_acc": "85.00", "corruptions_acc": "70.00"}}}
    from robustify.publish.hub import read_run_folder

    r = compare_corruptions(read_run_folder(run).record, result(read_run_folder(run).record.training.weights_sha256),
                            board=board)
    assert r["comparable"] and r["would_rank"] == 2 and r["of"] == 3 and r["best_overall"]["id"] == "A"
    r = compare_corruptions(make_record(), None, board=board)
    assert not r["comparable"] and "no corruption evaluation" in r["reason"] and "would_rank" not in r
