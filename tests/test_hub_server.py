"""The local Hub server works with the REAL ``huggingface_hub`` client (and timm), fully offline.

``huggingface_hub`` reads ``HF_ENDPOINT``/``HF_HOME``/``HF_TOKEN`` at import time, so every client-side step runs in a
fresh interpreter (``subprocess.run``) whose last stdout line is a JSON result.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

try:
    from tests.hub_server import LocalHub
except ImportError:  # tests/ is not a package: pytest's rootdir-relative import puts tests/ on sys.path
    from hub_server import LocalHub

REPO = "org/tiny-model"


@pytest.fixture
def hub(tmp_path: Path):
    with LocalHub(tmp_path / "hub_root") as server:
        yield server


def run_client(
    hub: LocalHub, code: str, home: Path, *, token: bool = True, extra_env: dict[str, str] | None = None
) -> Any:
    """Run ``code`` in a fresh interpreter pointed at ``hub``; return the JSON printed on its last stdout line."""
    dropped = ("HF_", "HUGGINGFACE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")  # proxies would hijack 127.0.0.1
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(dropped)}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        NO_PROXY="127.0.0.1,localhost",
        **(extra_env or {}),
    )
    if token:
        env["HF_TOKEN"] = hub.token
    prelude = "import json, os, sys\nfrom huggingface_hub import HfApi\napi = HfApi()\n"
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"client failed:\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_folder(path: Path, readme: str = "---\nlicense: mit\n---\n# Tiny model\n") -> dict[str, bytes]:
    """A model folder: ~2 MB binary weights (LFS) + small config/README (regular files)."""
    files = {
        "model.safetensors": hashlib.sha256(b"seed").digest() * (2_000_000 // 32) + b"\x00tail",
        "config.json": json.dumps({"architecture": "tiny", "num_classes": 10}).encode(),
        "README.md": readme.encode(),
    }
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return files


def upload(hub: LocalHub, folder: Path, home: Path, *, repo: str = REPO, create: bool = True, **kwargs: Any) -> Any:
    """create_repo (exist_ok) + upload_folder through the client; returns the commit oid or the exception name."""
    private = kwargs.pop("private", False)
    return run_client(
        hub,
        f"""
        if {create!r}:
            api.create_repo({repo!r}, exist_ok=True, private={private!r})
        try:
            out = api.upload_folder(repo_id={repo!r}, folder_path={str(folder)!r}, **{kwargs!r}).oid
        except Exception as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            out = {{"error": type(exc).__name__, "status": status}}
        print(json.dumps(out))
        """,
        home,
    )


def log_paths(hub: LocalHub, method: str) -> list[str]:
    return [path for m, path, _ in hub.requests_log if m == method]


def test_upload_folder_uses_lfs_and_downloads_match(hub: LocalHub, tmp_path: Path) -> None:
    files = make_folder(tmp_path / "model")
    result = run_client(
        hub,
        f"""
        url = api.create_repo({REPO!r})
        again = api.create_repo({REPO!r}, exist_ok=True)  # server answers 409, client swallows it
        info = api.upload_folder(repo_id={REPO!r}, folder_path={str(tmp_path / "model")!r}, commit_message="weights")
        siblings = api.model_info({REPO!r}, files_metadata=True).siblings
        print(json.dumps({{
            "url": url, "again": again, "oid": info.oid, "exists": [api.repo_exists({REPO!r}), api.repo_exists("o/x")],
            "files": api.list_repo_files({REPO!r}), "lfs": {{s.rfilename: s.lfs is not None for s in siblings}},
        }}))
        """,
        tmp_path / "home_up",
    )
    assert result["url"] == result["again"] == f"{hub.url}/{REPO}"
    assert result["exists"] == [True, False]
    assert sorted(result["files"]) == sorted([*files, ".gitattributes"])
    assert result["lfs"] == {
        ".gitattributes": False,
        "README.md": False,
        "config.json": False,
        "model.safetensors": True,
    }
    # Wire-level: one LFS batch call, one PUT of the weights, then the NDJSON commit.
    assert log_paths(hub, "POST").count(f"/{REPO}.git/info/lfs/objects/batch") == 1
    assert len([p for p in log_paths(hub, "PUT") if p.startswith("/_lfs/upload/")]) == 1
    assert f"/api/models/{REPO}/commit/main" in log_paths(hub, "POST")
    assert all("hf_test_token" not in json.dumps(entry) for entry in hub.requests_log)
    commits = hub.commits(REPO)
    assert [c.title for c in commits] == ["initial commit", "weights"] and commits[-1].id == result["oid"]
    assert commits[-1].files["model.safetensors"]["lfs"] and not commits[-1].files["config.json"]["lfs"]
    assert {k: v for k, v in hub.repo_files(REPO).items() if k != ".gitattributes"} == files

    hub.page_size = 2  # force the tree listing of snapshot_download to paginate
    paths = run_client(
        hub,
        f"""
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import EntryNotFoundError
        snap = snapshot_download({REPO!r})
        try:
            hf_hub_download({REPO!r}, "missing.bin")
            missing = "no error"
        except EntryNotFoundError as exc:
            missing = type(exc).__name__
        print(json.dumps({{"snap": snap, "config": hf_hub_download({REPO!r}, "config.json"), "missing": missing}}))
        """,
        tmp_path / "home_down",
    )
    snap = Path(paths["snap"])
    assert sorted(p.name for p in snap.iterdir()) == sorted([*files, ".gitattributes"])
    assert all((snap / name).read_bytes() == data for name, data in files.items())
    assert Path(paths["config"]).read_bytes() == files["config.json"]
    assert paths["missing"] == "RemoteEntryNotFoundError"
    assert any("cursor=" in p for p in log_paths(hub, "GET")), "tree pagination was not exercised"
    assert any(p.endswith("/resolve/main/config.json") for p in log_paths(hub, "HEAD"))


def test_second_upload_creates_new_commit(hub: LocalHub, tmp_path: Path) -> None:
    make_folder(tmp_path / "model")
    first = upload(hub, tmp_path / "model", tmp_path / "home_up")
    files = make_folder(tmp_path / "model", readme="# Tiny model, v2\n")
    second = upload(hub, tmp_path / "model", tmp_path / "home_up")
    assert first != second and [c.id for c in hub.commits(REPO)][1:] == [first, second]
    # The client asks the LFS batch API again, but the object is already there (no "actions"): no second PUT, and
    # the unchanged files are dropped from the commit thanks to the oids returned by the preupload endpoint.
    assert log_paths(hub, "POST").count(f"/{REPO}.git/info/lfs/objects/batch") == 2
    assert len([p for p in log_paths(hub, "PUT") if p.startswith("/_lfs/upload/")]) == 1
    assert hub.commits(REPO)[-1].files["model.safetensors"] == hub.commits(REPO)[-2].files["model.safetensors"]

    result = run_client(
        hub,
        f"""
        from huggingface_hub import hf_hub_download, snapshot_download
        snap = snapshot_download({REPO!r})
        old = hf_hub_download({REPO!r}, "README.md", revision={first!r})
        print(json.dumps({{"snap": snap, "old": open(old).read(), "sha": api.model_info({REPO!r}).sha}}))
        """,
        tmp_path / "home_down",
    )
    assert (Path(result["snap"]) / "README.md").read_bytes() == files["README.md"]
    assert result["old"].startswith("---\nlicense: mit") and result["sha"] == second


def test_private_repo_needs_token(hub: LocalHub, tmp_path: Path) -> None:
    make_folder(tmp_path / "model")
    assert isinstance(upload(hub, tmp_path / "model", tmp_path / "home_up", private=True), str)
    probe = f"""
        from huggingface_hub import hf_hub_download, snapshot_download
        out = {{}}
        for name, call in [("file", lambda: hf_hub_download({REPO!r}, "config.json")),
                           ("snapshot", lambda: snapshot_download({REPO!r})),
                           ("info", lambda: api.model_info({REPO!r}).private),
                           ("exists", lambda: api.repo_exists({REPO!r}))]:
            try:
                out[name] = call()
            except Exception as exc:
                out[name] = type(exc).__name__
        print(json.dumps(out))
        """
    anonymous = run_client(hub, probe, tmp_path / "home_anon", token=False)
    assert anonymous == {
        "file": "RepositoryNotFoundError",
        "snapshot": "RepositoryNotFoundError",
        "info": "RepositoryNotFoundError",
        "exists": False,
    }
    authed = run_client(hub, probe, tmp_path / "home_authed")
    assert authed["info"] is True and authed["exists"] is True
    assert Path(authed["file"]).read_bytes() == hub.repo_files(REPO)["config.json"]
    wrong = run_client(hub, probe, tmp_path / "home_wrong", token=False, extra_env={"HF_TOKEN": "hf_wrong"})
    assert set(wrong.values()) == {"HfHubHTTPError"}  # an invalid token is a 401 even for reads, like the Hub


def test_failed_commit_leaves_repo_unchanged(hub: LocalHub, tmp_path: Path) -> None:
    make_folder(tmp_path / "model")
    before = upload(hub, tmp_path / "model", tmp_path / "home_up")
    files_before = hub.repo_files(REPO)

    make_folder(tmp_path / "model", readme="# changed\n")
    hub.fail_next("commit", 500)
    failed = upload(hub, tmp_path / "model", tmp_path / "home_up", create=False)
    assert failed == {"error": "HfHubHTTPError", "status": 500}
    assert hub.commits(REPO)[-1].id == before and hub.repo_files(REPO) == files_before

    # Raw NDJSON commit mixing a valid regular file with an LFS pointer that was never uploaded: all-or-nothing.
    ghost = hashlib.sha256(b"never uploaded").hexdigest()
    lines = [
        {"key": "header", "value": {"summary": "half broken"}},
        {"key": "file", "value": {"path": "new.txt", "content": "aGVsbG8=", "encoding": "base64"}},
        {"key": "lfsFile", "value": {"path": "ghost.bin", "algo": "sha256", "oid": ghost, "size": 14}},
    ]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    for headers, status in [({}, 401), ({"Authorization": f"Bearer {hub.token}"}, 422)]:
        request = urllib.request.Request(
            f"{hub.url}/api/models/{REPO}/commit/main", data=body, method="POST", headers=headers
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == status
    assert hub.commits(REPO)[-1].id == before and hub.repo_files(REPO) == files_before

    # A transient LFS upload failure is retried by the client (http_backoff) and the upload then succeeds.
    (tmp_path / "model" / "model.safetensors").write_bytes(b"\x00new weights" * 1000)
    hub.fail_next("lfs-upload", 503)
    after = upload(hub, tmp_path / "model", tmp_path / "home_up", create=False)
    assert isinstance(after, str) and hub.commits(REPO)[-1].id == after
    assert hub.repo_files(REPO)["model.safetensors"] == b"\x00new weights" * 1000


def test_branch_upload_and_download(hub: LocalHub, tmp_path: Path) -> None:
    main_files = make_folder(tmp_path / "model")
    upload(hub, tmp_path / "model", tmp_path / "home_up")
    branch_files = make_folder(tmp_path / "model", readme="# branch readme\n")
    result = run_client(
        hub,
        f"""
        from huggingface_hub.errors import RevisionNotFoundError
        api.create_branch({REPO!r}, branch="exp")
        api.create_branch({REPO!r}, branch="exp", exist_ok=True)
        oid = api.upload_folder(repo_id={REPO!r}, folder_path={str(tmp_path / "model")!r}, revision="exp").oid
        try:
            api.upload_folder(repo_id={REPO!r}, folder_path={str(tmp_path / "model")!r}, revision="nope")
            missing = "no error"
        except RevisionNotFoundError as exc:
            missing = type(exc).__name__
        refs = {{b.name: b.target_commit for b in api.list_repo_refs({REPO!r}).branches}}
        # Dataset repos use the /datasets/ URL prefix everywhere; upload_file commits a single (bytes) file.
        from huggingface_hub import hf_hub_download
        api.create_repo("org/data", repo_type="dataset")
        api.upload_file(path_or_fileobj=b"a,b\\n1,2\\n", path_in_repo="data/train.csv", repo_id="org/data",
                        repo_type="dataset")
        csv = open(hf_hub_download("org/data", "data/train.csv", repo_type="dataset")).read()
        print(json.dumps({{"oid": oid, "refs": refs, "missing": missing, "csv": csv,
                          "data_files": api.list_repo_files("org/data", repo_type="dataset")}}))
        """,
        tmp_path / "home_up",
    )
    assert result["refs"] == {"main": hub.commits(REPO)[-1].id, "exp": result["oid"]}
    assert result["missing"] == "RevisionNotFoundError"
    assert result["csv"] == "a,b\n1,2\n" and result["data_files"] == [".gitattributes", "data/train.csv"]
    assert hub.repo_files("org/data", repo_type="dataset")["data/train.csv"] == b"a,b\n1,2\n"
    downloaded = run_client(
        hub,
        f"""
        from huggingface_hub import hf_hub_download
        paths = [hf_hub_download({REPO!r}, "README.md", revision=rev) for rev in ("exp", "main")]
        print(json.dumps([open(p).read() for p in paths]))
        """,
        tmp_path / "home_down",
    )
    assert downloaded == [branch_files["README.md"].decode(), main_files["README.md"].decode()]


def test_timm_round_trip(hub: LocalHub, tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    repo, model_dir = "org/timm-test-resnet", tmp_path / "timm_model"
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10).eval()
    timm.models.save_for_hf(model, str(model_dir), safe_serialization=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1234))
    torch.save(x, tmp_path / "input.pt")
    with torch.no_grad():
        expected = model(x)

    upload(hub, model_dir, tmp_path / "home_up", repo=repo)
    assert hub.commits(repo)[-1].files["model.safetensors"]["lfs"]
    run_client(
        hub,
        f"""
        import timm, torch
        model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()
        with torch.no_grad():
            x = torch.load({str(tmp_path / "input.pt")!r}, weights_only=True)
            torch.save(model(x), {str(tmp_path / "logits.pt")!r})
        print(json.dumps("ok"))
        """,
        tmp_path / "home_down",
    )
    assert torch.equal(torch.load(tmp_path / "logits.pt", weights_only=True), expected)
    assert any(p.endswith("/resolve/main/model.safetensors") for p in log_paths(hub, "GET"))
