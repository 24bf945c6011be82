"""Misattributed causes and late failures, fixed: each mistake is one line naming the real cause, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from robustify.cli import main
from robustify.errors import UserError
from robustify.models import create_backbone
from tests.test_config import run_cli


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robustify: error: "), err
    assert "Traceback" not in err
    return lines[0]


EVAL = ["eval", "quickstart", "--data", "quickstart", "--eps", "0.1", "--attack", "clean,pgd", "--no-curve"]


@pytest.mark.parametrize("extra,needle", [
    (["--output", "{tmp}"], "is a folder; give a file name inside it"),
    (["--output", "{tmp}/a_file/eval.json"], "is a file, not a folder"),
    (["--plot", "{tmp}"], "--plot"),
    (["--n-examples", "0"], "--n-examples 0 is not accepted; use 1 or more"),
    (["--n-examples", "-5"], "--n-examples -5 is not accepted"),
    (["--eps", "inf"], "--eps='inf' is not a finite number"),
])
def test_eval_refuses_before_any_attack_runs(tmp_path: Path, capsys, extra: list[str], needle: str):
    (tmp_path / "a_file").write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([*EVAL, *[a.replace("{tmp}", str(tmp_path)) for a in extra]]) == 2
    assert needle in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_eval_of_a_missing_path_says_it_does_not_exist(tmp_path: Path, capsys):
    missing = tmp_path / "runs" / "nope"
    assert main(["eval", str(missing)]) == 2
    line = one_error_line(capsys)
    assert "does not exist" in line and str(missing) in line and "--data is needed" not in line


def test_unknown_pretrained_tag_lists_the_valid_tags(tmp_path: Path, capsys):
    """A typo in the tag is the user's, not an unreachable Hub: it is caught offline, from timm's own list."""
    assert main(["finetune", "--model", "resnet50.a1_in1kk", "--output-dir", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert "timm has no pretrained tag 'a1_in1kk' for resnet50" in line and "a1_in1k," in line
    assert "Hub" not in line
    assert not (tmp_path / "run").exists()


def _save(model: torch.nn.Module, path: Path, prefix: str = "") -> Path:
    save_file({prefix + k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_checkpoint_head_size_is_read_from_the_file(tmp_path: Path):
    """A 10-class test_resnet checkpoint loads into test_resnet (default head: 1000), weights and all."""
    torch.manual_seed(0)
    src = timm.create_model("test_resnet", num_classes=10)
    ckpt = _save(src, tmp_path / "ten.safetensors")
    model = create_backbone("test_resnet", checkpoint=str(ckpt))
    assert model.num_classes == 10
    for (k, a), b in zip(src.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # robustify's own checkpoints (RobustModel: keys under backbone.) load too
    model = create_backbone("test_resnet", checkpoint=str(_save(src, tmp_path / "rm.safetensors", "backbone.")))
    assert torch.equal(model.fc.weight, src.fc.weight)


@pytest.mark.parametrize("make,needle", [
    ("other_arch", "does not fit test_resnet: "),
    ("truncated", "is not a readable safetensors file (truncated or corrupt"),
    ("pickle", "only .safetensors weights are loaded (pickle files can run code when loaded; convert yours with "
               "safetensors.torch.save_file, or pass --trust-pickle"),
    ("missing", "does not exist"),
])
def test_bad_checkpoints_are_one_line(tmp_path: Path, make: str, needle: str):
    good = _save(timm.create_model("test_resnet", num_classes=10), tmp_path / "good.safetensors")
    path = {"other_arch": lambda: _save(timm.create_model("test_vit", num_classes=10), tmp_path / "vit.safetensors"),
            "truncated": lambda: (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:5000]) and
            tmp_path / "cut.safetensors",
            "pickle": lambda: torch.save({}, tmp_path / "w.pth") or tmp_path / "w.pth",
            "missing": lambda: tmp_path / "nope.safetensors"}[make]()
    with pytest.raises(UserError) as err:
        create_backbone("test_resnet", checkpoint=str(path))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_trusted_pickle_checkpoint_loads_through_the_restricted_unpickler(tmp_path: Path, capsys):
    src = timm.create_model("test_resnet", num_classes=10)
    torch.save({"epoch": 3, "state_dict": src.state_dict()}, tmp_path / "w.pth")
    model = create_backbone("test_resnet", checkpoint=str(tmp_path / "w.pth"), trust_pickle=True)
    assert model.num_classes == 10 and torch.equal(model.fc.weight, src.fc.weight)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled object, not weights: still refused
    with pytest.raises(UserError, match="cannot be read as PyTorch weights"):
        create_backbone("test_resnet", checkpoint=str(tmp_path / "module.pth"), trust_pickle=True)
    assert main(["finetune", "--set", f"model.checkpoint={tmp_path / 'w.pth'}", "--output-dir",
                 str(tmp_path / "run")]) == 2  # the CLI without --trust-pickle
    assert "pass --trust-pickle" in one_error_line(capsys) and not (tmp_path / "run").exists()


def test_pull_of_a_missing_repo_offline_is_one_line(tmp_path: Path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    res = run_cli("pull", "someone/missing-model", env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr  # no retry warnings
    assert "unreachable and the repo is not in the local cache" in lines[0] and "127.0.0.1:9" in lines[0]


def test_user_error_messages_are_printed_on_one_line(capsys, monkeypatch):
    """Even a message with a newline inside (from a library) is printed as one line."""
    import robustify.cli as cli

    def boom(args):
        raise UserError("first part\nsecond part")

    monkeypatch.setattr(cli, "_run_zoo_list", boom)
    assert main(["zoo", "list"]) == 2
    assert one_error_line(capsys) == "robustify: error: first part second part"
