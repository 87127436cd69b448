"""Segmentation fine-tuning: loss goes down on a fixed batch, the run writes Dice/HD95 and reloads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mrfound.errors import ConfigError
from mrfound.finetune.config import FinetuneConfig
from mrfound.finetune.segment import evaluate_segmenter, finetune_segmenter, segmentation_volume
from mrfound.models.checkpoint import load_model
from mrfound.models.config import EncoderConfig
from mrfound.models.encoder import MultiSequenceViT
from mrfound.models.heads import Segmenter, make_segmentation_head, param_groups_layer_decay


def test_a_few_steps_decrease_the_segmentation_loss() -> None:
    torch.manual_seed(0)
    enc = MultiSequenceViT(EncoderConfig(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2))
    model = Segmenter(enc, make_segmentation_head(enc, feature_size=8))
    image = torch.rand(2, 8, 16, 16, 16)
    available = torch.zeros(2, 8, dtype=torch.bool)
    available[:, 0] = True
    mask = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    mask[:, :, 3:13, 3:13, 3:13] = 1
    mask[:, :, 6:10, 6:10, 6:10] = 2
    image[:, 0] += mask[:, 0].float()  # the label is visible in the image
    batch = {"image": image, "available": available, "mask": mask}
    opt = torch.optim.AdamW(
        [
            {"params": g["params"], "lr": 3e-3 * g["lr_scale"]}
            for g in param_groups_layer_decay(model, 0.0, 0.75)
        ]
    )
    losses = []
    for _ in range(12):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_finetune_segment_run(tiny_cohort, tiny_checkpoint, preprocess_cache, tmp_path) -> None:
    out = tmp_path / "seg"
    cfg = FinetuneConfig(
        task="segment",
        checkpoint=str(tiny_checkpoint),
        manifest=str(tiny_cohort),
        out=str(out),
        steps=4,
        batch_size=2,
        feature_size=8,
        skip_source="image",
        samples_per_case=1,
        background_crops=0.5,
        intensity_augment=0.5,
        organ_augment=0.5,
        spatial_augment=0.5,
        head_only_steps=2,  # the decoder alone first, then the whole model
        cache_dir=str(preprocess_cache),
        tensorboard=False,
        val_fraction=0.2,
    )
    summary = finetune_segmenter(cfg)
    val = json.loads((out / "val_metrics.json").read_text())["final"]
    assert val["n_cases"] == summary["n_val"] > 0
    assert 0 <= val["liver"]["dice"] <= 1 and val["liver"]["hd95"] >= 0
    table = pd.read_csv(out / "val_segmentation.csv")
    assert list(table.columns) == ["case", "liver_dice", "liver_hd95", "lesion_dice", "lesion_hd95"]
    model, cfg_json = load_model(out / "final")
    assert cfg_json["architecture"] == "segmenter" and cfg_json["head"]["feature_size"] == 8
    assert cfg_json["head"]["skip_source"] == "image" and cfg_json["head"]["skip_layers"] == []
    prov = cfg_json["provenance"]
    assert prov["task"] == "segment" and prov["steps"] == 4 and prov["n_val"] == summary["n_val"]
    assert prov["other_lesions_label_3"] == "trained as lesion (2)" and prov["from_scratch"] is False
    saved_cfg = json.loads((out / "config.json").read_text())
    assert saved_cfg["background_crops"] == 0.5 and saved_cfg["intensity_augment"] == 0.5
    assert saved_cfg["organ_augment"] == 0.5 and saved_cfg["head_only_steps"] == 2
    assert saved_cfg["spatial_augment"] == 0.5
    # reloaded weights give the same metrics
    from mrfound.data.manifest import Manifest, read_manifest
    from mrfound.finetune.common import load_encoder

    pre = load_encoder(out / "final").preprocess
    m = read_manifest(tiny_cohort)
    val_m = Manifest.from_cases([c for c in m.cases if c.case in set(table["case"])], m.root)
    again, table2 = evaluate_segmenter(model, val_m, pre, cache_dir=preprocess_cache)
    # (a case's first, uncached read is float32; later reads come from the float16 cache: tiny differences)
    saved = table.set_index("case").loc[table2["case"], "liver_dice"].to_numpy()
    assert np.allclose(table2["liver_dice"].to_numpy(), saved, atol=2e-3)
    from mrfound.data.dataset import MRDataset

    sample = MRDataset(val_m, pre, mode="full", cache_dir=preprocess_cache)[0]
    labels = segmentation_volume(model, sample)
    assert labels.shape == tuple(sample["image"].shape[1:]) and labels.dtype == np.uint8


def test_skip_source_is_validated(tiny_cohort, tmp_path) -> None:
    cfg = FinetuneConfig(task="segment", from_scratch=True, manifest=str(tiny_cohort), out=str(tmp_path))
    cfg.skip_source = "conv"
    with pytest.raises(ConfigError, match="skip_source.*must be one of tokens, image"):
        cfg.validate()
    cfg.skip_source = "image"
    cfg.background_crops = 1.5
    with pytest.raises(ConfigError, match="background_crops"):
        cfg.validate()
    cfg.background_crops = 0.0
    cfg.intensity_augment = 2.0
    with pytest.raises(ConfigError, match="intensity_augment"):
        cfg.validate()
    cfg.intensity_augment = 0.0
    cfg.organ_augment = -0.5
    with pytest.raises(ConfigError, match="organ_augment"):
        cfg.validate()
    cfg.organ_augment, cfg.task = 0.5, "classify"
    with pytest.raises(ConfigError, match="organ_augment.*segment only"):
        cfg.validate()
    cfg.organ_augment, cfg.spatial_augment = 0.0, 1.5
    with pytest.raises(ConfigError, match="spatial_augment"):
        cfg.validate()
