"""``robustify zoo add RUN --repo-id ORG/NAME``: the zoo entry is rendered from the run's record and written only
after the card and config.json published on the (local) Hub are checked to match the run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

try:
    from tests.hub_server import LocalHub
    from tests.zoo_runs import cli, make_run
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from hub_server import LocalHub
    from zoo_runs import cli, make_run

REPO = "someone/resnet50-cifar10-linf"


def _env(hub: LocalHub, tmp: Path) -> dict[str, str]:
    dropped = ("HF_", "HUGGINGFACE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(dropped)}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost", TQDM_DISABLE="1",
               HF_TOKEN=hub.token, ROBUSTIFY_CACHE_DIR=str(tmp / "cache"))
    return env


def test_zoo_add_checks_the_published_card(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    stale = make_run(tmp_path / "stale", clean=0.80)  # another run: its card would not match what is published
    twin = make_run(tmp_path / "twin")  # the same record and card, other weights: only the weights' hash differs
    zoo = tmp_path / "zoo"
    with LocalHub(tmp_path / "hub_root") as hub:
        env = _env(hub, tmp_path)
        push, added, again, mismatch, other_weights, missing = cli(
            env,
            ["push", str(run), "--repo-id", REPO],
            ["zoo", "add", str(run), "--repo-id", REPO, "--zoo-dir", str(zoo), "--recipe", "quickstart"],
            ["zoo", "add", str(run), "--repo-id", REPO, "--zoo-dir", str(zoo)],  # exists: refused without --force
            ["zoo", "add", str(stale), "--repo-id", REPO, "--zoo-dir", str(zoo), "--name", "stale"],
            ["zoo", "add", str(twin), "--repo-id", REPO, "--zoo-dir", str(zoo), "--name", "twin"],
            ["zoo", "add", str(run), "--repo-id", "someone/never-pushed", "--zoo-dir", str(zoo), "--name", "x"],
        )
        head = hub.commits(REPO)[-1].id
        published = hub.repo_files(REPO)
    assert push[0] == 0, push[2]
    assert "robustbench.json" in published  # evaluated on RobustBench's protocol: model_info published beside it
    info = json.loads(published["robustbench.json"])
    assert info["autoattack_acc"] == "43.21" and info["link"] == f"https://huggingface.co/{REPO}"

    assert added[0] == 0, added[2]
    path = zoo / "resnet50-cifar10-linf.yaml"
    assert str(path) in added[1] and "checked" in added[1] and head[:8] in added[1]
    data = yaml.safe_load(path.read_text())
    assert data["hub_id"] == REPO and data["clean_acc"] == pytest.approx(85.12)
    assert data["autoattack_acc"] == pytest.approx(43.21) and data["eps"] == "8/255" and data["recipe"] == "quickstart"
    assert head in path.read_text()  # the header names the commit it was checked against
    from robustify.publish.zoo import load_file

    assert load_file(path).hub_id == REPO

    for res, words in [(again, ("already exists", "--force")), (mismatch, ("does not match", "clean_acc")),
                       (other_weights, ("does not match", "model.safetensors has sha256")),
                       (missing, ("not found", "push the run first"))]:
        assert res[0] == 2, res
        assert len(res[2].strip().splitlines()) == 1 and all(w in res[2] for w in words), res[2]
    assert sorted(p.name for p in zoo.iterdir()) == [path.name]  # nothing else written
