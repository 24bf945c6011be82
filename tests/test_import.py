"""``robustify import`` and ``robustify pull ZOO_NAME``: third-party robust checkpoints become plain timm folders.

The checkpoints are built here in exactly the layouts their libraries save (MadryLab robustness: a dict whose
``"model"`` is the state dict of ``DataParallel(AttackerModel)``, with the attacker's copy of the classifier and the
normalizer buffers; a plain state dict under a ``module.`` prefix), from timm models with random weights, and are
served by the local Hub server. Each converted folder must give the same logits as the source layout on random
inputs when loaded with plain timm. Bad input is one line, exit status 2, and nothing written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from robustify.cli import main

try:
    from tests.hub_server import LocalHub
    from tests.zoo_runs import cli
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from hub_server import LocalHub
    from zoo_runs import cli

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
REPO = "madrylab/robust-imagenet-models"


class InputNormalize(nn.Module):
    """MadryLab's normalizer: buffers ``new_mean``/``new_std`` of shape (3, 1, 1); clamps to [0,1] first."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("new_mean", torch.tensor(mean)[..., None, None])
        self.register_buffer("new_std", torch.tensor(std)[..., None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.clamp(0, 1) - self.new_mean) / self.new_std


class Attacker(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.normalize = InputNormalize(MEAN, STD)
        self.model = model


class AttackerModel(nn.Module):
    """The module layout (and so the state-dict keys) of ``robustness.attacker.AttackerModel``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.normalizer = InputNormalize(MEAN, STD)
        self.model = model
        self.attacker = Attacker(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalizer(x))


def madrylab_checkpoint(arch: str, path: Path, num_classes: int = 10, drop: str | None = None) -> nn.Module:
    """Save ``arch`` (random init) as robustness' train.py does; returns the source model ([0,1] inputs)."""
    torch.manual_seed(0)
    source = AttackerModel(timm.create_model(arch, pretrained=False, num_classes=num_classes)).eval()
    for m in source.modules():  # non-trivial BatchNorm statistics, so a dropped buffer would show in the logits
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = nn.DataParallel(source).state_dict()
    assert any(k.startswith("module.attacker.model.") for k in state) and "module.normalizer.new_mean" in state
    if drop:
        state = {k: v for k, v in state.items() if not k.startswith(drop)}
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "schedule": None, "epoch": 90,
                "amp": "N/A"}, path)
    return source


def same_logits(folder: Path, source: nn.Module, size: int = 64) -> float:
    """Max |logits| difference between plain timm on the folder (its own mean/std) and the source on [0,1] x."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    cfg = model.pretrained_cfg
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    xn = (x - torch.tensor(cfg["mean"]).view(1, -1, 1, 1)) / torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return float((model(xn) - source(x)).abs().max())


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robustify: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ------------------------------------------------------------------------------------------------ local files
def test_madrylab_resnet18_imports_to_plain_timm_with_same_logits(tmp_path: Path, capsys) -> None:
    src = tmp_path / "resnet18_linf_eps4.0.ckpt"
    source = madrylab_checkpoint("resnet18", src)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "import", str(src), "--output-dir", str(out), "--trust-pickle",
                                "--license", "mit", "--norm", "Linf", "--eps", "4/255")
    assert code == 0, err
    assert "madrylab converter" in stdout and "timm resnet18, 10 classes" in stdout  # format and arch guessed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert same_logits(out, source) < 1e-5
    cfg = json.loads((out / "config.json").read_text())
    pc = cfg["pretrained_cfg"]
    assert pc["mean"] == pytest.approx(MEAN) and pc["std"] == pytest.approx(STD)
    assert pc["crop_pct"] == 0.875 and pc["interpolation"] == "bilinear" and pc["license"] == "mit"
    assert "paper_ids" not in pc and "test_input_size" not in pc  # timm's own weights' facts are not carried over
    prov = cfg["import"]
    assert prov["converter"] == "madrylab" and prov["sha256"] and prov["norm"] == "Linf"
    assert any("attacker" in d for d in prov["dropped"])
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and "not measured here" in card and "Linf, eps = 4/255" in card
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "attacker" in k or "normalizer" in k or k.startswith("module.")]

    # after `robustify eval OUT --output OUT/eval.json`, the card shows the measured numbers beside the published
    (out / "eval.json").write_text(json.dumps({"n_examples": 100, "threat_model": {"norm": "Linf", "eps": 4 / 255},
                                               "clean_acc": 0.5, "pgd_acc": 0.25}))
    code, stdout, err = run_cli(capsys, "import", "--refresh-card", str(out))
    assert code == 0, err
    card = (out / "README.md").read_text()
    assert "clean accuracy: 50.00%" in card and "PGD robust accuracy: 25.00%" in card and "not measured here" in card


def test_plain_state_dict_with_prefix_is_stripped(tmp_path: Path, capsys) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False, num_classes=7).eval()
    src = tmp_path / "weights.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(src))
    out = tmp_path / "sd"
    code, stdout, err = run_cli(capsys, "import", str(src), "--arch", "test_resnet", "--output-dir", str(out))
    assert code == 0, err and "state-dict converter" in stdout
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert float((model(x) - source(x)).abs().max()) < 1e-5
    assert "module." in json.loads((out / "config.json").read_text())["import"]["notes"][0]

    # an explicit prefix that no key has is refused (names what the keys start with)
    code, _, err = run_cli(capsys, "import", str(src), "--arch", "test_resnet", "--output-dir", str(tmp_path / "x"),
                           "--strip-prefix", "model.")
    assert_one_line_error(code, err, "--strip-prefix", "module.")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("case", ["pickle-untrusted", "other-arch", "missing-key", "truncated", "no-normalizer",
                                  "bad-format"])
def test_bad_checkpoints_are_one_line_and_write_nothing(tmp_path: Path, capsys, case: str) -> None:
    src = tmp_path / "resnet18_l2_eps3.ckpt"
    madrylab_checkpoint("test_resnet", src, num_classes=5, drop={
        "missing-key": "module.model.layer1.0.conv1.weight", "no-normalizer": "module.normalizer."}.get(case))
    args = ["import", str(src), "--output-dir", str(tmp_path / "out"), "--arch", "test_resnet", "--trust-pickle"]
    words: tuple[str, ...]
    if case == "pickle-untrusted":
        args.remove("--trust-pickle")
        words = ("pickle", "--trust-pickle")
    elif case == "other-arch":
        args[args.index("test_resnet")] = "resnet18"
        words = ("does not fit timm resnet18", "--arch")
    elif case == "missing-key":
        words = ("missing key", "layer1.0.conv1.weight")
    elif case == "truncated":
        data = src.read_bytes()
        src.write_bytes(data[: len(data) // 2])
        words = ("truncated or corrupt",)
    elif case == "no-normalizer":
        words = ("module.normalizer.new_mean",)
    else:
        args += ["--format", "madrylb"]
        words = ("--format", "madrylab")
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # no output folder, no temporary left


# ------------------------------------------------------------------------------------------------ the Hub and the zoo
def _env(hub: LocalHub, tmp: Path, zoo_path: Path) -> dict[str, str]:
    dropped = ("HF_", "HUGGINGFACE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(dropped)}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost", TQDM_DISABLE="1",
               ROBUSTIFY_ZOO_PATH=str(zoo_path), ROBUSTIFY_ZOO_DIR=str(tmp / "zoo-models"), COLUMNS="200")
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A local Hub with ``madrylab/robust-imagenet-models`` holding one MadryLab-layout test_resnet checkpoint,
    and a zoo folder with its entry."""
    from huggingface_hub import HfApi

    tmp = tmp_path_factory.mktemp("served")
    ckpt = tmp / "test_resnet_linf_eps4.0.ckpt"
    source = madrylab_checkpoint("test_resnet", ckpt, num_classes=1000)
    zoo = tmp / "zoo"
    zoo.mkdir()
    (zoo / "madry-test-resnet-linf-4.yaml").write_text(f"""
name: madry-test-resnet-linf-4
hub_id: {REPO}
file: {ckpt.name}
converter: madrylab
base_model: none (trained from scratch)
architecture: test_resnet
dataset: imagenet
threat_model: Linf
eps: 4/255
clean_acc: 52.92
autoattack_acc: 25.32
attack: AutoAttack (standard)
n_examples: 5000
method: pgd
recipe: none
additional_data: false
license: mit
training: PGD adversarial training
numbers_source: a test's made-up numbers, in RobustBench's protocol
""")
    with LocalHub(tmp / "hub_root") as hub:
        api = HfApi(endpoint=hub.url, token=hub.token)
        api.create_repo(REPO, exist_ok=True)
        api.upload_file(path_or_fileobj=str(ckpt), path_in_repo=ckpt.name, repo_id=REPO)
        api.upload_file(path_or_fileobj=b"# robust models\n", path_in_repo="README.md", repo_id=REPO)
        yield {"hub": hub, "tmp": tmp, "ckpt": ckpt, "source": source, "zoo": zoo,
               "env": _env(hub, tmp, zoo)}


def test_import_and_pull_from_the_hub(served: dict, tmp_path: Path) -> None:
    env, ckpt = served["env"], served["ckpt"].name
    out = tmp_path / "out"
    folder = Path(env["ROBUSTIFY_ZOO_DIR"]) / "madry-test-resnet-linf-4"
    imp, no_file, untrusted, no_repo, unknown, pull_untrusted, pull, again, show, dry, missing = cli(
        env,
        ["import", f"hf-hub:{REPO}/{ckpt}", "--arch", "test_resnet", "--trust-pickle", "--output-dir", str(out)],
        ["import", f"hf-hub:{REPO}/resnet50_l2_eps3.ckpt", "--trust-pickle", "--output-dir", str(tmp_path / "a")],
        ["import", f"hf-hub:{REPO}/{ckpt}", "--output-dir", str(tmp_path / "b")],  # refused before downloading
        ["import", "hf-hub:nobody/nothing/x.ckpt", "--trust-pickle", "--arch", "resnet18", "--output-dir",
         str(tmp_path / "c")],
        ["pull", "madry-test-resnet-linf-5"],  # an unknown zoo name: the close one is suggested
        ["pull", "madry-test-resnet-linf-4"],  # the entry's file is a pickle
        ["pull", "madry-test-resnet-linf-4", "--trust-pickle"],
        ["pull", "madry-test-resnet-linf-4"],  # already there: checked, not downloaded again
        ["zoo", "show", "madry-test-resnet-linf-4"],
        ["finetune", "--model", "zoo:madry-test-resnet-linf-4", "--dry-run", "--data", "quickstart"],
        ["finetune", "--model", "zoo:not-pulled", "--dry-run"],
    )
    assert imp[0] == 0, imp[2]
    head = served["hub"].commits(REPO)[-1].id
    prov = json.loads((out / "config.json").read_text())["import"]
    assert prov["repo_id"] == REPO and prov["revision"] == head
    assert f"commit `{head}`" in (out / "README.md").read_text()
    assert same_logits(out, served["source"]) < 1e-5

    for res, words in [(no_file, ("has no file 'resnet50_l2_eps3.ckpt'",)), (untrusted, ("pickle", "--trust-pickle")),
                       (no_repo, ("not found",)), (unknown, ("no model named", "madry-test-resnet-linf-4")),
                       (pull_untrusted, ("--trust-pickle",)), (missing, ("robustify pull not-pulled",))]:
        assert_one_line_error(res[0], res[2], *words)
    assert not any((tmp_path / n).exists() for n in "abc")

    assert pull[0] == 0, pull[2]
    assert "imported" in pull[1] and str(folder) in pull[1]
    assert same_logits(folder, served["source"]) < 1e-5
    card = (folder / "README.md").read_text()
    assert "52.92%" in card and "a test's made-up numbers" in card and "not measured here" in card
    assert again[0] == 0 and "already downloaded" in again[1]
    assert show[0] == 0 and "robustify import hf-hub:" in show[1] and "zoo:madry-test-resnet-linf-4" in show[1]
    assert dry[0] == 0, dry[2]
    assert f"local-dir:{folder}" in dry[1] or "zoo:madry-test-resnet-linf-4" in dry[1], dry[1][-2000:]


def test_pull_of_a_timm_entry_checks_the_repos_architecture(served: dict, tmp_path: Path) -> None:
    """A ``converter: timm`` entry is downloaded as is, so the repo's config.json must name the entry's architecture:
    test_resnet weights under timm/inception_v3.tf_adv_in1k's name load with timm but are not that model."""
    from huggingface_hub import HfApi

    bb = tmp_path / "bb"
    timm.models.save_for_hf(timm.create_model("test_resnet", pretrained=False), str(bb), safe_serialization=True)
    api = HfApi(endpoint=served["hub"].url, token=served["hub"].token)
    for repo in ("timm/inception_v3.tf_adv_in1k", "someone/test_resnet.robust"):
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(bb), repo_id=repo)
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shipped = (Path(__file__).resolve().parents[1] / "zoo" / "timm-inception-v3-tf-adv-in1k.yaml").read_text()
    (zoo / "timm-test-resnet.yaml").write_text(shipped.replace("timm-inception-v3-tf-adv-in1k", "timm-test-resnet")
                                               .replace("timm/inception_v3.tf_adv_in1k", "someone/test_resnet.robust")
                                               .replace("architecture: inception_v3", "architecture: test_resnet"))
    env = dict(_env(served["hub"], tmp_path, zoo), ROBUSTIFY_ZOO_DIR=str(tmp_path / "zoo-models"))
    wrong, right = cli(env, ["pull", "timm-inception-v3-tf-adv-in1k"], ["pull", "timm-test-resnet"])
    assert_one_line_error(wrong[0], wrong[2], "timm/inception_v3.tf_adv_in1k", "'test_resnet'", "'inception_v3'")
    assert "loads with timm" not in wrong[1]
    assert right[0] == 0 and "already timm's format" in right[1], right[2]
    assert sorted(p.name for p in (tmp_path / "zoo-models").iterdir()) == ["timm-test-resnet"]  # nothing left behind


def test_shipped_zoo_entries_say_where_their_numbers_come_from() -> None:
    from robustify.publish.zoo import ZOO_DIRS, import_command, load_zoo

    entries = {e.name: e for e in load_zoo([ZOO_DIRS[0]])}
    madry = {e.file for e in entries.values() if e.converter == "madrylab"}
    assert madry == {f"{a}_{t}.ckpt" for a in ("resnet18", "resnet50", "wide_resnet50_2")
                     for t in ("linf_eps4.0", "l2_eps3")}
    timm_ones = {e.hub_id: e for e in entries.values() if e.converter == "timm"}
    assert set(timm_ones) == {"timm/inception_v3.tf_adv_in1k", "timm/inception_resnet_v2.tf_ens_adv_in1k"}
    for e in timm_ones.values():
        assert "not PGD" in e.training and "PGD" in e.notes and e.autoattack_acc is None and e.pgd_acc is None
    for e in entries.values():
        if e.imported:
            assert e.license and e.numbers_source and "not measured here" in e.numbers_source
            assert import_command(e).startswith("robustify ")
    r50 = entries["madrylab-resnet50-imagenet-linf-4"]  # the RobustBench entry Salman2020Do_R50, in the snapshot
    rb = Path(__file__).resolve().parents[2] / "shared/robustbench/model_info/imagenet/Linf/Salman2020Do_R50.json"
    if not rb.is_file():
        pytest.skip(f"no RobustBench snapshot file {rb}")
    info = json.loads(rb.read_text())
    assert (r50.clean_acc, r50.autoattack_acc) == (float(info["clean_acc"]), float(info["autoattack_acc"]))
