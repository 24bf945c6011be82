"""``robustify doctor`` against the local Hub server: the Hub answers, a private data set is open to the token and
closed without it, the token is never printed, the exit status says whether something blocks a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

try:
    from tests.hub_server import LocalHub
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from hub_server import LocalHub

DATASET = "test-user/gated-digits"


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import HfApi

    server = LocalHub(tmp_path / "hub")
    server.start()
    HfApi(endpoint=server.url, token=server.token).create_repo(DATASET, repo_type="dataset", private=True)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no token file of the machine's user
    try:
        yield server
    finally:
        server.stop()


def test_doctor_json_with_a_token(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    from robustify.cli import main as cli

    monkeypatch.setenv("HF_TOKEN", hub.token)
    code = cli(["doctor", "--json", "--output-dir", str(tmp_path), "--gated-dataset", DATASET])
    out = capsys.readouterr().out
    assert hub.token not in out  # never printed
    report = json.loads(out)
    rows = {r["check"]: r for r in report["checks"]}
    assert rows["Hub"]["status"] == "ok" and rows["Hub"]["detail"]["reachable"] is True
    assert rows["Hub token"]["detail"] == {"present": True, "source": "HF_TOKEN"}
    assert rows[f"data set {DATASET}"]["detail"]["accessible"] is True
    assert {"torch", "GPUs", "NCCL", "processes", "disk: output folder", "disk: Hub cache"} <= set(rows)
    assert rows["processes"]["detail"]["num_processes"] >= 1
    assert rows["disk: output folder"]["detail"]["free_gb"] > 0
    assert code == (1 if any(r["status"] == "fail" for r in report["checks"]) else 0) == (0 if report["ok"] else 1)


def test_doctor_without_access_fails_with_exit_1(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys):
    from robustify.cli import main as cli

    monkeypatch.delenv("HF_TOKEN", raising=False)
    code = cli(["doctor", "--output-dir", str(tmp_path), "--gated-dataset", DATASET])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(f"data set {DATASET}"))
    assert " fail " in line and "not open to this token" in line
    assert out.strip().splitlines()[-1] == "robustify doctor: something blocks a run (fail rows)"
    assert code == 1
