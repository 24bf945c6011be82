"""Recipes, overrides and the one-line errors users get for bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from robustify.config import build_config, parse_number
from robustify.errors import ConfigError, UserError


def run_cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "robustify", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


def test_fractions_and_numbers():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number("0.1") == 0.1 and parse_number(2) == 2.0 and parse_number("1e-3") == 0.001
    with pytest.raises(ConfigError, match="eps='abc'"):
        parse_number("abc", "eps")


def test_quickstart_recipe_and_overrides():
    cfg = build_config("quickstart", ["threat.eps=8/255", "method.name=free", "method.replays=8",
                                      "schedule.milestones=[0.3, 0.6]", "train.stop_after=null"])
    assert cfg.threat.eps == pytest.approx(8 / 255)
    assert cfg.method.name == "free" and cfg.method.replays == 8
    assert cfg.schedule.milestones == [0.3, 0.6] and cfg.train.stop_after is None
    assert cfg.model.name == "quickstart" and cfg.schedule.name == "slow-start-fast-decay"


@pytest.mark.parametrize("override,message", [
    ("method.name=fgsm", "method.name='fgsm' is not accepted; choose one of: natural, fgsm-rs, "),
    ("schedule.name=step", "schedule.name='step' is not accepted"),
    ("threat.eps=8", "threat.eps=8 is outside [0, 1]"),
    ("threat.norm=L0", "threat.norm='L0' is not accepted; choose one of: Linf, L2, L1"),
    ("train.epochs=0", "train.epochs=0 is not accepted; use a value > 0"),
    ("train.epochs=two", "train.epochs='two' is not accepted; use a whole number"),
    ("schedule.lrate=0.1", "unknown key 'schedule.lrate'"),
    ("method.bn_mode=frozen", "method.bn_mode='frozen' is not accepted; choose one of: train, eval"),
    ("schedule.rise_fraction=1.5", "schedule.rise_fraction=1.5 is outside [0, 1]"),
    ("nonsense", "use key=value"),
    ("train.log_with=tensorbored", "train.log_with='tensorbored' is not accepted; choose one of: aim, "),
    # out of range: each would train wrongly, crash mid-epoch or silently mean something else
    ("optim.grad_clip=-1", "optim.grad_clip=-1.0 is not accepted; use a value > 0, or null"),
    ("optim.grad_clip=0", "optim.grad_clip=0.0 is not accepted"),
    ("schedule.gamma=-0.5", "schedule.gamma=-0.5 is outside (0, 1]"),
    ("schedule.gamma=2", "schedule.gamma=2 is outside (0, 1]"),
    ("train.log_every=0", "train.log_every=0 is not accepted; use a value > 0"),
    ("train.guard_drop=-1", "train.guard_drop=-1 is outside [0, 1]"),
    ("optim.momentum=5", "optim.momentum=5 is outside [0, 1)"),
    ("optim.momentum=1", "optim.momentum=1 is outside [0, 1)"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1.0 is not accepted; use a value >= 0"),
    ("data.num_workers=-3", "data.num_workers=-3 is not accepted; use a value >= 0"),
    ("schedule.milestones=[2, -1]", "schedule.milestones=[2.0, -1.0] is not accepted; use increasing fractions"),
    ("schedule.milestones=[0.75, 0.5]", "schedule.milestones=[0.75, 0.5] is not accepted"),
    ("data.max_train_examples=0", "data.max_train_examples=0 is not accepted; use a value > 0, or null"),
    ("train.seed=-1", "train.seed=-1 is not accepted; use a whole number in [0, 2**32 - 1]"),
    ("schedule.lr=nan", "schedule.lr='nan' is not a finite number"),
    ("schedule.lr=.inf", "schedule.lr=inf is not a finite number"),
    ("schedule.lr=-0.1", "schedule.lr=-0.1 is not accepted; use a value > 0"),
    ("threat.eps=nan", "threat.eps='nan' is not a finite number"),
    ("train.guard_drop=1e400", "train.guard_drop='1e400' is not a finite number"),
    ("output_dir=", "output_dir is empty; give a value, e.g. runs/my-run"),
    ("model.name=", "model.name is empty"),
    ("train.epochs=²", "train.epochs='²' is not accepted; use a whole number"),
    ("threat.eps=8", "did you mean 8/255?"),
    ("method.alpha=2", "method.alpha=2 is outside (0, 1]; it is in [0,1] pixel units, e.g. 2/255; did you mean 2/255?"),
    # unknown keys: the closest valid key is suggested
    ("schedule.lrate=0.1", "did you mean 'schedule.lr'?"),
    ("train.lr=0.1", "did you mean 'schedule.lr'?"),
    ("epochs=3", "did you mean 'train.epochs'?"),
    ("optim.momentun=0.9", "did you mean 'optim.momentum'?"),
    ("=3", "use section.key=value"),
])
def test_bad_values_name_the_key_and_what_is_accepted(override, message):
    with pytest.raises(ConfigError) as err:
        build_config("quickstart", [override])
    assert message in str(err.value)


def test_l2_eps_may_exceed_one_and_null_switches_off():
    cfg = build_config("quickstart", ["threat.norm=L2", "threat.eps=3", "optim.grad_clip=null",
                                      "data.max_train_examples=null", "schedule.gamma=1", "optim.momentum=0"])
    assert cfg.threat.eps == 3 and cfg.optim.grad_clip is None and cfg.data.max_train_examples is None


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="recipe 'nope' not found.*quickstart"):
        build_config("nope")


def test_cli_user_error_exits_2_without_traceback():
    """The real process: exit status 2, one line on stderr, no traceback."""
    res = run_cli("finetune", "--method", "bogus")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robustify: error: method.name='bogus' is not accepted")
    assert "Traceback" not in res.stderr


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from robustify.cli import main

    for args, needle in [
        (["finetune", "--method", "bogus"], "method.name='bogus' is not accepted"),
        (["finetune", "--eps", "ten"], "threat.eps='ten' is not a number"),
        (["finetune", "--model", str(tmp_path / "missing")], "does not exist"),
        (["finetune", "--output-dir", ""], "output_dir is empty"),
        (["finetune", "--eps", "inf", "--set", "threat.norm=L2"], "threat.eps='inf' is not a finite number"),
        (["finetune", "--model", "resnet_fifty"], "is not a timm model"),
        (["finetune", "--data", "npz:" + str(tmp_path / "x.npz")], "does not exist"),
        (["finetune", "--resume"], "--resume needs --output-dir"),
        (["finetune", "--resume", "--output-dir", str(tmp_path)], "has no checkpoints to resume from"),
    ]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert lines[-1].startswith("robustify: error:") and needle in lines[-1], (args, err)


def test_help_lists_commands_and_defaults(capsys):
    from robustify.cli import main

    res = run_cli("--help")
    assert res.returncode == 0 and "finetune" in res.stdout
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--recipe", "--model", "--data", "--method", "--eps", "--epochs", "--output-dir", "--resume", "--set"):
        assert flag in out
    assert out.count("(default: quickstart when neither --model nor --data is given") == 1  # --recipe's default
    assert "quickstart: fgsm-rs" in out and "quickstart: 0.1" in out  # recipe-backed flags show the recipe's value


def test_hub_model_fails_fast_and_clearly_when_offline(tmp_path):
    """A timm name that needs the Hub must fail with a clear message (not hang ~50 s in retries)."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    res = run_cli("finetune", "--model", "resnet18.a1_in1k", "--output-dir", str(tmp_path / "run"), env=env,
                  timeout=60)
    assert res.returncode == 2, res.stderr
    assert "needs pretrained weights from the Hugging Face Hub" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def test_user_error_is_an_exception_type():
    assert issubclass(ConfigError, UserError) and UserError.exit_code == 2
