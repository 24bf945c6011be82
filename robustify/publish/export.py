"""Write a run folder: timm hub-format weights, the model card, metrics, the resolved recipe and plots.

``model.safetensors`` + ``config.json`` are exactly what ``timm.models.save_for_hf`` writes for the *backbone*
(normalization stays in ``pretrained_cfg`` mean/std), so ``timm.create_model("local-dir:RUN_DIR", pretrained=True)``
loads the robust weights without robustify. ``config.json`` also carries the ``robustness`` block and
``metrics.json`` the results, both rendered from the run's record (:mod:`robustify.publish.runrecord`), as is the card.
Everything is written into a temporary folder beside the run folder and renamed into place file by file, readable
by everyone (0644) like any other file the run writes.

Must not: write anything but the run's record and its weights, or leave a half-written folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch

from ..fileio import atomic_write_text
from ..models import RobustModel
from . import public
from .card import render_card
from .runrecord import RunRecord

EXPORT_FILES = ("model.safetensors", "config.json")


def save_backbone(model: RobustModel, folder: Path, robustness: dict[str, Any] | None = None,
                  label_names: list[str] | None = None) -> None:
    """``save_for_hf`` of the backbone with the run's one preprocessing as its ``pretrained_cfg``.

    ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``, mean and std are those training and evaluation
    used, so ``timm.data.create_transform(**resolve_data_config(model=timm.create_model("local-dir:RUN",
    pretrained=True)))`` reproduces robustify's evaluation preprocessing. ``config.json`` also gets a
    ``preprocessing`` block (robustify's full record: the attack resolution and the in-model resize, if any), from
    which ``robustify.load(RUN)`` rebuilds the same model.
    """
    from ..data.preprocessing import Preprocessing

    backbone = model.backbone
    pre = getattr(model, "preprocessing", None)
    if pre is None:  # a model built without one: its current input size and the backbone's own transform settings
        pre = Preprocessing.from_data_config(dict(backbone.pretrained_cfg, input_size=tuple(model.input_size)))
    original = backbone.pretrained_cfg
    cfg = dict(original)
    if tuple(cfg.get("input_size", ()))[1:] != tuple(pre.backbone_input_size)[1:]:
        cfg["pool_size"] = None
    cfg.update(pre.pretrained_cfg())
    backbone.pretrained_cfg = cfg
    model_config: dict[str, Any] = {"preprocessing": pre.record()}
    if robustness is not None:
        model_config["robustness"] = robustness
    if label_names:
        model_config["label_names"] = list(label_names)
    try:
        timm.models.save_for_hf(backbone, str(folder), model_config=model_config, safe_serialization=True)
    finally:
        backbone.pretrained_cfg = original


def write_run_folder(run_dir: Path, model: RobustModel, record: RunRecord, recipe_yaml: str,
                     label_names: list[str] | None = None) -> None:
    """Weights + config.json (with ``record``'s robustness block), metrics.json, recipe.yaml and the card.

    Every file is written into one temporary folder first, the weights are hashed there and the hash goes into the
    record (config.json and metrics.json, :func:`runrecord.verify_weights`), and only then are the files renamed
    into place, weights last: a full disk or a kill leaves the previous state, never weights beside another model's
    record. A write that fails for lack of space or permission is one line (:func:`write_failed`).
    """
    from ..fileio import atomic_write_json, read_json
    from .runrecord import WEIGHTS_FILE, file_sha256, seal

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=run_dir, prefix=".export-") as tmp:
            tmp_dir = Path(tmp)
            save_backbone(model, tmp_dir, None, label_names)
            record.training.weights_sha256 = file_sha256(tmp_dir / WEIGHTS_FILE)
            record.eval_sha256 = None  # an eval.json left from an earlier export describes an older record
            record.recipe_sha256 = hashlib.sha256(recipe_yaml.encode("utf-8")).hexdigest()
            config, metrics = read_json(tmp_dir / "config.json"), record.metrics()
            config["robustness"] = record.robustness()
            seal(config, metrics)
            atomic_write_json(tmp_dir / "config.json", config)
            atomic_write_json(tmp_dir / "metrics.json", metrics)
            atomic_write_text(tmp_dir / "recipe.yaml", recipe_yaml)
            license_ = model.backbone.pretrained_cfg.get("license")
            plots = [p.name for p in sorted(run_dir.glob("*.png"))]
            card = render_card(record, license=license_, recipe_yaml=public.recipe(recipe_yaml, record.training.name),
                               files=plots)
            atomic_write_text(tmp_dir / "README.md", str(card))
            # the record first, the weights it names last: a kill in between leaves a mismatch that every command
            # refuses (and --resume re-exports), never a record that silently describes other weights
            for name in ("config.json", "metrics.json", "recipe.yaml", "README.md", WEIGHTS_FILE):
                os.chmod(tmp_dir / name, 0o644)  # save_for_hf's files inherit the private temporary folder's 0600
                os.replace(tmp_dir / name, run_dir / name)  # same file system: an atomic rename
    except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own error type
        raise write_failed(e, run_dir, "the run folder's model files") from None


def write_failed(error: BaseException, run_dir: Path, what: str) -> BaseException:
    """A failed export as the user needs it: one line for a full disk or a read-only folder, else the error."""
    from ..errors import UserError
    from ..fileio import write_error_cause

    cause = write_error_cause(error)
    if cause is None:
        return error
    return UserError(f"{what} could not be written in {run_dir}: {cause}; nothing was changed there (the checkpoints "
                     f"are kept); free space and write them with: robustify finetune --output-dir {run_dir} --resume")


def load_state_dict_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
