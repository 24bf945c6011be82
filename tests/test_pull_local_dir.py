"""``robustify pull ZOO_NAME --local-dir DIR`` writes the model into DIR (README shows it), never silently into the
zoo cache; a DIR that holds something else, and a ``--revision`` the entry pins itself, are refused in one line.

Against the local Hub server of tests/test_import.py (its ``served`` fixture: a MadryLab-layout checkpoint and its
zoo entry), with the real huggingface_hub client.
"""

from __future__ import annotations

from pathlib import Path

try:
    from tests.test_import import assert_one_line_error, same_logits, served  # noqa: F401 - served is a fixture
    from tests.zoo_runs import cli
except ImportError:  # run from tests/
    from test_import import assert_one_line_error, same_logits, served  # noqa: F401
    from zoo_runs import cli

NAME = "madry-test-resnet-linf-4"


def test_pull_zoo_name_honours_local_dir(served: dict, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    env = dict(served["env"], ROBUSTIFY_ZOO_DIR=str(tmp_path / "zoo-cache"))
    target = tmp_path / "models" / NAME
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    first, again, refused, pinned = cli(
        env,
        ["pull", NAME, "--trust-pickle", "--local-dir", str(target)],
        ["pull", NAME, "--trust-pickle", "--local-dir", str(target)],  # there already: checked, not downloaded
        ["pull", NAME, "--trust-pickle", "--local-dir", str(busy)],
        ["pull", NAME, "--trust-pickle", "--revision", "v2", "--local-dir", str(tmp_path / "other")],
    )
    assert first[0] == 0, first[2]
    assert f"loads with timm from {target}" in first[1] and f"--model {target}" in first[1]
    assert same_logits(target, served["source"]) < 1e-5
    assert not (tmp_path / "zoo-cache").exists()  # nothing went to the zoo cache instead
    assert again[0] == 0 and "already downloaded" in again[1], again[2]
    assert_one_line_error(refused[0], refused[2], "--local-dir", "is not empty and holds no model")
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"] and (busy / "notes.txt").read_text() == "mine"
    assert_one_line_error(pinned[0], pinned[2], "--revision 'v2' is not accepted with a zoo name")
    assert not (tmp_path / "other").exists()
