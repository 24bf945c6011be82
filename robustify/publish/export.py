"""Write a run folder: timm hub-format weights, the model card, metrics, the resolved recipe and plots.

``model.safetensors`` + ``config.json`` are exactly what ``timm.models.save_for_hf`` writes for the *backbone*
(normalization stays in ``pretrained_cfg`` mean/std), so ``timm.create_model("local-dir:RUN_DIR", pretrained=True)``
loads the robust weights without robustify. ``config.json`` also carries the ``robustness`` block and
``metrics.json`` the results, both rendered from the run's record (:mod:`robustify.publish.runrecord`), as is the card.
The weights are saved into a temporary folder inside the run folder, the other files are written beside their
targets, and all are renamed into place (the record first, the weights last), readable by everyone (0644) like any
other file the run writes. The file names and the all-or-none write are ``runfolder.py``'s.

Must not: write anything but the run's record and its weights, or leave a half-written folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import timm

from ..models import RobustModel
from ..runfolder import CARD, CONFIG, EXPORT_TEMP_PREFIX, RECIPE, WEIGHTS, RunFolder
from .card import run_card
from .runrecord import RunRecord


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

    The weights are saved into a temporary folder first and hashed there, and the hash goes into the record
    (config.json and metrics.json, :func:`runrecord.verify_weights`); then the record, the recipe and the card replace
    the folder's together (:meth:`RunFolder.write`: all written whole before any is renamed), and the weights are
    renamed into place last: a full disk or a kill leaves the previous state, never weights beside another model's
    record. A write that fails for lack of space or permission is one line (:func:`write_failed`).
    """
    from ..fileio import file_sha256

    folder = RunFolder(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=run_dir, prefix=EXPORT_TEMP_PREFIX) as tmp:
            saved = RunFolder(tmp)
            save_backbone(model, saved.path, None, label_names)
            record.training.weights_sha256 = file_sha256(saved / WEIGHTS)
            record.eval_sha256 = None  # an eval.json left from an earlier export describes an older record
            record.recipe_sha256 = hashlib.sha256(recipe_yaml.encode("utf-8")).hexdigest()
            config = saved.read_json(CONFIG)  # timm's, from save_for_hf
            files: dict[str, bytes | str] = {**record.files(config), RECIPE: recipe_yaml,
                                             CARD: run_card(record, config, recipe_yaml, folder.plots())}
            # the record first, the weights it names last: a kill in between leaves a mismatch that every command
            # refuses (and --resume re-exports), never a record that silently describes other weights
            folder.write(files)
            os.chmod(saved / WEIGHTS, 0o644)  # save_for_hf's files inherit the private temporary folder's 0600
            os.replace(saved / WEIGHTS, folder / WEIGHTS)  # same file system: an atomic rename
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
