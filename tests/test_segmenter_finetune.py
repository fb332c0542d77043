"""hfpc finetune-segmenter: learning on generated products, resume, SAM models, bad rows, losses."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hfpc_reward.cli import main as cli_main
from hfpc_reward.config import ConfigError, load_config
from hfpc_reward.consistency.efficientsam import EfficientSamSegmenter
from hfpc_reward.consistency.geometry import mask_box
from hfpc_reward.consistency.segmenter_config import SegmenterFinetuneConfig
from hfpc_reward.consistency.segmenter_train import _split, finetune_segmenter, mask_iou, segmentation_losses
from hfpc_reward.data.manifest import read_jsonl
from hfpc_reward.errors import UsageError
from hfpc_reward.images import load_mask, load_rgb
from hfpc_reward.runs import OutputExistsError, ResumeMismatchError
from hfpc_reward.sample.pairs import generate_products
from hfpc_reward.testing.tiny_efficientsam import write_tiny_efficientsam


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    """80 generated studio products (64 px) with exact masks: train + held-out split by original."""
    return generate_products(tmp_path_factory.mktemp("products"), n_products=80, seed=0, size=64)


@pytest.fixture(scope="module")
def tiny_kit(tmp_path_factory):
    out = tmp_path_factory.mktemp("kit")
    return out, write_tiny_efficientsam(out / "efficientsam")


def _config(tiny_kit, products, tmp_path, *overrides) -> SegmenterFinetuneConfig:
    kit_dir, configs = tiny_kit
    path = kit_dir / "segmenter.yaml"
    path.write_text(yaml.safe_dump(configs["segmenter_efficientsam"]))
    base = [f"data.train_manifest={products}", f"out_dir={tmp_path / 'run'}"]
    return load_config(SegmenterFinetuneConfig, path, base + list(overrides))


def test_finetuning_raises_held_out_miou(tiny_kit, products, tmp_path, capsys):
    kit_dir, configs = tiny_kit
    config_path = kit_dir / "segmenter.yaml"
    config_path.write_text(yaml.safe_dump(configs["segmenter_efficientsam"]))
    argv = ["finetune-segmenter", "--config", str(config_path), f"data.train_manifest={products}"]
    assert cli_main(argv + [f"out_dir={tmp_path / 'run'}", "train.epochs=12"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    before, best = summary["before"], summary["best"]
    with capsys.disabled():
        print(
            f"\ntiny EfficientSAM on 16 held-out products: mIoU {before['miou']:.3f} -> {best['miou']:.3f}, "
            f"boundary F {before['boundary_f']:.3f} -> {best['boundary_f']:.3f} (epoch {best['epoch']})"
        )
    assert best["images"] == 16  # 20% of the 80 originals held out
    assert best["miou"] > before["miou"] + 0.3
    assert best["miou"] > 0.6 and best["boundary_f"] > before["boundary_f"] + 0.2
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(13)) and "train_loss" in records[1]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["train"]["epochs"] == 12
    # the best checkpoint is an ordinary EfficientSAM folder that reproduces the best held-out mIoU
    segmenter = EfficientSamSegmenter.from_pretrained(tmp_path / "run" / "best")
    _, val_rows = _split(load_config(SegmenterFinetuneConfig, None, [f"data.train_manifest={products}"]).data)
    ious = []
    for row in val_rows:
        image = load_rgb(row.origin)  # some originals are RGBA cut-outs: composited over white
        mask = load_mask(row.mask, size=image.size)
        (predicted,) = segmenter.segment([image], [mask_box(mask)[None]])
        ious.append((predicted[0] & mask).sum() / (predicted[0] | mask).sum())
    assert len(val_rows) == 16 and np.mean(ious) == pytest.approx(best["miou"], abs=0.01)


def test_resume_continues_exactly(tiny_kit, products, tmp_path, monkeypatch):
    from hfpc_reward.consistency import segmenter_train

    overrides = ["train.epochs=3", "model.train_encoder_blocks=0", "train.learning_rate=1e-2"]
    finetune_segmenter(_config(tiny_kit, products, tmp_path / "straight", *overrides))

    save_state = segmenter_train._save_state

    def crash_after_epoch_2(accelerator, state_dir, trainer, generator):
        save_state(accelerator, state_dir, trainer, generator)
        if trainer["epoch"] == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(segmenter_train, "_save_state", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune_segmenter(_config(tiny_kit, products, tmp_path / "crashed", *overrides))
    monkeypatch.setattr(segmenter_train, "_save_state", save_state)
    summary = finetune_segmenter(_config(tiny_kit, products, tmp_path / "crashed", *overrides), resume=True)

    straight = read_jsonl(tmp_path / "straight" / "run" / "metrics.jsonl")
    resumed = read_jsonl(tmp_path / "crashed" / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3]
    for left, right in zip(straight, resumed):
        assert left == pytest.approx(right, rel=1e-5)
    assert summary["best"]["miou"] == max(r["miou"] for r in straight[1:])
    # a changed learning rate or manifest is refused by name; a device change is safe
    for changed in ("train.learning_rate=1e-3", f"data.train_manifest={tmp_path / 'other.jsonl'}"):
        if "manifest" in changed:
            (tmp_path / "other.jsonl").write_text(products.read_text().replace(".png", ".png", 1))
        with pytest.raises(ResumeMismatchError, match=changed.split("=")[0].replace(".", r"\.")):
            finetune_segmenter(
                _config(tiny_kit, products, tmp_path / "crashed", *overrides, changed), resume=True
            )
    with pytest.raises(OutputExistsError):  # neither --resume nor --overwrite
        finetune_segmenter(_config(tiny_kit, products, tmp_path / "crashed", *overrides))
    again = finetune_segmenter(
        _config(tiny_kit, products, tmp_path / "crashed", *overrides, "train.cpu=true"), resume=True
    )
    assert again["best"] == summary["best"]  # nothing left to train


def test_sam_model_is_finetuned_and_loads_as_sam_segmenter(products, tmp_path):
    from hfpc_reward.consistency.grounded_sam import SamSegmenter
    from hfpc_reward.testing.tiny_detection import write_tiny_grounded_sam

    sam_dir = write_tiny_grounded_sam(tmp_path / "kit")["consistency_grounded_sam"]["grounded"]["sam_id"]
    overrides = [
        f"model.checkpoint={sam_dir}",
        "model.kind=sam",
        "train.epochs=4",
        "train.learning_rate=1e-2",
    ]
    overrides += [f"data.train_manifest={products}", f"out_dir={tmp_path / 'run'}"]  # mask decoder only
    summary = finetune_segmenter(load_config(SegmenterFinetuneConfig, None, overrides))
    assert summary["best"]["miou"] > summary["before"]["miou"] + 0.2
    segmenter = SamSegmenter.from_pretrained(str(tmp_path / "run" / "best"))
    image = Image.new("RGB", (80, 60), "white")
    (masks,) = segmenter.segment([image], [np.array([[10, 10, 50, 40]])])
    assert masks.shape == (1, 60, 80) and masks.dtype == bool


def test_bad_rows_are_skipped_not_fatal(tiny_kit, products, tmp_path, caplog):
    rows = read_jsonl(products)
    manifest = tmp_path / "products.jsonl"
    fixed = [{**row, "origin": str(products.parent / row["origin"]), "mask": str(products.parent / row["mask"])}
             for row in rows[:10]]  # fmt: skip
    broken = [
        {"origin": str(tmp_path / "missing.png"), "mask": fixed[0]["mask"]},
        {"origin": fixed[1]["origin"]},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in broken + fixed))
    config = _config(tiny_kit, manifest, tmp_path, "train.epochs=1", "model.train_encoder_blocks=0")
    with caplog.at_level(logging.WARNING):
        summary = finetune_segmenter(config)
    assert summary["train_images"] + summary["val_images"] == 10
    assert "missing.png" in caplog.text and "row has no 'mask'" in caplog.text


def test_config_errors_say_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="model.kind must be one of"):
        load_config(SegmenterFinetuneConfig, None, ["model.kind=unet"])
    with pytest.raises(ConfigError, match="box_jitter"):
        load_config(SegmenterFinetuneConfig, None, ["data.box_jitter=0.7"])
    with pytest.raises(UsageError, match="data.train_manifest is empty"):
        finetune_segmenter(load_config(SegmenterFinetuneConfig, None, [f"out_dir={tmp_path}"]))


def test_loss_prefers_the_matching_mask_and_iou_is_exact():
    cfg = SegmenterFinetuneConfig().train
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1.0
    right = target[0] * 20 - 10  # confident and correct
    wrong = -right
    half = torch.where(torch.arange(8)[None, :] < 4, right, wrong)  # left half right, right half wrong
    logits = torch.stack([wrong, right, half])[None]  # (1, 3, 8, 8)
    losses = segmentation_losses(logits, target, cfg)
    assert losses.shape == (1, 3) and losses[0].argmin() == 1 and losses[0, 1] < 1e-3
    iou = mask_iou(logits, target)
    # half: 8 product pixels kept, 24 background pixels added -> 8 / (32 + 16 - 8)
    assert iou[0].tolist() == pytest.approx([0.0, 1.0, 8 / 40])


@pytest.mark.parametrize("name", ["efficientsam_ti", "sam_vit_base", "tiny"])
def test_shipped_configs_load(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "segmenter" / f"{name}.yaml"
    config = load_config(SegmenterFinetuneConfig, path)
    assert config.model.kind in ("efficientsam", "sam") and config.model.checkpoint
