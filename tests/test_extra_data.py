"""Extra labelled data (data.extra, data.extra_fraction, data.extra_kind): the configured share of every minibatch,
counted; one draw whatever the source (stored npz memory-mapped in place, compressed npz expanded once, parquet, the
same files from the local Hub server); never an extra example in the probe or an evaluation; a run stopped mid-epoch
and resumed ends bit-identical; bad values are one line and exit 2; and on the quickstart, 200 labelled images plus
the other 1,097 as extra labelled data raise held-out PGD accuracy at the same optimizer steps."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from robustify.cli import main as cli
from robustify.config import build_config
from robustify.data import QUICKSTART_DIR, Preprocessing, extra
from robustify.train.options import extra_data

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    with np.load(QUICKSTART_DIR / "digits.npz") as a:
        return {k: a[k] for k in a.files}


@pytest.fixture(scope="module")
def pre() -> Preprocessing:
    return Preprocessing(input_size=(3, 32, 32), interpolation="bilinear", crop_pct=1.0)


def _digest(x: torch.Tensor) -> set[bytes]:
    """Per-image digests of uint8 images, or of float [0,1] images rounded back to uint8."""
    u = x if x.dtype == torch.uint8 else (x.detach().float().cpu() * 255).round().to(torch.uint8)
    return {hashlib.sha256(t.contiguous().numpy().tobytes()).digest() for t in u.cpu()}


def _data(spec: str, augment: str = "none", cache_dir: str | None = None, batch_size: int = 16,
          fraction: float = 0.7) -> types.SimpleNamespace:
    return types.SimpleNamespace(extra=[spec], extra_kind=["generated"], augment=augment, cache_dir=cache_dir,
                                 batch_size=batch_size, extra_fraction=fraction)


def test_each_minibatch_gets_the_configured_share_drawn_by_position(tmp_path: Path, digits, pre):
    path = tmp_path / "gen.npz"
    np.savez(path, image=digits["x_train"][:300], label=digits["y_train"][:300])
    assert extra.per_process(16, 0.7) == 37 and extra.per_process(154, 0.7) == 359 and extra.per_process(64, 0.5) == 64
    option = extra_data.ExtraDataOption(build_config("quickstart", [f"data.extra=npz:{path}", "data.extra_kind=real",
                                                                    "data.batch_size=16"]))
    option.data = extra.open_extra(option.cfg.data, pre, 10, 37, seed=3, rank=0, world=1)
    assert option.data.fast  # stored uint8 arrays at the input size: read straight from the memory map
    target = {(0, j): d for j, d in enumerate(digits["x_test"][:16])}
    x0 = torch.from_numpy(np.stack(list(target.values()))).permute(0, 3, 1, 2).float() / 255
    extra_seen = {hashlib.sha256(np.ascontiguousarray(im.transpose(2, 0, 1)).tobytes()).digest()
                  for im in digits["x_train"][:300]}
    for epoch, batch in ((1, 0), (1, 1), (2, 0), (5, 7)):
        x, y = option.batch(x0, torch.zeros(16, dtype=torch.long), epoch, batch)
        assert x.shape[0] == y.shape[0] == 16 + 37  # 37 / 53 = 70% of the minibatch
        assert round(37 / x.shape[0], 2) == 0.7
        assert _digest(x[:16]) == _digest(x0) and _digest(x[16:]) <= extra_seen  # counted: 16 target, 37 extra
        idx = option.data.indices(epoch, batch)
        assert torch.equal(y[16:], torch.from_numpy(digits["y_train"][:300][idx]))
        again, _ = option.batch(x0, torch.zeros(16, dtype=torch.long), epoch, batch)
        assert torch.equal(again, x)  # a pure function of the position: a resumed run draws the same
    assert not np.array_equal(option.data.indices(1, 0), option.data.indices(1, 1))
    # each process keeps its slice of one global draw: two processes of B are one process of 2B
    halves = [extra.open_extra(option.cfg.data, pre, 10, 30, seed=3, rank=r, world=2) for r in (0, 1)]
    whole = extra.open_extra(option.cfg.data, pre, 10, 60, seed=3, rank=0, world=1)
    assert np.array_equal(np.concatenate([h.indices(4, 2) for h in halves]), whole.indices(4, 2))
    assert torch.equal(torch.cat([h.draw(4, 2)[0] for h in halves]), whole.draw(4, 2)[0])


def test_npz_stored_compressed_parquet_and_the_hub_give_the_same_draws(tmp_path: Path, digits, pre):
    """The same 120 images as a stored npz (memory-mapped in place), a compressed npz (expanded once into the cache),
    a parquet file and, from the local Hub server, the npz file and a parquet data set: one draw, bit-identical."""
    import datasets
    from PIL import Image

    from tests.helpers import hub_client_env
    from tests.hub_server import LocalHub

    x, y = digits["x_train"][:120], digits["y_train"][:120]
    np.savez(tmp_path / "stored.npz", image=x, label=y)
    np.savez_compressed(tmp_path / "packed.npz", image=x, label=y)
    names = [str(i) for i in range(10)]
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(im) for im in x], "label": y.tolist()},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.ClassLabel(names=names)}))
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-00000-of-00001.parquet"))
    cache = tmp_path / "cache"

    def draws(spec: str, augment: str) -> tuple[torch.Tensor, torch.Tensor, str]:
        d = extra.open_extra(_data(spec, augment, str(cache)), pre, 10, 24, seed=1, rank=0, world=1)
        x1, y1 = d.draw(2, 3)
        return x1, y1, d.sets[0].backing

    for augment in ("none", "flip-crop"):
        ref = draws(f"npz:{tmp_path / 'stored.npz'}", augment)
        assert ref[2] == "npz memory-mapped in place"
        packed = draws(f"npz:{tmp_path / 'packed.npz'}", augment)
        assert packed[2].startswith("memory-mapped from its one-time .npy expansion")
        parquet = draws(f"parquet:{tmp_path / 'pq'}", augment)
        assert parquet[2].startswith("datasets")
        for other in (packed, parquet):
            assert torch.equal(other[0], ref[0]) and torch.equal(other[1], ref[1])
    assert len(list(cache.glob("extra/*/image.npy"))) == 1  # expanded once, reused

    code = textwrap.dedent(f"""
        import json
        import datasets
        import torch
        datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0.0
        from huggingface_hub import HfApi
        from types import SimpleNamespace
        from robustify.data import Preprocessing, extra
        api = HfApi()
        api.create_repo("gen/extra-npz", repo_type="dataset")
        api.upload_file(path_or_fileobj={str(tmp_path / 'stored.npz')!r}, path_in_repo="cifar/1m.npz",
                        repo_id="gen/extra-npz", repo_type="dataset")
        api.create_repo("gen/extra-parquet", repo_type="dataset")
        api.upload_folder(folder_path={str(tmp_path / 'pq')!r}, path_in_repo="data", repo_id="gen/extra-parquet",
                          repo_type="dataset")
        pre = Preprocessing(input_size=(3, 32, 32), interpolation="bilinear", crop_pct=1.0)
        out = {{}}
        for spec in ("npz:hf://datasets/gen/extra-npz/cifar/1m.npz", "gen/extra-parquet"):
            cfg = SimpleNamespace(extra=[spec], extra_kind=["generated"], augment="flip-crop", cache_dir=None)
            d = extra.open_extra(cfg, pre, 10, 24, seed=1, rank=0, world=1)
            xd, yd = d.draw(2, 3)
            out[spec] = [(xd * 255).round().to(torch.uint8).flatten().tolist(), yd.tolist(), len(d.sets[0])]
        print(json.dumps(out))
    """)
    with LocalHub(tmp_path / "hub") as hub:
        env = hub_client_env(hub, tmp_path / "home")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                              cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    want = ((ref[0] * 255).round().to(torch.uint8).flatten().tolist(), ref[1].tolist(), 120)
    for spec in ("npz:hf://datasets/gen/extra-npz/cifar/1m.npz", "gen/extra-parquet"):
        assert tuple(out[spec]) == want, spec


@pytest.mark.parametrize("sets,expect", [
    (["data.extra_fraction=0"], "data.extra_fraction=0 is outside (0, 1)"),
    (["data.extra_fraction=1.5"], "data.extra_fraction=1.5 is outside (0, 1)"),
    (["data.extra=npz:/no/such/file.npz", "data.extra_kind=generated"], "'/no/such/file.npz' does not exist"),
    (["data.extra=parquet:/no/such/*.parquet", "data.extra_kind=real"], "no file or folder matches"),
    (["data.extra=npz:{npz}"], "data.extra needs data.extra_kind"),
    (["data.extra=npz:{npz}", "data.extra_kind=synthetic"], "data.extra_kind='synthetic' is not accepted"),
    (["data.extra=npz:{npz}", "data.extra_kind=[real, generated, real]"], "3 kinds for 1 extra sets"),
    (["data.extra=npz:{text}", "data.extra_kind=real"], "is not a NumPy .npz archive"),
])
def test_bad_values_are_one_line_and_exit_2(sets: list[str], expect: str, tmp_path: Path, capsys):
    npz, text = tmp_path / "ok.npz", tmp_path / "text.npz"
    np.savez(npz, image=np.zeros((2, 32, 32, 3), np.uint8), label=np.zeros(2, np.int64))
    text.write_text("not an archive")
    args = [a for s in sets for a in ("--set", s.format(npz=npz, text=text))]
    assert cli(["finetune", "--dry-run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err


def test_bad_sets_are_refused_when_opened(tmp_path: Path, pre):
    labels = tmp_path / "labels.npz"
    np.savez(labels, image=np.zeros((3, 32, 32, 3), np.uint8), label=np.array([0, 4, 10]))
    floats = tmp_path / "floats.npz"
    np.savez(floats, image=np.zeros((3, 32, 32, 3), np.float32), label=np.zeros(3, np.int64))
    keys = tmp_path / "keys.npz"
    np.savez(keys, pixels=np.zeros((3, 32, 32, 3), np.uint8))
    for path, expect in ((labels, "has label 10; the target data has 10 classes"),
                         (floats, "extra images must be uint8"), (keys, "expected image and label")):
        with pytest.raises(extra.UserError, match=expect.replace("(", r"\(")):
            extra.open_extra(_data(f"npz:{path}"), pre, 10, 4, seed=0, rank=0, world=1)


def _split(digits: dict[str, np.ndarray], tmp_path: Path, n: int) -> tuple[Path, Path]:
    """The first ``n`` quickstart training images as the target set (with the quickstart test split) and the rest
    as an extra labelled set in DM-Improves-AT's layout."""
    target = tmp_path / "target.npz"
    np.savez(target, x_train=digits["x_train"][:n], y_train=digits["y_train"][:n], x_test=digits["x_test"],
             y_test=digits["y_test"])
    rest = tmp_path / "rest.npz"
    np.savez(rest, image=digits["x_train"][n:], label=digits["y_train"][n:])
    return target, rest


def test_a_run_stopped_mid_epoch_resumes_bit_identical(tmp_path: Path, digits):
    from robustify.train.trainer import finetune
    from tests.test_resume import KILL_SCRIPT, _same_weights

    target, rest = _split(digits, tmp_path, 128)
    sets = [f"data.name=npz:{target}", f"data.extra=npz:{rest}", "data.extra_kind=real", "data.extra_fraction=0.5",
            "data.augment=flip-crop", "data.batch_size=16", "train.epochs=1", "eval.n_examples=32",
            "eval.pgd_steps=1", "train.probe_size=32", "train.probe_steps=1", "train.log_every=1",
            "train.checkpoint_every=2"]
    finetune(build_config("quickstart", sets + [f"output_dir={tmp_path / 'straight'}"]))
    run = tmp_path / "sliced"
    res = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), "SIGTERM", "1", *sets], capture_output=True,
                         text=True, timeout=600, cwd=str(ROOT))
    assert res.returncode == 128 + signal.SIGTERM, res.stderr[-2000:]
    from robustify.train.checkpoint import checkpoint_dirs

    state = json.loads((checkpoint_dirs(run)[-1] / "trainer_state.json").read_text())
    assert 0 < state["batch"] < 7  # stopped in the middle of the epoch's 7 minibatches
    assert cli(["finetune", "--output-dir", str(run), "--resume"]) == 0
    _same_weights(tmp_path / "straight", run)


def test_extra_labelled_data_raises_robust_accuracy_and_never_reaches_probe_or_evaluation(tmp_path: Path, digits,
                                                                                           monkeypatch):
    """200 labelled quickstart images vs the same plus the other 1,097 as extra labelled data at half of each
    minibatch; same epochs, batch and optimizer steps; PGD-10 on 300 test images. Every example the probe and the
    evaluations see is a target example, never an extra one; training saw extra ones.

    Measured on a 2-core machine: 46.3% -> 61.0% PGD (clean 96.7% -> 98.7%), 150 optimizer steps each. With the
    rollback guard on, its 20-image probe stopped the extra run at epoch 19 (95 steps, 55.3% PGD), hence guard off."""
    import robustify.train.trainer as trainer

    target, rest = _split(digits, tmp_path, 200)
    extra_digests = _digest(torch.from_numpy(digits["x_train"][200:]).permute(0, 3, 1, 2))
    judged: list[set[bytes]] = []
    trained: list[set[bytes]] = []
    real_pgd = trainer.sharded_pgd_accuracy

    def spy_pgd(model, x, *args, **kwargs):  # every probe and evaluation batch (clean examples, before any attack)
        judged.append(_digest(x))
        return real_pgd(model, x, *args, **kwargs)

    real_batch = extra_data.ExtraDataOption.batch

    def spy_batch(self, x, y, epoch, batch):
        out = real_batch(self, x, y, epoch, batch)
        trained.append(_digest(out[0][x.shape[0]:]))
        return out

    monkeypatch.setattr(trainer, "sharded_pgd_accuracy", spy_pgd)
    monkeypatch.setattr(extra_data.ExtraDataOption, "batch", spy_batch)
    common = [f"data.name=npz:{target}", "data.batch_size=32", "train.epochs=30", "train.probe_size=20",
              "train.probe_steps=2", "eval.n_examples=300", "eval.pgd_steps=10", "train.select=last",
              "train.guard_drop=1"]  # a 20-image probe is too coarse for the rollback guard (4 images = 20%)
    results = {}
    for name, more in (("target only", []), ("with extra", [f"data.extra=npz:{rest}", "data.extra_kind=real",
                                                            "data.extra_fraction=0.5"])):
        m = trainer.finetune(build_config("quickstart", common + more + [f"output_dir={tmp_path / name[:4]}"]))
        results[name] = (m["after"]["clean_acc"], m["after"]["pgd_acc"], m["cost"]["optimizer_steps"])
    print(f"extra labelled data on quickstart, 200 labelled + 1,097 extra: {results}")
    (_, pgd_a, steps_a), (_, pgd_b, steps_b) = results["target only"], results["with extra"]
    assert steps_a == steps_b and pgd_b > pgd_a + 0.05
    seen = set().union(*judged)
    assert len(judged) > 60 and len(seen) >= 300 and not seen & extra_digests  # probes and evaluations: target only
    drawn = set().union(*trained)
    assert len(trained) == steps_b and drawn <= extra_digests and len(drawn) > 900  # one draw per minibatch
    record = json.loads((tmp_path / "with" / "config.json").read_text())["robustness"]["options"]["extra"]
    assert record == {"sets": [{"name": "local npz data set (rest.npz)", "hub_id": None, "kind": "real",
                                "generated": False, "size": 1097}], "fraction": 0.5, "per_batch": 32}
    card = (tmp_path / "with" / "README.md").read_text()
    assert "Extra labelled training data, 50% of each training minibatch" in card and "1,097 real" in card


def test_the_record_and_card_name_each_set_its_size_and_kind(monkeypatch):
    """What RobustBench's additional_data reads (name, size, generated) and what the card says, per set."""
    specs = ["npz:hf://datasets/P2333/DM-Improves-AT/cifar10/1m.npz", "npz:/data/real.npz"]
    cfg = build_config("quickstart", [f"data.extra=[{', '.join(specs)}]", "data.extra_kind=[generated, real]"])
    monkeypatch.setitem(extra_data._SIZES, specs[0], 1_000_000)
    monkeypatch.setitem(extra_data._SIZES, specs[1], 5_000)
    rec = extra_data.ExtraDataOption.record(cfg)
    assert rec == {"extra": {"sets": [
        {"name": "P2333/DM-Improves-AT (cifar10/1m.npz)", "hub_id": "P2333/DM-Improves-AT", "kind": "generated",
         "generated": True, "size": 1_000_000},
        {"name": "local npz data set (real.npz)", "hub_id": None, "kind": "real", "generated": False, "size": 5_000}],
        "fraction": 0.7, "per_batch": 149}}
    record = types.SimpleNamespace(training=types.SimpleNamespace(options=rec))
    (line,) = extra_data.ExtraDataOption.card_lines(record)
    assert "70% of each training minibatch" in line and "`P2333/DM-Improves-AT (cifar10/1m.npz)`: 1,000,000 " \
        "generated images (by a model trained only on the target's training split)" in line
    assert "`local npz data set (real.npz)`: 5,000 real external images" in line
