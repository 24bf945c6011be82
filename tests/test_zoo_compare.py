"""``robustify zoo compare RUN``: a run's place among RobustBench's entries for its data set, threat model and eps.

The leaderboard is RobustBench's own model_info files (the shared snapshot), served by a local HTTP server that
answers the two GitHub API requests robustify makes (the branch's commit, the folder's listing) and the raw files.
Expected ranks and best entries are computed here straight from the files."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from robustify.cli import main
from robustify.publish import robustbench

try:
    from tests.zoo_runs import make_record, make_run
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from zoo_runs import make_record, make_run

SNAPSHOT = Path(__file__).resolve().parents[2] / "shared" / "robustbench" / "model_info"
COMMIT = "78fcc9e" + "0" * 33
API = "/repos/RobustBench/robustbench"


class _GitHub(BaseHTTPRequestHandler):
    """GET {API}/commits/master, {API}/contents/model_info/DS/TM?ref=SHA and /raw/DS/TM/FILE, from the snapshot."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        body: object
        if url.path == f"{API}/commits/master":
            body = {"sha": COMMIT}
        elif url.path.startswith(f"{API}/contents/model_info/") and url.query == f"ref={COMMIT}":
            folder = SNAPSHOT / url.path[len(f"{API}/contents/model_info/"):]
            body = [{"name": p.name, "type": "file", "download_url": f"{base}/raw/{p.relative_to(SNAPSHOT)}"}
                    for p in sorted(folder.iterdir())]
        elif url.path.startswith("/raw/") and (SNAPSHOT / url.path[5:]).is_file():
            body = json.loads((SNAPSHOT / url.path[5:]).read_text())
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def github(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_GitHub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ROBUSTIFY_ROBUSTBENCH_API", f"http://127.0.0.1:{server.server_address[1]}{API}")
    monkeypatch.setenv("ROBUSTIFY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield server
    server.shutdown()
    server.server_close()


needs_snapshot = pytest.mark.skipif(not SNAPSHOT.is_dir(), reason=f"no RobustBench snapshot at {SNAPSHOT}")


def _eps(text: str) -> float:
    """The test's own reading of a model_info eps ("8/255", "0.031"), independent of robustify's."""
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


def _board(ds: str, tm: str, eps: float) -> list[dict]:
    """The snapshot's reliable entries at ``eps``, best first; RobustBench rounds some to 3 decimals ("0.031")."""
    entries = [dict(json.loads(p.read_text()), id=p.stem) for p in (SNAPSHOT / ds / tm).glob("*.json")]
    return sorted([e for e in entries if e.get("eps") and abs(_eps(e["eps"]) - eps) < 5e-4
                   and e.get("autoattack_acc") and not e.get("unreliable")], key=lambda e: -float(e["autoattack_acc"]))


@needs_snapshot
def test_rank_and_best_entries_from_the_served_leaderboard(github, tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run", arch="resnet50", clean=0.8512, aa_acc=0.4321)
    assert main(["zoo", "compare", str(run), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    board = _board("cifar10", "Linf", 8 / 255)
    rounded = {e["id"] for e in board if e["eps"] == "0.031"}  # RobustBench's spelling of 8/255 in six files
    assert {"Zhang2019Theoretically", "Cui2020Learnable_34_20", "Huang2020Self"} <= rounded
    assert r["leaderboard"]["entries"] == len(board)
    files = {p.stem: json.loads(p.read_text()) for p in (SNAPSHOT / "cifar10" / "Linf").glob("*.json")}
    assert {e["id"] for e in robustbench._ranked({"entries": files}, 8 / 255)[0]} == {e["id"] for e in board}
    assert r["comparable"] and r["leaderboard"]["commit"] == COMMIT and r["leaderboard"]["source"] == "fetched"
    assert r["rank"] == 1 + sum(float(e["autoattack_acc"]) > 43.21 for e in board) and r["of"] == len(board) + 1
    assert r["best_overall"]["id"] == board[0]["id"]
    assert r["best_without_additional_data"]["id"] == next(e["id"] for e in board if not e["additional_data"])
    same = [e for e in board if e["architecture"].replace("-", "").lower() == "resnet50"]
    assert (r["best_same_architecture"] or {}).get("id") == (same[0]["id"] if same else None)
    cache = json.loads((tmp_path / "cache" / "robustbench" / "cifar10" / "Linf.json").read_text())
    assert cache["commit"] == COMMIT and len(cache["entries"]) == len(list((SNAPSHOT / "cifar10" / "Linf").glob("*")))

    # offline: the cached board (with its commit) is used
    github.shutdown()
    github.server_close()
    assert main(["zoo", "compare", str(run)]) == 0
    text = capsys.readouterr().out
    assert f"rank {r['rank']} of {r['of']}" in text and f"commit {COMMIT[:8]}" in text and "cached" in text

    # and the card shows the same place, from the cache
    from robustify.publish.card import render_card

    card = str(render_card(make_record(arch="resnet50", clean=0.8512, aa_acc=0.4321)))
    assert "## On the RobustBench leaderboard" in card and f"rank {r['rank']} of {r['of']}" in card


@needs_snapshot
def test_not_comparable_runs_still_see_the_board(github, tmp_path: Path, capsys) -> None:
    for kw, why in [({"aa": None}, "PGD only"), ({"aa": "quick"}, "quick AutoAttack"),
                    ({"size": 224}, "other resolution")]:
        run = make_run(tmp_path / f"run-{why[:5]}", **kw)
        assert main(["zoo", "compare", str(run)]) == 0
        text = capsys.readouterr().out
        assert f"not comparable: {why}" in text and "best overall: " in text and "rank " not in text


def test_no_leaderboard_offline_without_cache_is_one_line(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("ROBUSTIFY_ROBUSTBENCH_API", "http://127.0.0.1:9/nothing")  # nothing listens on port 9
    monkeypatch.setenv("ROBUSTIFY_CACHE_DIR", str(tmp_path / "cache"))
    run = make_run(tmp_path / "run")
    assert main(["zoo", "compare", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0] and "none is cached" in err[0]
    assert not (tmp_path / "cache").exists()
    # a data set without a leaderboard needs no network at all
    run2 = make_run(tmp_path / "run2", dataset="quickstart")
    assert main(["zoo", "compare", str(run2)]) == 0
    assert "not comparable: data set 'quickstart' has no RobustBench leaderboard" in capsys.readouterr().out
    assert robustbench.card_lines(make_record(dataset="quickstart")) == []
