"""Unlabeled data for robust self-training (Carmon et al. 2019; Alayrac et al. 2019): ``data.unlabeled``,
``data.unlabeled_ratio`` and ``train.teacher``.

Once, before the first adversarial stage trains, a teacher labels the unlabeled images: ``train.teacher`` (any
model spec ``finetune --model`` takes) or, by default, the model as it is at that moment: the natural backbone before
adversarial fine-tuning (after a natural first stage, if the recipe has one). Every process labels only its own share
(examples ``rank::world_size``) and stores the labels and the teacher's confidence (its softmax maximum) in
``RUN/pseudo_labels/rank<r>of<w>.safetensors``; a resumed run reads them back instead of labelling again, so it
trains on exactly the same pseudo-labels. The images themselves are decoded again from the spec (deterministic).

Each training minibatch of ``data.batch_size`` labelled examples gets ``round(B * r / (1 - r))`` pseudo-labelled ones
(``r = data.unlabeled_ratio``, the unlabeled share of the minibatch; 0.5: as many as labelled), drawn with
replacement from the process's share by a generator seeded from (seed, epoch, minibatch, rank), so a resumed run
draws the same ones. The method then treats them like labelled examples (its attack and its loss: CE, or TRADES's
KL and CE); the cost counts them as examples.

Leaks: unlabeled images that are byte-identical (after the run's preprocessing) to an image of the evaluation subset
or of the held-out probe are dropped before labelling, and their number is recorded, so no test or probe example can
enter training through the unlabeled set. The labels of the unlabeled spec, if it has any, are never read.
Written here because neither timm nor datasets nor accelerate has a pseudo-labelling step; it must not change the
labelled loaders, the probe or the evaluation.

The option (:class:`UnlabeledOption`) owns the keys' checks, the plan's extra examples and note, the labelling
before the stage trains (its setup), the mixing into each minibatch (its batch hook), the cost block's ``unlabeled``
entry, the record and the card line, and what RobustBench's ``additional_data`` reads of it (``added_data``: real
images beyond the target's training split).

Must not: label evaluation or probe examples.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...data import decode_all, get_dataset, to_unit
from ...errors import ConfigError, UserError
from .base import Option

FOLDER = "pseudo_labels"


def per_batch(batch_size: int, ratio: float) -> int:
    """Pseudo-labelled examples added to a minibatch of ``batch_size`` labelled ones, for an unlabeled share
    ``ratio`` of the whole minibatch (at least one)."""
    return max(1, round(batch_size * ratio / (1 - ratio)))


def _digests(x: torch.Tensor) -> set[bytes]:
    return {hashlib.sha256(t.contiguous().numpy().tobytes()).digest() for t in x}


@dataclass
class Unlabeled:
    """This process's pseudo-labelled share and how it is mixed into the minibatches."""

    x: torch.Tensor  # uint8 (n, C, H, W), CPU
    labels: torch.Tensor  # long (n,), the teacher's argmax
    confidence: torch.Tensor  # float (n,), the teacher's softmax maximum
    per_batch: int
    seed: int
    rank: int
    info: dict[str, Any]

    def draw(self, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pseudo-labelled examples of minibatch ``batch`` of ``epoch`` (a pure function of the position)."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 10_007 + batch) * 131 + self.rank)
        idx = torch.randint(len(self.x), (self.per_batch,), generator=g)
        return self.x[idx], self.labels[idx]

    def mix(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled minibatch (float [0,1] on the device) with its pseudo-labelled examples appended."""
        xu, yu = self.draw(epoch, batch)
        xu = to_unit(xu.to(x.device, non_blocking=True))
        return torch.cat([x, xu.to(x.dtype)]), torch.cat([y, yu.to(y.device)])


@torch.no_grad()
def _label(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's labels and confidence in true fp32: through the evaluation kernel's :class:`FP32` view (the
    module's own forward with autocast off; Accelerate wraps a prepared model's ``forward`` in bf16 autocast, and
    the default teacher is that prepared module) and with TF32 off (:func:`fp32_math`), as every evaluation."""
    from ...evaluate.kernel import FP32, fp32_math

    was_training = model.training
    model.eval()
    view = FP32(model)
    labels, conf = [], []
    try:
        with fp32_math():
            for i in range(0, len(x), batch_size):
                p = torch.softmax(view(to_unit(x[i:i + batch_size].to(device))).float(), dim=1)
                c, lab = p.max(dim=1)
                labels.append(lab.cpu())
                conf.append(c.cpu())
    finally:
        model.train(was_training)
    return torch.cat(labels), torch.cat(conf)


def _teacher(cfg: Any, loaders: Any, current: torch.nn.Module, head_replaced: bool) -> tuple[torch.nn.Module, str]:
    from ...models import build_robust_model, load_backbone

    if cfg.train.teacher:
        base = load_backbone(cfg.train.teacher, pretrained=True)
        teacher = build_robust_model(base.backbone, loaders.preprocessing, source=cfg.train.teacher)
        name = cfg.train.teacher
    else:
        if head_replaced:
            raise UserError(f"data.unlabeled needs a teacher that knows the {loaders.num_classes} classes: the "
                            f"backbone's classifier was replaced for this data, so it cannot label; give "
                            "train.teacher MODEL, or start with a natural stage that trains the new head")
        teacher, name = current, "the model before adversarial fine-tuning"
    classes = getattr(getattr(teacher, "backbone", teacher), "num_classes", loaders.num_classes)
    if classes != loaders.num_classes:
        raise UserError(f"train.teacher={cfg.train.teacher!r} predicts {classes} classes, the data has "
                        f"{loaders.num_classes}; give a teacher trained on these classes")
    return teacher, name


def prepare(cfg: Any, run_dir: Path, accelerator: Any, loaders: Any, current: torch.nn.Module,
            head_replaced: bool) -> Unlabeled:
    """This process's pseudo-labelled share: read from the run folder when a (resumed) run stored it, else decoded,
    cleaned of eval/probe duplicates, labelled by the teacher and stored."""
    from safetensors.torch import load_file, save_file

    from ...publish.public import dataset_name

    rank, world = accelerator.process_index, accelerator.num_processes
    d = cfg.data
    try:
        ds = get_dataset(d.unlabeled, d.train_split, holdout=d.holdout)
    except UserError as e:
        raise UserError(f"data.unlabeled={d.unlabeled!r}: {e}") from None
    x, _ = decode_all(ds, loaders.preprocessing.transform())  # the spec's labels, if any, are dropped here
    px = (loaders.probe[0] * 255).round().to(torch.uint8)
    seen = _digests(loaders.eval_examples()[0]) | _digests(px)
    keep = [i for i, t in enumerate(x) if hashlib.sha256(t.contiguous().numpy().tobytes()).digest() not in seen]
    dropped = len(x) - len(keep)
    share = keep[rank::world]
    if not share:
        raise UserError(f"data.unlabeled={d.unlabeled!r} leaves no unlabeled example for process {rank} of {world} "
                        f"({len(x)} examples, {dropped} dropped as duplicates of evaluation or probe images)")
    x = x[share]
    path = Path(run_dir) / FOLDER / f"rank{rank}of{world}.safetensors"
    n_per = per_batch(d.batch_size, d.unlabeled_ratio)
    if path.is_file():  # a resumed run: the same pseudo-labels
        stored = load_file(str(path))
        if stored["index"].tolist() != share:
            raise UserError(f"{path}: the stored pseudo-labels are for other examples than data.unlabeled gives now; "
                            "start a new --output-dir")
        labels, conf, teacher_name = stored["labels"], stored["confidence"], "stored"
    else:
        teacher, teacher_name = _teacher(cfg, loaders, current, head_replaced)
        labels, conf = _label(teacher.to(accelerator.device), x, accelerator.device, d.eval_batch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp_{path.name}")
        save_file({"index": torch.tensor(share, dtype=torch.long), "labels": labels, "confidence": conf}, str(tmp),
                  metadata={"teacher": cfg.train.teacher or "default", "dropped": str(dropped)})
        tmp.replace(path)
    info = {"data": dataset_name(d.unlabeled)[0], "ratio": d.unlabeled_ratio, "per_batch": n_per,
            "teacher": cfg.train.teacher or "default (the model before adversarial fine-tuning)",
            "examples_this_process": len(share), "examples": len(keep), "dropped_duplicates_of_eval_or_probe": dropped,
            "mean_confidence": float(conf.mean()) if len(conf) else 0.0}
    accelerator.print(f"robustify: data.unlabeled: {len(keep)} examples pseudo-labelled ({teacher_name}; {dropped} "
                      f"dropped as copies of eval/probe images), {n_per} per minibatch of {d.batch_size} labelled, "
                      f"mean teacher confidence {info['mean_confidence']:.2f} on process {rank}")
    return Unlabeled(x, labels.long(), conf, n_per, cfg.train.seed, rank, info)


class UnlabeledOption(Option):
    """``data.unlabeled`` with an attack method: robust self-training on pseudo-labelled examples."""

    name = "unlabeled"
    keys = {"data.unlabeled": "SPEC", "data.unlabeled_ratio": "0.5", "train.teacher": "MODEL"}
    title = "robust self-training on pseudo-labelled data"
    fixed_keys = ("data.unlabeled", "train.teacher")  # the same pseudo-labels in every stage

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return bool(cfg.data.unlabeled) and cfg.method.name != "natural"

    @classmethod
    def check(cls, cfg: Any) -> None:
        if not 0 < cfg.data.unlabeled_ratio < 1:
            raise ConfigError(f"data.unlabeled_ratio={cfg.data.unlabeled_ratio:g} is outside (0, 1); it is the "
                              "pseudo-labelled share of each minibatch, e.g. 0.5")
        for key, value in (("data.unlabeled", cfg.data.unlabeled), ("train.teacher", cfg.train.teacher)):
            if value is not None and not str(value).strip():
                raise ConfigError(f"{key} is empty; give a data spec (data.unlabeled) or a model (train.teacher), or "
                                  "null")
        if cfg.train.teacher is not None and cfg.data.unlabeled is None:
            raise ConfigError("train.teacher is set but data.unlabeled is not; the teacher only labels data.unlabeled")

    @classmethod
    def extra_examples(cls, cfg: Any) -> int:
        return per_batch(cfg.data.batch_size, cfg.data.unlabeled_ratio)

    @classmethod
    def plan_notes(cls, stage: str, cfg: Any, data_passes: int) -> list[str]:
        extra = per_batch(cfg.data.batch_size, cfg.data.unlabeled_ratio)
        teacher = cfg.train.teacher or "the model before adversarial fine-tuning"
        return [f"stage {stage}: unlabeled data {cfg.data.unlabeled!r}: {extra} pseudo-labelled examples join each "
                f"minibatch of {cfg.data.batch_size} (counted above), labelled once by {teacher} before the stage"]

    @classmethod
    def record(cls, cfg: Any) -> dict[str, Any]:
        if not cfg.data.unlabeled:
            return {}
        from ...publish import public

        name, hub_id = public.dataset_name(cfg.data.unlabeled)
        return {"unlabeled": {"data": name, "hub_id": hub_id, "ratio": cfg.data.unlabeled_ratio,
                              "teacher": public.model_name(cfg.train.teacher)[0] if cfg.train.teacher else "default"}}

    @classmethod
    def card_lines(cls, record: Any) -> list[str]:
        u = (record.training.options or {}).get("unlabeled")
        if u is None:
            return []
        return [f"- Robust self-training: unlabeled images from `{u.get('data')}`, pseudo-labelled once by the "
                f"teacher ({u.get('teacher')}), made {u.get('ratio', 0):.0%} of each training minibatch."]

    @classmethod
    def added_data(cls, record: Any) -> list[dict[str, Any]]:
        """The unlabeled pool: real images from outside the target's training split (its size is not recorded)."""
        u = (record.training.options or {}).get("unlabeled")
        return [] if u is None else [{"name": u.get("data"), "hub_id": u.get("hub_id"), "size": None,
                                      "generated": False}]

    def setup(self, run: Any) -> None:
        # labelled once, before training; the default teacher (the model before adversarial fine-tuning) labels in
        # fp32, whatever the precision
        self.unlabeled = prepare(self.cfg, run.run_dir, run.accelerator, run.loaders, run.evaluation_model(run.raw),
                                 run.head_replaced)

    def batch(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.unlabeled.mix(x, y, epoch, batch)  # the minibatch's pseudo-labelled examples appended

    def cost_fields(self, run: Any) -> dict[str, Any]:
        return {"unlabeled": self.unlabeled.info}
