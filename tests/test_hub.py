"""Publishing and pulling through the real ``huggingface_hub`` client against a local Hub server, offline.

``huggingface_hub`` reads ``HF_ENDPOINT``/``HF_HOME``/``HF_TOKEN`` at import time, so every push and pull runs the
real command in a fresh interpreter (``python -m robustify ...``), which also checks the exit codes and that the
token never shows up in what the command prints. Refusals that happen before any network call run in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from robustify.cli import main
from robustify.publish import public, runrecord
from robustify.publish.card import render_card
from robustify.publish.runrecord import RunRecord

try:
    from tests.hub_server import LocalHub
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from hub_server import LocalHub

REPO = "robustify/quickstart-digits-test-resnet"
PUSHED = {".gitattributes", "README.md", "model.safetensors", "config.json", "metrics.json", "recipe.yaml",
          "history.json", "history.png"}


def _env(hub: LocalHub, home: Path, token: bool = True) -> dict[str, str]:
    dropped = ("HF_", "HUGGINGFACE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")  # proxies would hijack 127.0.0.1
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(dropped)}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_UPDATE_CHECK="1", NO_PROXY="127.0.0.1,localhost",
               TQDM_DISABLE="1", COLUMNS="200")
    if token:
        env["HF_TOKEN"] = hub.token
    return env


def robustify_cli(hub: LocalHub, home: Path, *args: str, token: bool = True) -> subprocess.CompletedProcess:
    """``python -m robustify ARGS`` against ``hub``; the token must never appear in what it prints."""
    proc = subprocess.run([sys.executable, "-m", "robustify", *args], env=_env(hub, home, token), capture_output=True,
                          text=True, timeout=180)
    assert hub.token not in proc.stdout + proc.stderr
    return proc


def assert_no_token(token: str, *roots: Path, allow: tuple[Path, ...] = ()) -> None:
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and p not in allow:
                assert token.encode() not in p.read_bytes(), f"token written to {p}"


def copy_run(src: Path, dst: Path, checkpoints: bool = False) -> Path:
    shutil.copytree(src, dst, ignore=None if checkpoints else shutil.ignore_patterns("checkpoints"))
    return dst


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    with LocalHub(tmp_path_factory.mktemp("hub_root")) as server:
        yield server


@pytest.fixture(scope="module")
def pushed(hub: LocalHub, quickstart_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The quickstart run (checkpoints included, which must stay local) pushed once to REPO."""
    tmp = tmp_path_factory.mktemp("pushed")
    run = copy_run(quickstart_run, tmp / "run", checkpoints=True)
    proc = robustify_cli(hub, tmp / "home", "push", str(run), "--repo-id", REPO)
    return {"proc": proc, "run": run, "home": tmp / "home"}


# ------------------------------------------------------------------------------------------------- push
def test_push_publishes_the_run_in_one_commit(pushed: dict, hub: LocalHub, tmp_path: Path) -> None:
    proc, run = pushed["proc"], pushed["run"]
    assert proc.returncode == 0, proc.stderr
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in proc.stdout
    files = hub.repo_files(REPO)
    assert set(files) == PUSHED  # no checkpoints/, no stale local README
    assert [c.title for c in hub.commits(REPO)][-1].startswith("robustify push")
    assert len(hub.commits(REPO)) == 2  # the initial commit + one commit with everything
    assert files["model.safetensors"] == (run / "model.safetensors").read_bytes()
    assert str(run) not in files["recipe.yaml"].decode()  # the author's paths stay home

    readme = tmp_path / "README.md"
    readme.write_bytes(files["README.md"])
    card = ModelCard.load(readme)
    data = card.data.to_dict()
    metrics = json.loads(files["metrics.json"])  # what was published
    local = json.loads((run / "metrics.json").read_text())
    # the recipe leaves with local paths reduced, so the published record names the published recipe and is
    # sealed again; everything else is the local record
    changed = {runrecord.RECIPE_KEY, runrecord.SEAL_KEY}
    kept = {k: v for k, v in metrics.items() if k not in changed}
    assert kept == {k: v for k, v in local.items() if k not in changed}
    assert metrics[runrecord.RECIPE_KEY] == hashlib.sha256(files["recipe.yaml"]).hexdigest()
    runrecord.check_seal(json.loads(files["config.json"]), metrics, "the published record", "push again")
    after = metrics["after"]
    assert data["library_name"] == "timm" and data["pipeline_tag"] == "image-classification"
    assert data["license"] == "cc-by-4.0"  # inherited from the quickstart backbone
    assert {"adversarial-robustness", "robustify", "linf-robust"} <= set(data["tags"])
    assert "base_model" not in data and "datasets" not in data  # the bundled backbone and digits have no Hub ids
    results = {r.metric_args.get("attack", "clean"): r for r in card.data.eval_results}
    assert results["clean"].metric_value == after["clean_acc"]
    pgd = results["pgd"]
    assert pgd.metric_value == after["pgd_acc"] and pgd.metric_config == "Linf, eps=0.1, 32x32"
    assert pgd.metric_name == "PGD-10 x1 (ce) robust accuracy (Linf, eps=0.1, 32x32, n=500)"
    assert {k: pgd.metric_args[k] for k in ("attack", "threat_model", "eps", "steps", "restarts", "n_examples",
                                            "precision", "input_size")} == {
        "attack": "pgd", "threat_model": "Linf", "eps": 0.1, "steps": 10, "restarts": 1, "n_examples": 500,
        "precision": "fp32", "input_size": [3, 32, 32]}
    rb = data["robustbench"]
    assert rb["threat_model"] == "Linf" and rb["eps"] == "0.1" and rb["architecture"] == "test_resnet"
    assert rb["clean_acc"] == round(100 * after["clean_acc"], 2) and rb["pgd_acc"] == round(100 * after["pgd_acc"], 2)
    assert rb["additional_data"] is True and rb["resolution"] == "32x32" and "autoattack_acc" not in rb
    assert f'"hf-hub:{REPO}"' in card.text and "![" in card.text and "history.png" in card.text


def test_pull_then_plain_timm_gives_identical_logits(pushed: dict, hub: LocalHub, tmp_path: Path) -> None:
    assert pushed["proc"].returncode == 0
    home = tmp_path / "fresh_home"
    proc = robustify_cli(hub, home, "pull", REPO)
    assert proc.returncode == 0, proc.stderr
    assert "loads with timm: test_resnet, 10 classes" in proc.stdout
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in proc.stdout
    assert "Linf eps=0.1" in proc.stdout  # the card's results, read back
    snapshots = list((home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / "model.safetensors").is_file()

    # plain timm, in a fresh interpreter and a fresh cache, with robustify made unimportable
    from safetensors.torch import load_file, save_file

    x = torch.rand(4, 3, 32, 32)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["robustify"] = None  # any import of robustify fails
        import timm, torch
        from safetensors.torch import load_file, save_file
        torch.set_num_threads(1)
        model = timm.create_model("hf-hub:{REPO}", pretrained=True).eval()
        with torch.no_grad():
            logits = model(load_file({str(tmp_path / "x.safetensors")!r})["x"])
        save_file({{"logits": logits}}, {str(tmp_path / "logits.safetensors")!r})
    """)
    plain = subprocess.run([sys.executable, "-c", script], env=_env(hub, tmp_path / "timm_home"),
                           capture_output=True, text=True, timeout=180)
    assert plain.returncode == 0, plain.stderr
    import timm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = timm.create_model(f"local-dir:{pushed['run']}", pretrained=True).eval()
        with torch.no_grad():
            expected = local(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(load_file(str(tmp_path / "logits.safetensors"))["logits"], expected)
    assert_no_token(hub.token, home, tmp_path / "timm_home")


def test_second_push_replaces_the_card(pushed: dict, hub: LocalHub, tmp_path: Path) -> None:
    assert pushed["proc"].returncode == 0
    before_readme, n_commits = hub.repo_files(REPO)["README.md"], len(hub.commits(REPO))
    run = copy_run(pushed["run"], tmp_path / "run")
    shutil.copy(run / "history.png", run / "eps_curve.png")  # as the evaluation adds one
    _write_eval(run, {"note": "written by robustify eval"})
    proc = robustify_cli(hub, tmp_path / "home", "push", str(run), "--repo-id", REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"pushed {REPO} (main) in one commit")  # not "created"
    again = robustify_cli(hub, tmp_path / "home", "push", str(run), "--repo-id", REPO)
    assert again.returncode == 0 and again.stdout.startswith("nothing to push")
    files = hub.repo_files(REPO)
    assert set(files) == PUSHED | {"eps_curve.png", "eval.json"}
    assert len(hub.commits(REPO)) == n_commits + 1
    assert files["README.md"] != before_readme and b"(eps_curve.png)" in files["README.md"]
    assert b"eps_curve.png" not in before_readme


def _write_eval(run: Path, report: dict) -> None:
    """An eval.json as ``robustify eval`` leaves it: named (sha256) by the run's sealed record, so push publishes it."""
    import hashlib

    (run / "eval.json").write_text(json.dumps(report))
    record = RunRecord.read(run)
    record.eval_sha256 = hashlib.sha256((run / "eval.json").read_bytes()).hexdigest()
    record.write(run)


def test_failed_upload_leaves_the_remote_as_it_was(pushed: dict, hub: LocalHub, tmp_path: Path) -> None:
    assert pushed["proc"].returncode == 0
    files, commits = hub.repo_files(REPO), [c.id for c in hub.commits(REPO)]
    run = copy_run(pushed["run"], tmp_path / "run")
    _write_eval(run, {"note": "changed"})  # a push that would change the repo
    hub.fail_next("commit", status=500)  # after the weights went up through LFS, the commit itself fails
    proc = robustify_cli(hub, tmp_path / "home", "push", str(run), "--repo-id", REPO)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "failed" in proc.stderr and f"left unchanged: main is still at commit {commits[-1][:8]}" in proc.stderr
    assert hub.repo_files(REPO) == files and [c.id for c in hub.commits(REPO)] == commits


def test_token_from_login_private_repo_and_branch(quickstart_run: Path, hub: LocalHub, tmp_path: Path) -> None:
    """The token as 'hf auth login' stores it, a private repo, a branch; the token is never printed or written."""
    repo = "robustify/private-branch"
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text(hub.token)  # what 'hf auth login' writes
    run = copy_run(quickstart_run, tmp_path / "run")
    proc = robustify_cli(hub, home, "push", str(run), "--repo-id", repo, "--private", "--revision", "dev",
                         token=False)
    assert proc.returncode == 0, proc.stderr
    assert "README.md" in hub.repo_files(repo, "dev") and set(hub.repo_files(repo, "main")) == {".gitattributes"}
    with pytest.raises(urllib.error.HTTPError) as anonymous:  # private: hidden from anonymous users
        urllib.request.urlopen(f"{hub.url}/api/models/{repo}", timeout=10)
    assert anonymous.value.code == 401
    pulled = robustify_cli(hub, home, "pull", repo, "--revision", "dev", "--local-dir", str(tmp_path / "dl"),
                           token=False)
    assert pulled.returncode == 0, pulled.stderr
    assert f'"hf-hub:{repo}@dev"' in pulled.stdout and (tmp_path / "dl" / "model.safetensors").is_file()
    assert_no_token(hub.token, home, run, tmp_path / "dl", allow=(home / "token",))
    assert all(hub.token not in json.dumps(entry) for entry in hub.requests_log)
    for content in hub.repo_files(repo, "dev").values():
        assert hub.token.encode() not in content


def test_push_without_token_is_refused(quickstart_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    assert main(["push", str(quickstart_run), "--repo-id", "robustify/no-token"]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "HF_TOKEN" in err and "hf auth login" in err


# ------------------------------------------------------------------------------------------ nothing local leaks
LEAK_RUN = ["data.max_train_examples=128", "train.epochs=1", "eval.n_examples=32", "eval.pgd_steps=2",
            "train.probe_size=32", "train.probe_steps=2", "data.batch_size=64"]


def test_a_pushed_run_from_local_specs_holds_no_local_trace(hub: LocalHub, tmp_path: Path) -> None:
    """Trained from local-dir: and npz: specs under a path with a recognisable user name, evaluated on it, pushed,
    downloaded back: no file mentions the path, the user, the host or the token."""
    import getpass
    import socket

    from robustify.config import build_config
    from robustify.data import QUICKSTART_DIR
    from robustify.models import ALIASES
    from robustify.train.trainer import finetune

    home = tmp_path / "alice-home"
    shutil.copytree(ALIASES["quickstart"], home / "models" / "backbone")
    (home / "data").mkdir(parents=True)
    shutil.copy(QUICKSTART_DIR / "digits.npz", home / "data" / "digits.npz")
    run = home / "runs" / "digits"
    finetune(build_config("quickstart", LEAK_RUN + [f"model.name=local-dir:{home / 'models' / 'backbone'}",
                                                    f"data.name=npz:{home / 'data' / 'digits.npz'}",
                                                    f"output_dir={run}"]))
    assert main(["eval", str(run), "--preset", "quick", "--attack", "clean,pgd", "--n-examples", "16",
                 "--no-checks"]) == 0
    repo = "alice/digits"
    proc = robustify_cli(hub, tmp_path / "hf", "push", str(run), "--repo-id", repo)
    assert proc.returncode == 0, proc.stderr
    pulled = robustify_cli(hub, tmp_path / "hf", "pull", repo, "--local-dir", str(tmp_path / "dl"))
    assert pulled.returncode == 0, pulled.stderr
    names = set(hub.repo_files(repo)) - {".gitattributes"}
    assert {"README.md", "config.json", "metrics.json", "recipe.yaml", "eval.json", "model.safetensors"} <= names
    user = getpass.getuser()
    host = socket.gethostname()
    for name in names:
        content = (tmp_path / "dl" / name).read_bytes()
        for needle in (str(home), str(tmp_path), "alice-home", str(Path.home()) + "/", hub.token):
            assert needle.encode() not in content, (name, needle)
        if name.endswith((".json", ".yaml", ".md")):
            text = content.decode()
            assert "alice" not in text.replace("alice/digits", ""), name  # the repo id is the only "alice"
            assert not re.search(rf"(?<![\w-]){re.escape(host)}(?![\w-])", text), (name, host)
            assert not re.search(rf"[/\\\\]{re.escape(user)}\b|\b{re.escape(user)}@", text), (name, user)
            assert not public.local_traces(text), name
    config = json.loads((tmp_path / "dl" / "config.json").read_text())["robustness"]
    assert config["base_model"] == "test_resnet" and config["dataset"] == "local npz data set (digits.npz)"
    assert json.loads((tmp_path / "dl" / "eval.json").read_text())["subset"]["data"] == config["dataset"]
    assert "npz:digits.npz" in (tmp_path / "dl" / "recipe.yaml").read_text()


def test_push_refuses_a_file_that_still_holds_a_local_path(quickstart_run: Path, hub: LocalHub,
                                                           tmp_path: Path) -> None:
    from PIL import Image, PngImagePlugin

    run = copy_run(quickstart_run, tmp_path / "run")
    history = json.loads((run / "history.json").read_text())
    history[0]["note"] = f"resumed from {run}/checkpoints/epoch_001"  # free text: redacted on the way out
    (run / "history.json").write_text(json.dumps(history))
    info = PngImagePlugin.PngInfo()
    info.add_text("Source", f"{run}/make_plot.py")  # a plot of the user's is uploaded as it is: the scan must catch
    with Image.open(run / "history.png") as im:  # this (history.png itself is drawn again from the record)
        im.save(run / "extra.png", pnginfo=info)
    proc = robustify_cli(hub, tmp_path / "home", "push", str(run), "--repo-id", "robustify/leaky")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "refusing to push: extra.png would publish a local path" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(urllib.error.HTTPError):  # nothing was created
        urllib.request.urlopen(f"{hub.url}/api/models/robustify/leaky", timeout=10)


# ------------------------------------------------------------------------------------------------- pull
@pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # httpx, inside the in-process client
def test_pull_refuses_pickle_weights_unless_trusted(quickstart_run: Path, hub: LocalHub, tmp_path: Path) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi
    from safetensors.torch import load_file

    repo = "someone/pickled"
    weights = tmp_path / "pytorch_model.bin"
    torch.save(load_file(str(quickstart_run / "model.safetensors")), weights)
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo(repo)
    api.create_commit(repo, [CommitOperationAdd("config.json", str(quickstart_run / "config.json")),
                             CommitOperationAdd("pytorch_model.bin", str(weights))], commit_message="pickle")
    home = tmp_path / "home"
    refused = robustify_cli(hub, home, "pull", repo)
    assert refused.returncode == 2 and "pickle" in refused.stderr and "--trust-pickle" in refused.stderr
    assert not list(home.rglob("*.bin"))  # nothing was downloaded
    trusted = robustify_cli(hub, home, "pull", repo, "--trust-pickle")
    assert trusted.returncode == 0, trusted.stderr
    assert "loads with timm: test_resnet" in trusted.stdout


# ------------------------------------------------------------------------------- refusals (no network)
def test_push_refuses_a_run_without_evaluation_results(quickstart_run: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(quickstart_run, tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["after"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["push", str(run), "--repo-id", "robustify/x"]) == 2
    err = capsys.readouterr().err
    assert "no evaluation results" in err and len(err.strip().splitlines()) == 1


def test_push_refuses_weights_that_do_not_load(quickstart_run: Path, tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    run = copy_run(quickstart_run, tmp_path / "run")
    state = load_file(str(run / "model.safetensors"))
    state.pop(next(k for k in state if k.endswith("conv1.0.weight")))  # a missing tensor
    save_file(state, str(run / "model.safetensors"))
    assert main(["push", str(run), "--repo-id", "robustify/x"]) == 2
    assert "do not load with timm" in capsys.readouterr().err
    (run / "model.safetensors").write_bytes(b"not safetensors")  # a corrupt file
    assert main(["push", str(run), "--repo-id", "robustify/x"]) == 2
    assert "do not load with timm" in capsys.readouterr().err


def test_push_refuses_unfinished_folders_and_bad_repo_ids(quickstart_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["push", str(tmp_path / "missing"), "--repo-id", "robustify/x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    assert main(["push", str(unfinished), "--repo-id", "robustify/x"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["push", str(quickstart_run), "--repo-id", "no-namespace/"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- card
def _example(evaluated: bool = False) -> RunRecord:
    """A run's robustness block and metrics; ``evaluated``: "after" as ``robustify eval`` rewrites it."""
    pgd = {"norm": "Linf", "eps": 8 / 255, "steps": 20, "restarts": 2, "loss": "ce", "alpha": 2 / 255}
    after = {"clean_acc": 0.83, "pgd_acc": 0.46, "pgd": pgd, "n_examples": 1000, "split": "test"}
    if evaluated:
        after |= {"fgsm_acc": 0.55, "autoattack_acc": 0.43, "robust_acc": 0.42, "autoattack_version": "standard",
                  "autoattack": {"package": "pyautoattack 0.2", "version": "standard",
                                 "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"], "per_attack": {}, "settings": {}},
                  "checks": {"passed": True, "verdict": "No sign of gradient masking: every check passed."}}
    metrics = {"before": {"clean_acc": 0.95, "pgd_acc": 0.0, "pgd": pgd, "n_examples": 1000}, "after": after,
               "history": [], "selected_epoch": 5,
               "cost": {"wall_seconds": 12.5, "epochs": 5, "optimizer_steps": 100, "example_passes": 12800,
                        "passes_per_batch": 2, "hardware": {"device": "cuda: H100"}, "world_size": 1}}
    robustness = {"name": "resnet18-cifar10", "threat_model": {"norm": "Linf", "eps": 8 / 255},
                  "method": {"name": "free", "alpha": 8 / 255, "replays": 4},
                  "schedule": {"name": "slow-start-fast-decay", "lr": 0.1}, "base_model": "resnet18.a1_in1k",
                  "dataset": "cifar10", "eval_split": "test", "architecture": "resnet18", "input_size": [3, 32, 32],
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "epochs": 5, "batch_size": 128,
                  "optimizer": "sgd"}
    return RunRecord.from_dicts(robustness, metrics)  # an older run folder's blocks, read through the record


def test_card_parses_back_with_its_results(tmp_path: Path) -> None:
    record = _example(evaluated=True)
    evaluation = {"eps_curve": {"attack": {"name": "pgd", "steps": 20, "loss": "ce"},
                                "points": [{"eps": 0.0, "acc": 0.83}, {"eps": 8 / 255, "acc": 0.46},
                                           {"eps": 16 / 255, "acc": 0.12}]}}
    card = render_card(record, "apache-2.0", repo_id="org/robust-r18", files=["eps_curve.png"],
                       evaluation=evaluation)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data.to_dict()
    assert data["base_model"] == "timm/resnet18.a1_in1k" and data["datasets"] == ["uoft-cs/cifar10"]
    results = {r.metric_args.get("attack", "clean"): r for r in loaded.data.eval_results}
    assert {k: r.metric_value for k, r in results.items()} == {
        "clean": 0.83, "fgsm": 0.55, "pgd": 0.46, "autoattack": 0.43, "every attack above, per example": 0.42}
    aa = results["autoattack"]
    assert aa.metric_config == "Linf, eps=8/255, 32x32" and aa.metric_name.startswith("AutoAttack (standard)")
    assert aa.metric_args["version"] == "standard" and aa.metric_args["n_examples"] == 1000
    assert results["pgd"].metric_args["restarts"] == 2 and results["pgd"].metric_args["steps"] == 20
    assert data["robustbench"]["eps"] == "8/255" and data["robustbench"]["autoattack_acc"] == 43.0
    text = loaded.text
    assert "shafahi2019free" in text and "jeddi2020simple" in text and "croce2020reliable" in text
    assert "(eps_curve.png)" in text and '"hf-hub:org/robust-r18"' in text
    assert "| accuracy | 83.0% | 46.0% | 12.0% |" in text and "16/255" in text  # the eps curve
    assert "Gradient-masking checks (passed)" in text and "| 42.0% |" in text


def test_card_without_repo_or_license_stays_honest() -> None:
    card = render_card(_example(), None)
    assert "license" not in card.data.to_dict() and "states none" in card.text
    assert "local-dir:PATH/TO/THIS/FOLDER" in card.text
    assert "the standard AutoAttack (RobustBench's evaluation) was not run" in card.text


def test_public_recipe_drops_local_paths() -> None:
    text = public.recipe("model:\n  name: quickstart\noutput_dir: /home/alice/runs/x\n", "x")
    assert "/home/alice" not in text and "output_dir: runs/x" in text
