"""Data: stand-ins with the real Hub schemas through the loading code, local sources, validation of arrays and image
files, the loader contract (sharding, exact mid-epoch restart, eval shards), and the one preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from robustify.config import DataConfig
from robustify.data import ALIASES, Preprocessing, build_loaders, default_eval_split, get_dataset
from robustify.data.sources import standardize
from robustify.errors import UserError
from tests import standins

DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 0.875, "mean": (0.5,) * 3,
               "std": (0.25,) * 3}


@pytest.fixture(autouse=True)
def _no_thread_shutdown_sleep(monkeypatch):
    # datasets sleeps 5 s after each shuffled parquet stream (an Arrow thread-shutdown workaround): not under test
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.0, raising=False)


@pytest.mark.parametrize("alias", ["cifar10", "cifar100", "imagenet-1k", "tiny-imagenet"])
def test_real_schemas_through_save_to_disk(alias: str, tmp_path: Path):
    dd = standins.STANDINS[alias]()
    dd.save_to_disk(str(tmp_path / alias))
    a = ALIASES[alias]
    split = default_eval_split(alias)
    assert split in dd and split != "test" or alias.startswith("cifar")
    for spec in (f"disk:{tmp_path / alias}", str(tmp_path / alias)):  # explicit, and auto-detected
        ds = get_dataset(spec, split, image_column=a.image_column, label_column=a.label_column)
        assert ds.column_names == ["image", "label"] and isinstance(ds[0]["image"], Image.Image)
        assert ds.features["label"].names == dd[split].features[a.label_column].names
    # the alias's own column mapping (what get_dataset("cifar100", ...) applies to the Hub copy)
    fine = standardize(dd["train"], alias)
    assert fine.features["label"].num_classes == {"cifar10": 10, "cifar100": 100, "imagenet-1k": 1000,
                                                  "tiny-imagenet": 200}[alias]
    if alias == "cifar100":
        coarse = standardize(dd["train"], alias, label_column="coarse_label")
        assert coarse.features["label"].num_classes == 20 and coarse["label"][:3] == [0, 1, 2]


def test_unlabelled_split_is_refused(tmp_path: Path):
    standins.imagenet().save_to_disk(str(tmp_path / "in1k"))
    with pytest.raises(UserError, match=r"label -1: unlabelled examples"):
        get_dataset(f"disk:{tmp_path / 'in1k'}", "test")
    assert default_eval_split("imagenet-1k") == "validation" and default_eval_split("tiny-imagenet") == "valid"


def _png(path: Path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_imagefolder_without_split_folders_holds_out_eval_and_converts_modes(tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for i in range(10):
            _png(tmp_path / "f" / c / f"{i}.png", Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)))
    _png(tmp_path / "f" / "cat" / "gray.png", Image.new("L", (20, 20), 100))
    _png(tmp_path / "f" / "cat" / "rgba.png", Image.new("RGBA", (20, 20), (10, 20, 30, 40)))
    _png(tmp_path / "f" / "dog" / "deep.png", Image.fromarray(np.full((20, 20), 32896, dtype=np.uint16)))
    (tmp_path / "f" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    spec = f"imagefolder:{tmp_path / 'f'}"
    train, test = get_dataset(spec, "train"), get_dataset(spec, "test")
    assert "skipped 1 unreadable image file(s)" in capsys.readouterr().err
    paths = [{im.filename for im in d["image"]} for d in (train, test)]
    assert not paths[0] & paths[1] and len(paths[0] | paths[1]) == 23 and len(test) == 3
    assert train.features["label"].names == ["cat", "dog"]
    pre = Preprocessing(input_size=(3, 16, 16))
    from robustify.data.preprocessing import decode_one, to_rgb

    both = datasets.concatenate_datasets([train, test])
    by_name = {Path(im.filename).name: im for im in both["image"]}
    assert decode_one(by_name["gray.png"], pre.transform()).shape == (3, 16, 16)
    assert np.asarray(to_rgb(by_name["deep.png"]))[0, 0].tolist() == [128, 128, 128]  # scaled, not clipped to 255
    assert np.asarray(to_rgb(by_name["rgba.png"]))[0, 0].tolist() == [10, 20, 30]
    with pytest.raises(UserError, match="holdout"):
        get_dataset(spec, "test", holdout=0.0)


def test_imagefolder_with_split_folders(tmp_path: Path):
    for split, n in (("train", 4), ("val", 2)):
        for c in ("a", "b"):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png", Image.new("RGB", (8, 8), (i, 0, 0)))
    assert len(get_dataset(f"imagefolder:{tmp_path}", "train")) == 8
    assert len(get_dataset(f"imagefolder:{tmp_path}", "test")) == 4  # test -> the validation folder


def _npz(path: Path, **arrays) -> str:
    base = {"x_train": np.zeros((4, 8, 8, 3), np.uint8), "y_train": np.arange(4) % 2,
            "x_test": np.zeros((2, 8, 8, 3), np.uint8), "y_test": np.array([0, 1])}
    np.savez(path, **(base | arrays))
    return f"npz:{path}"


@pytest.mark.parametrize("arrays,message", [
    ({"y_train": np.array([0, 1, -1, 0])}, "has label -1; labels must be class indices 0..K-1"),
    ({"y_test": np.array([0, 7])}, "label 7, above every training label"),
    ({"y_train": np.array([0, 1, 1000, 0])}, "label 1000 but only 3 distinct values"),
    ({"y_train": np.array([0.0, 1.0, 1.0, 0.0])}, "dtype float64; labels must be integer class indices"),
    ({"y_train": np.eye(2)[[0, 1, 1, 0]]}, r"shape \(4, 2\): one-hot"),
    ({"y_train": np.arange(3)}, "has 3 labels but the images array has 4"),
    ({"x_train": np.zeros((0, 8, 8, 3), np.uint8), "y_train": np.zeros(0, int)}, "'train' .* is empty"),
    ({"x_train": np.full((4, 8, 8, 3), 300.0)}, r"float pixels in \[300, 300\]"),
    ({"x_train": np.zeros((4, 8, 8, 5), np.uint8)}, "1, 3 or 4 channels"),
])
def test_npz_errors_name_the_value(tmp_path: Path, arrays: dict, message: str):
    with pytest.raises(UserError, match=message):
        get_dataset(_npz(tmp_path / "d.npz", **arrays), "test" if any(k.endswith("_test") for k in arrays) else "train")


def test_npz_layouts_are_converted(tmp_path: Path):
    ref = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    gray = ref[..., :1]
    for x, want in ((gray, np.repeat(gray, 3, -1)), (ref.astype(np.float32) / 255, ref),
                    (ref.transpose(0, 3, 1, 2), ref), (ref.astype(np.uint16) * 257, ref), (ref[..., 0], None)):
        ds = get_dataset(_npz(tmp_path / "d.npz", x_train=x), "train")
        got = np.stack([np.asarray(im) for im in ds["image"]])
        assert got.shape == (4, 8, 8, 3) and (want is None or np.array_equal(got, want))
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="is not a NumPy .npz archive"):
        get_dataset(f"npz:{tmp_path / 'bad.npz'}", "train")


# ------------------------------------------------------------------------------------------------ loaders
@pytest.fixture(scope="module")
def id_parquet(tmp_path_factory) -> Path:
    """64 train / 16 test CIFAR-schema examples whose label is the example's id, as two parquet files per split."""
    root = tmp_path_factory.mktemp("pq")
    dd = standins.cifar10(64, 16)
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=64)})
    for split in dd:
        dd[split] = datasets.Dataset.from_dict({"img": dd[split]["img"], "label": list(range(len(dd[split])))},
                                               features=feats)
    return standins.to_parquet(dd, root)


@pytest.mark.parametrize("streaming,workers", [("true", 0), ("true", 2), ("false", 0), ("false", 2)])
def test_sharded_epochs_restart_exactly(id_parquet: Path, streaming: str, workers: int):
    """Two ranks see disjoint shards whose union is the set; start_batch=k is the tail of the epoch, bit for bit,
    with per-example augmentation; the eval shards concatenate to the single-process subset."""
    cfg = DataConfig(name=f"parquet:{id_parquet}", eval_split="test", streaming=streaming, batch_size=8,
                     augment="flip-crop", num_workers=workers, cache_mb=0 if workers else 2048)
    seen: list[int] = []
    for rank in range(2):
        loaders = build_loaders(cfg, DATA_CONFIG, 10, 4, seed=3, rank=rank, world_size=2)
        assert loaders.streaming == (streaming == "true") and loaders.batches_per_epoch == 4
        full = list(loaders.train_epoch(1))
        tail = list(loaders.train_epoch(1, start_batch=3 if workers else 2))
        assert len(full) == 4 and all(x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 for x, _ in full)
        for (xa, ya), (xb, yb) in zip(full[-len(tail):], tail, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        seen += torch.cat([y for _, y in full]).tolist()
        if rank == 0 and workers == 0:
            assert not torch.equal(full[0][0], list(loaders.train_epoch(2))[0][0])  # a new order each epoch
            x, y = loaders.eval_examples()
            parts = [loaders.eval_examples(r, 3) for r in range(3)]
            assert torch.equal(torch.cat([p[0] for p in parts]), x) and y.tolist() == list(range(10))
            assert x.dtype == torch.uint8 and loaders.eval_record()["first_n"] == 10
            assert loaders.probe[0].shape == (4, 3, 32, 32) and loaders.probe[0].dtype == torch.float32
    assert sorted(seen) == list(range(64))


# ------------------------------------------------------------------------------------------------ preprocessing
@pytest.mark.parametrize("image_size", [None, 40])
def test_exported_config_reproduces_evaluation_in_plain_timm(tmp_path: Path, image_size: int | None):
    """timm's resolve_data_config + create_transform on the exported folder give the same logits on the same PIL
    images as robustify's preprocessing with the normalization inside the model."""
    import timm
    from timm.data import create_transform, resolve_data_config

    from robustify.data.preprocessing import decode_one
    from robustify.models import build_robust_model
    from robustify.publish.export import save_backbone

    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=5,
                                 pretrained_cfg_overlay={"input_size": (3, 48, 48), "crop_pct": 0.875,
                                                         "interpolation": "bicubic"}).eval()
    pre = Preprocessing.from_data_config(resolve_data_config(model=backbone), DataConfig(image_size=image_size))
    assert pre.crop_pct == (0.875 if image_size is None else 1.0)
    model = build_robust_model(backbone, pre).eval()
    save_backbone(model, tmp_path)
    plain = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    tf = create_transform(**resolve_data_config(model=plain))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((60, 52), (33, 70))]
    with torch.no_grad():
        ours = model(torch.stack([decode_one(im, pre.transform()) for im in images]).float() / 255)
        theirs = plain(torch.stack([tf(im) for im in images]))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_attack_size_resizes_inside_and_reloads(tmp_path: Path):
    import timm

    import robustify
    from robustify.models import build_robust_model
    from robustify.publish.export import save_backbone

    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    pre = Preprocessing.from_data_config(DATA_CONFIG, DataConfig(image_size=64, attack_size=32))
    assert pre.input_size == (3, 32, 32) and pre.model_input_size == (3, 64, 64) and pre.crop_pct == 1.0
    model = build_robust_model(backbone, pre).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = backbone((torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear") - 0.5) / 0.25)
        torch.testing.assert_close(model(x), want)
    save_backbone(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["pretrained_cfg"]["input_size"] == [3, 64, 64]
    assert cfg["preprocessing"]["attack_input_size"] == [3, 32, 32]
    again = robustify.load(str(tmp_path))
    assert again.input_size == (3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_gated_hub_errors_are_recognised():
    from datasets.exceptions import DatasetNotFoundError

    from robustify.data.sources import is_gated

    err = DatasetNotFoundError("Dataset 'ILSVRC/imagenet-1k' is a gated dataset on the Hub. Visit the dataset page at "
                               "https://huggingface.co/datasets/ILSVRC/imagenet-1k to ask for access.")
    assert is_gated(err) and not is_gated(DatasetNotFoundError("Dataset 'org/none' doesn't exist on the Hub"))


def test_main_process_first_wraps_preparation(tmp_path: Path):
    import contextlib

    standins.cifar10(16, 8).save_to_disk(str(tmp_path / "c10"))
    entered: list[str] = []

    @contextlib.contextmanager
    def first():
        entered.append("in")
        yield

    cfg = DataConfig(name=f"disk:{tmp_path / 'c10'}", image_column="img", eval_split="test", batch_size=4)
    loaders = build_loaders(cfg, DATA_CONFIG, 4, 4, main_process_first=first)
    assert entered == ["in"] and loaders.num_classes == 10 and loaders.label_names[0] == "airplane"
    assert loaders.batches_per_epoch == 4 and loaders.eval_size == 4


def test_aliases_load_the_real_hub_ids_from_a_local_hub(tmp_path: Path):
    """The stand-ins uploaded as uoft-cs/cifar10, uoft-cs/cifar100, ILSVRC/imagenet-1k and zh-plus/tiny-imagenet to
    the test Hub server (Hub parquet layout), loaded by alias through datasets.load_dataset, as a user would, and a
    recipe trained for a few steps on --data cifar10 itself. A fresh interpreter: huggingface_hub reads HF_ENDPOINT
    at import."""
    import subprocess
    import sys
    import textwrap

    from tests.helpers import hub_client_env
    from tests.hub_server import LocalHub

    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import datasets
        datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0.0
        from huggingface_hub import HfApi
        from tests import standins
        from robustify.data import get_dataset
        api = HfApi()
        for alias, repo in (("cifar10", "uoft-cs/cifar10"), ("cifar100", "uoft-cs/cifar100"),
                            ("imagenet-1k", "ILSVRC/imagenet-1k"), ("tiny-imagenet", "zh-plus/tiny-imagenet")):
            folder = Path({str(tmp_path)!r}) / alias
            standins.to_parquet(standins.STANDINS[alias](), folder / "data", files_per_split=1)
            api.create_repo(repo, repo_type="dataset")
            api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=str(folder))
        out = {{}}
        c100 = get_dataset("cifar100", "test")
        out["cifar100"] = [c100.features["label"].num_classes, c100.column_names]
        out["coarse"] = get_dataset("cifar100", "train", label_column="coarse_label").features["label"].num_classes
        # (map-style here; streaming from this server over HTTP, with Range requests, is tests/test_data_scale.py)
        val = get_dataset("imagenet-1k", "validation")
        out["imagenet_val"] = [val[0]["image"].size, val.features["label"].num_classes]
        try:
            get_dataset("imagenet-1k", "test")
        except Exception as e:
            out["imagenet_test"] = str(e)
        out["tiny_valid"] = len(get_dataset("tiny-imagenet", "valid"))
        from robustify.cli import main
        sets = ["model.name=test_resnet", "model.pretrained=false", "model.channels_last=false", "data.batch_size=8",
                "data.num_workers=0", "train.epochs=1", "train.probe_size=8", "train.probe_steps=1",
                "eval.pgd_steps=1", "train.mixed_precision=no", "data.image_size=48"]
        out["rc"] = main(["finetune", "--recipe", "cifar10-resnet50-free4", "--output-dir",
                          str(Path({str(tmp_path)!r}) / "run"), "--limit-train", "16", "--limit-eval", "8"]
                         + [a for s in sets for a in ("--set", s)])
        # robustify eval --data imagenet-1k streams the validation shards (no datasets conversion of the split)
        import timm
        net = Path({str(tmp_path)!r}) / "net1000"
        timm.models.save_for_hf(timm.create_model("test_resnet", num_classes=1000), str(net), safe_serialization=True)
        rep = Path({str(tmp_path)!r}) / "eval.json"
        eval_args = ["eval", f"local-dir:{{net}}", "--data", "imagenet-1k", "--eps", "4/255", "--attack", "clean",
                     "--n-examples", "6", "--batch-size", "2", "--no-curve", "--no-checks"]
        out["eval_rc"] = main(eval_args + ["--output", str(rep)])
        one = json.loads(rep.read_text())
        out["eval"] = one["data_loading"]
        # the same under torchrun at world 3: each process streams and decodes only its batch (footers read
        # main-process-first), and the numbers and the subset's hash are the single process's
        import subprocess
        from tests.helpers import torchrun_cmd
        rep3 = Path({str(tmp_path)!r}) / "eval3.json"
        proc = subprocess.run(torchrun_cmd(["-m", "robustify", *eval_args, "--output", str(rep3)], nproc=3),
                              capture_output=True, text=True, timeout=300)
        out["eval3_rc"] = proc.returncode
        three = json.loads(rep3.read_text()) if proc.returncode == 0 else {{"stderr": proc.stderr[-2000:]}}
        out["eval3"] = three.get("data_loading", three)
        out["eval3_same"] = [three.get(k) == one[k] for k in ("clean_acc", "subset")] + [three.get("processes")]
        print(json.dumps(out))
    """)
    with LocalHub(tmp_path / "hub") as hub:
        env = hub_client_env(hub, tmp_path / "home")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                              cwd=str(Path(__file__).resolve().parent.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cifar100"] == [100, ["image", "label"]] and out["coarse"] == 20
    assert out["imagenet_val"] == [[80, 60], 1000]
    assert "label -1: unlabelled examples" in out["imagenet_test"] and "'validation'" in out["imagenet_test"]
    assert out["tiny_valid"] == 20 and out["rc"] == 0
    assert out["eval_rc"] == 0 and out["eval"] == {"streamed": True, "decoded_per_process": [6]}
    assert out["eval3_rc"] == 0, out["eval3"]
    assert out["eval3"] == {"streamed": True, "decoded_per_process": [2, 2, 2]} and out["eval3_same"] == [True, True, 3]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["after"]["n_examples"] == 8
    assert json.loads((tmp_path / "run" / "config.json").read_text())["robustness"]["dataset"] == "cifar10"


def test_finetune_and_eval_preprocess_the_same(tmp_path: Path):
    """The issue's case: a 64 px backbone with crop_pct 0.875 fine-tuned on 32 px CIFAR-schema data; robustify eval
    on the run folder decodes the same subset identically, so it finds the same clean accuracy as finetune did."""
    import timm

    from robustify.cli import main
    from robustify.evaluate.report import run_eval

    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=10,
                                 pretrained_cfg_overlay={"input_size": (3, 64, 64), "crop_pct": 0.875})
    timm.models.save_for_hf(backbone, str(tmp_path / "bb"), safe_serialization=True)
    standins.cifar10(32, 16).save_to_disk(str(tmp_path / "c10"))
    run = tmp_path / "run"
    sets = [f"model.name={tmp_path / 'bb'}", f"data.name=disk:{tmp_path / 'c10'}", "data.image_column=img",
            "data.batch_size=8", "data.num_workers=0", "train.epochs=1", "train.probe_size=8", "train.probe_steps=1",
            "eval.pgd_steps=1", "eval.n_examples=16", "output_dir=" + str(run)]
    assert main(["finetune"] + [a for s in sets for a in ("--set", s)]) == 0
    after = json.loads((run / "metrics.json").read_text())["after"]
    res = run_eval(str(run), attacks=("clean",), preset="quick", curve=False, checks=False, update_run=False,
                   progress=False)
    assert res.report["n_examples"] == 16 and res.report["clean_acc"] == after["clean_acc"]
    # the very same uint8 subset: what finetune's loaders decoded and what eval decoded for the run folder
    from timm.data import resolve_data_config

    from robustify.config import config_from_dict

    cfg = config_from_dict(yaml.safe_load((run / "recipe.yaml").read_text()))
    loaders = build_loaders(cfg.data, resolve_data_config(model=backbone), 16, 8)
    assert loaders.eval_record()["sha256_16"] == res.report["subset"]["sha256_16"]
    assert loaders.preprocessing.crop_pct == 0.875 and loaders.input_size == (3, 64, 64)
    pre = json.loads((run / "config.json").read_text())
    assert pre["pretrained_cfg"]["crop_pct"] == pre["preprocessing"]["crop_pct"] == 0.875
