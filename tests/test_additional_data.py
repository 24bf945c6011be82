"""RobustBench's ``additional_data`` as RobustBench's own files use it (shared/robustbench): true for real images
beyond the target's training split, false from scratch, for ImageNet-1k weights fine-tuned on ImageNet-1k and for
generated images (with RobustBench's footnote)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from robustify.publish.card import robustbench_block
from robustify.publish.robustbench import additional_data, imagenet1k_only, model_info

try:
    from tests.zoo_runs import make_record
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from zoo_runs import make_record

SNAPSHOT = Path(__file__).resolve().parents[2] / "shared" / "robustbench" / "model_info"
IMAGENET = {"dataset": "imagenet-1k", "eps": 4 / 255, "n": 5000, "size": 224, "split": "validation"}


def _based_on(record, base: str, hub: str | None):
    return dataclasses.replace(record, training=dataclasses.replace(record.training, base_model=base,
                                                                    base_model_hub_id=hub))


def _with_options(record, options: dict):
    return dataclasses.replace(record, training=dataclasses.replace(record.training, options=options))


def test_a_from_scratch_run_has_no_additional_data():
    for kw in ({}, IMAGENET):
        record = make_record(pretrained=False, **kw)
        assert additional_data(record) == (False, None)
        assert model_info(record)["additional_data"] is False and robustbench_block(record)["additional_data"] is False


def test_imagenet_1k_weights_fine_tuned_on_imagenet_have_none_as_singh_et_al():
    record = make_record(**IMAGENET)  # resnet50.a1_in1k (timm/resnet50.a1_in1k), fine-tuned on ImageNet-1k
    assert additional_data(record) == (False, None)
    info = model_info(record)
    assert info["additional_data"] is False and robustbench_block(record)["additional_data"] is False
    if SNAPSHOT.is_dir():  # RobustBench lists Singh et al.'s AT from clean ImageNet-1k models the same way
        singh = json.loads((SNAPSHOT / "imagenet/Linf/Singh2023Revisiting_ConvNeXt-T-ConvStem.json").read_text())
        assert singh["additional_data"] is info["additional_data"]
    # weights pretrained on more than ImageNet-1k (ImageNet-21k, as Bai2024MixedNUTS's base: true there) are extra data
    wider = _based_on(record, "convnext_tiny.fb_in22k_ft_in1k", "timm/convnext_tiny.fb_in22k_ft_in1k")
    assert additional_data(wider)[0] is True and model_info(wider)["additional_data"] is True


def test_a_cifar_fine_tune_of_an_imagenet_backbone_has_additional_data():
    record = make_record()  # CIFAR-10 from resnet50.a1_in1k
    assert additional_data(record) == (True, None)
    assert model_info(record)["additional_data"] is True and robustbench_block(record)["additional_data"] is True
    if SNAPSHOT.is_dir():  # Debenedetti2022Light's CIFAR-10 XCiTs are fine-tuned from ImageNet: true
        xcit = json.loads((SNAPSHOT / "cifar10/Linf/Debenedetti2022Light_XCiT-S12.json").read_text())
        assert xcit["additional_data"] is True


def test_generated_extra_data_is_not_additional_data_but_gets_robustbenchs_footnote():
    record = make_record(pretrained=False)
    generated = [{"name": "dm-1m", "size": 1_000_000, "generated": True}]
    flag, footnote = additional_data(record, generated)
    assert flag is False and footnote == "It uses additional 1M synthetic images in training."
    info = model_info(record, extra=generated)
    assert info["additional_data"] is False and info["footnote"] == footnote
    if SNAPSHOT.is_dir():  # word for word as RobustBench writes it (Wang2023Better and others)
        notes = {json.loads(p.read_text()).get("footnote") for p in SNAPSHOT.glob("cifar10/Linf/*.json")}
        assert footnote in notes
    two = [{"name": "a", "size": 15_000_000, "generated": True}, {"name": "b", "size": 5_000_000, "generated": True}]
    assert additional_data(record, two) == (False, "It uses additional 20M synthetic images in training.")
    unsized = [{"name": "a", "size": None, "generated": True}]
    assert additional_data(record, unsized)[1] == "It uses additional synthetic images in training."
    # on top of ImageNet weights on CIFAR: true (the weights), and the footnote still names the generated images
    assert additional_data(make_record(), generated) == (True, footnote)


def test_real_extra_data_is_additional_data():
    record = make_record(pretrained=False)
    real = [{"name": "ti-500k", "size": 500_000, "generated": False}]
    assert additional_data(record, real) == (True, None)
    assert model_info(record, extra=real)["additional_data"] is True
    assert additional_data(record, [*real, {"name": "dm", "size": 1000, "generated": True}])[0] is True


@pytest.mark.parametrize(("base", "hub", "only"), [
    ("resnet50.a1_in1k", "timm/resnet50.a1_in1k", True),
    ("convnext_tiny", "timm/convnext_tiny.fb_in1k", True),  # an untagged name: timm's default weights' Hub id
    ("hf-hub:timm/vit_base_patch16_224.augreg_in1k", "timm/vit_base_patch16_224.augreg_in1k", True),
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", False),
    ("tf_efficientnet_b0.ns_jft_in1k", "timm/tf_efficientnet_b0.ns_jft_in1k", False),
    ("convnext_base.clip_laion2b_augreg_ft_in1k", None, False),
    ("resnet50.fb_swsl_ig1b_ft_in1k", None, False),
    ("vit_base_patch16_224.mae", "timm/vit_base_patch16_224.mae", False),  # not a supervised ImageNet-1k tag
    ("hf-hub:someone/robust-resnet50", "someone/robust-resnet50", False),  # not known to be ImageNet-1k only
    ("quickstart", None, False),
])
def test_which_weights_are_imagenet_1k_only(base: str, hub: str | None, only: bool):
    assert imagenet1k_only(_based_on(make_record(**IMAGENET), base, hub)) is only


def test_the_extra_sets_the_record_names_are_read_from_it():
    """The ``data.extra`` option records its sets under ``options.extra.sets`` (name, hub_id, kind, generated, size)."""
    record = make_record(pretrained=False)
    sets = [{"name": "dm-1m", "hub_id": None, "kind": "generated", "generated": True, "size": 1_000_000}]
    named = _with_options(record, {"extra": {"sets": sets}})
    assert additional_data(named) == (False, "It uses additional 1M synthetic images in training.")
    assert model_info(named)["footnote"] == "It uses additional 1M synthetic images in training."
    real = [dict(sets[0], kind="real", generated=False)]
    named = _with_options(record, {"extra": {"sets": real}})
    assert additional_data(named)[0] is True and robustbench_block(named)["additional_data"] is True


def test_the_cards_datasets_name_every_hub_set_the_weights_were_trained_on():
    """The card's ``datasets`` metadata lists the target and each Hub set an option mixed in (extra labelled data, an
    unlabeled pool), each once; a local set has no Hub id and is not listed."""
    from robustify.publish.card import trained_on

    record = make_record(pretrained=False)
    record = dataclasses.replace(record, training=dataclasses.replace(record.training,
                                                                      dataset_hub_id="uoft-cs/cifar10"))
    assert trained_on(record) == ["uoft-cs/cifar10"]
    sets = [{"name": "org/gen (x.npz)", "hub_id": "org/gen", "kind": "generated", "generated": True, "size": 10},
            {"name": "local npz data set (a.npz)", "hub_id": None, "kind": "real", "generated": False, "size": 5},
            {"name": "org/gen (y.npz)", "hub_id": "org/gen", "kind": "generated", "generated": True, "size": 10}]
    pool = {"data": "org/pool", "hub_id": "org/pool", "ratio": 0.5, "teacher": "default"}
    named = _with_options(record, {"extra": {"sets": sets}, "unlabeled": pool})
    assert trained_on(named) == ["uoft-cs/cifar10", "org/pool", "org/gen"]
