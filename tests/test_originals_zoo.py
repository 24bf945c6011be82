"""The zoo's RobustBench entries against RobustBench's own leaderboard data and the robustbench converter's table.

Every RobustBench ImageNet Linf and corruptions entry built on an architecture timm has (the converter's table,
which tests/test_originals_robustbench.py checks against robustbench 1.1.1's model zoo) has a zoo entry whose
numbers, authors and paper are RobustBench's model_info (shared/robustbench, a snapshot), labelled as imported, not
measured; ``zoo list`` says which converters are checked against original code and which entries are not on the Hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustify.cli import main
from robustify.publish import zoo
from robustify.publish.converters import robustbench as rbconv

# the snapshot beside the clone (CI and the development machines); its architecture names for timm's ResNets
SNAPSHOTS = [p / "shared" / "robustbench" / "model_info" for p in Path(__file__).resolve().parents[1:4]]
ARCHS = {"ResNet-18": "resnet18", "ResNet-50": "resnet50", "WideResNet-50-2": "wide_resnet50_2"}


def _shipped() -> dict[tuple[str, str, str], zoo.ZooEntry]:
    return {e.robustbench_entry: e for e in zoo.load_zoo([zoo.ZOO_DIRS[0]]) if e.robustbench_entry}


def test_every_convertible_entry_is_in_the_zoo() -> None:
    entries = _shipped()
    assert set(entries) == set(rbconv.ENTRIES)
    for key, e in entries.items():
        assert e.architecture == rbconv.ENTRIES[key]["arch"] and e.threat_model == key[1]
        assert e.converter == "robustbench" and e.checked_against == "robustbench 1.1.1" and e.on_hub == "no"
        assert "imported from RobustBench, not measured here" in e.numbers_source
        assert e.leaderboard and e.leaderboard.endswith(f"model_info/{'/'.join(key)}.json")
        assert e.license and e.authors and e.paper


def test_zoo_numbers_are_robustbench_model_info() -> None:
    root = next((p for p in SNAPSHOTS if p.is_dir()), None)
    if root is None:
        pytest.skip(f"no RobustBench model_info snapshot at any of {', '.join(map(str, SNAPSHOTS))}")
    entries = _shipped()
    listed = set()
    for threat in ("Linf", "corruptions"):
        for path in sorted((root / "imagenet" / threat).glob("*.json")):
            info = json.loads(path.read_text())
            if info["architecture"] in ARCHS:  # every ResNet entry of the leaderboard is converted and listed
                listed.add(("imagenet", threat, path.stem))
    assert listed == set(entries)
    for (dataset, threat, name), e in entries.items():
        info = json.loads((root / dataset / threat / f"{name}.json").read_text())
        assert ARCHS[info["architecture"]] == e.architecture
        assert e.clean_acc == float(info["clean_acc"]) and e.authors == info["authors"]
        assert info["link"] in e.paper and info["name"] in e.paper
        if threat == "Linf":
            assert (e.autoattack_acc, e.eps) == (float(info["autoattack_acc"]), info["eps"])
        else:
            assert (e.corruptions_acc, e.eps) == (float(info["corruptions_acc"]), None)


def test_zoo_list_says_what_is_checked_and_what_is_on_the_hub(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["zoo", "list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "robustbench-salman2020do-r50 (imported)" in out and "robustbench-hendrycks2020augmix (imported)" in out
    assert "16 robustbench entries (robustbench 1.1.1)" in out and "6 madrylab entries (robustness 1.2.1)" in out
    assert "not yet on the Hub as timm repos: the 16 robustbench entries" in out
    assert main(["zoo", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    r = rows["robustbench-hendrycks2020augmix"]
    assert (r["checked_against"], r["on_hub"], r["threat_model"]) == ("robustbench 1.1.1", "no", "corruptions")
    assert r["robust_acc"] == 49.33 and r["robust_attack"] == "ImageNet-C"
    assert rows["madrylab-resnet50-imagenet-linf-4"]["checked_against"] == "robustness 1.2.1"
    assert rows["timm-inception-v3-tf-adv-in1k"]["checked_against"] is None
