"""Classification fine-tuning: loss goes down, the checkpoint reloads with identical outputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mrfound.errors import ConfigError
from mrfound.finetune.classify import finetune_classifier, predict_classifier
from mrfound.finetune.common import source_for
from mrfound.finetune.config import FinetuneConfig
from mrfound.models.checkpoint import load_model
from mrfound.pretrain.trainer import read_log


@pytest.fixture(scope="module")
def cls_run(tiny_cohort, tiny_checkpoint, preprocess_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "run"
    cfg = FinetuneConfig(
        task="classify",
        checkpoint=str(tiny_checkpoint),
        manifest=str(tiny_cohort),
        out=str(out),
        steps=24,
        batch_size=4,
        lr=2e-3,
        log_every=4,
        cache_dir=str(preprocess_cache),
        sequence_dropout=0.2,
        n_boot=50,
        tensorboard=False,
        eval_every=12,
    )
    summary = finetune_classifier(cfg)
    return out, summary


def test_finetune_loss_decreases_and_writes_outputs(cls_run) -> None:
    out, summary = cls_run
    losses = [r["loss"] for r in read_log(out / "log.jsonl") if "loss" in r]
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    for name in (
        "final/config.json",
        "final/model.safetensors",
        "split.csv",
        "val_metrics.json",
        "val_predictions.csv",
        "config.json",
    ):
        assert (out / name).is_file(), name
    split = pd.read_csv(out / "split.csv")
    assert set(split["role"]) == {"train", "val"} and summary["n_train"] + summary["n_val"] == 24
    assert split.groupby("subject")["role"].nunique().max() == 1
    val = json.loads((out / "val_metrics.json").read_text())
    assert val["final"]["n_cases"] == summary["n_val"] and len(val["history"]) == 1
    cfg = json.loads((out / "final/config.json").read_text())
    assert cfg["architecture"] == "classifier" and cfg["classes"][0] == "hcc"
    assert cfg["provenance"]["task"] == "classify" and cfg["preprocessing"]["spacing"] == 2.0
    # no pooling given: the per-sequence head, one block per vocabulary sequence
    assert cfg["head"]["pooling"] == "centre_per_sequence" and cfg["head"]["num_sequences"] == 8


def test_finetuned_checkpoint_reloads_with_identical_outputs(cls_run, tiny_cohort, preprocess_cache) -> None:
    from mrfound.data.manifest import read_manifest

    out, _ = cls_run
    model, cfg = load_model(out / "final")
    from mrfound.finetune.common import load_encoder

    pre = load_encoder(out / "final").preprocess
    manifest = read_manifest(tiny_cohort)
    a = predict_classifier(model, manifest, pre, cache_dir=preprocess_cache)
    b = pd.read_csv(out / "val_predictions.csv")
    merged = b.merge(a, on="case", suffixes=("_saved", "_new"))
    assert len(merged) == len(b) > 0
    assert np.allclose(merged["p_hcc_saved"], merged["p_hcc_new"], atol=1e-6)
    assert (a["sequences_used"].str.len() > 0).all()
    t2 = predict_classifier(model, manifest, pre, cache_dir=preprocess_cache, protocol_sequences=("t2",))
    assert set(t2["sequences_used"]) == {"t2"} and len(t2) == 22  # two cases lack T2
    model2, _ = load_model(out / "final")
    x = torch.rand(2, 8, 16, 16, 16)
    av = torch.ones(2, 8, dtype=torch.bool)
    assert torch.equal(model.predict_proba(x, av), model2.predict_proba(x, av))


def test_labels_fraction_and_from_scratch(tiny_cohort, preprocess_cache, tmp_path) -> None:
    cfg = FinetuneConfig(
        task="classify",
        from_scratch=True,
        model="tiny",
        model_overrides={"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
        manifest=str(tiny_cohort),
        out=str(tmp_path / "r"),
        steps=2,
        batch_size=2,
        labels_fraction=0.25,
        val_fraction=0.0,
        cache_dir=str(preprocess_cache),
        tensorboard=False,
        balance="sampler",
    )
    with pytest.raises(ConfigError, match="head_only_steps"):  # would leave the encoder no step
        finetune_classifier(dataclasses.replace(cfg, out=str(tmp_path / "lpft"), head_only_steps=2))
    summary = finetune_classifier(dataclasses.replace(cfg, head_only_steps=1))
    assert json.loads((tmp_path / "r" / "config.json").read_text())["head_only_steps"] == 1
    split = pd.read_csv(tmp_path / "r" / "split.csv")
    used = split[split["role"] == "train"]
    assert summary["n_train"] == len(used) == 6  # round(0.25 * 12) per class
    assert used["label"].value_counts().to_dict() == {"hcc": 3, "cyst": 3}
    assert summary["val_metrics"] is None and "random init" in summary["source"]


def test_preprocess_overrides_change_the_checkpoints_settings(tiny_checkpoint, tiny_cohort, tmp_path) -> None:
    base = {"task": "classify", "manifest": str(tiny_cohort), "out": str(tmp_path)}
    assert (
        source_for(FinetuneConfig(checkpoint=str(tiny_checkpoint), **base)).preprocess.foreground
        == "log_otsu"
    )
    cfg = FinetuneConfig(checkpoint=str(tiny_checkpoint), preprocess={"foreground": "otsu"}, **base)
    pre = source_for(cfg).preprocess
    assert pre.foreground == "otsu" and pre.spacing == 2.0 and pre.roi_size == 16
    # from scratch without a checkpoint: the defaults, changed the same way
    cfg = FinetuneConfig(
        from_scratch=True,
        model_overrides={"img_size": 16, "patch_size": 8, "depth": 1},
        preprocess={"foreground": "otsu", "percentiles": [2, 98]},
        **base,
    )
    pre = source_for(cfg).preprocess
    assert pre.foreground == "otsu" and pre.percentiles == (2.0, 98.0)
    with pytest.raises(ConfigError, match="'preprocess'.*foreground must be one of"):
        source_for(FinetuneConfig(checkpoint=str(tiny_checkpoint), preprocess={"foreground": "mean"}, **base))
    with pytest.raises(ConfigError, match="'preprocess'.*unknown preprocessing settings"):
        source_for(FinetuneConfig(checkpoint=str(tiny_checkpoint), preprocess={"spcing": 2}, **base))
    cfg = FinetuneConfig(checkpoint=str(tiny_checkpoint), preprocess={"roi_size": 32}, **base)
    with pytest.raises(ConfigError, match="preprocess.roi_size"):
        cfg.validate()


@pytest.mark.parametrize(
    ("task", "given", "expected"),
    [("classify", None, 0.25), ("segment", None, 0.0), ("classify", 0.0, 0.0), ("segment", 0.3, 0.3)],
)
def test_sequence_dropout_default_depends_on_task(task, given, expected) -> None:
    cfg = FinetuneConfig(task=task, manifest="m.csv", out="run", from_scratch=True, sequence_dropout=given)
    cfg.validate()  # resolves the default into the recorded number
    assert cfg.sequence_dropout == expected and FinetuneConfig().pooling == "centre_per_sequence"
