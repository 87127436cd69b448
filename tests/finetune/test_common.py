"""Tests of the shared fine-tuning helpers: encoder loading, holdout split, label fractions, balancing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from mrfound.errors import ConfigError
from mrfound.finetune.common import (
    BalancedDataset,
    class_weights,
    finetune_param_groups,
    hold_encoder,
    holdout_split,
    labels_fraction_subset,
    load_encoder,
    resolve_steps,
    set_steps,
)


def test_labels_fraction_is_stratified_deterministic_and_nested() -> None:
    labels = ["hcc"] * 40 + ["cyst"] * 20 + ["fnh"] * 3
    a = labels_fraction_subset(labels, 0.25, seed=7)
    assert np.array_equal(a, labels_fraction_subset(labels, 0.25, seed=7))
    counts = Counter(labels[i] for i in a)
    assert counts == {"hcc": 10, "cyst": 5, "fnh": 1}  # round(0.25 * n), at least one per class
    small, big = labels_fraction_subset(labels, 0.1, seed=7), labels_fraction_subset(labels, 0.5, seed=7)
    assert set(small) <= set(a) <= set(big)
    assert not np.array_equal(a, labels_fraction_subset(labels, 0.25, seed=8))
    assert len(labels_fraction_subset(labels, 1.0, seed=0)) == len(labels)
    with pytest.raises(ConfigError):
        labels_fraction_subset(labels, 0.0, seed=0)


def test_holdout_split_groups_subjects_and_skips_unlabelled() -> None:
    labels = (["hcc", "cyst"] * 15) + [None, ""]
    subjects = [f"s{i // 2}" for i in range(32)]
    val = holdout_split(labels, subjects, 0.2, seed=0)
    assert 4 <= val.sum() <= 8
    assert not val[-2:].any()
    for s in set(subjects):
        sides = {bool(val[i]) for i, x in enumerate(subjects) if x == s and labels[i]}
        assert len(sides) <= 1
    assert not holdout_split(labels, subjects, 0.0, seed=0).any()
    with pytest.raises(ConfigError, match="labelled subjects"):
        holdout_split(["hcc", "cyst"], ["a", "b"], 0.2, seed=0)


def test_class_weights_and_balanced_dataset() -> None:
    w = class_weights([0, 0, 0, 1], 3)
    assert w[2] == 0 and w[1] == pytest.approx(3 * w[0]) and w[:2].mean() == pytest.approx(1.0)
    labels = [0] * 90 + [1] * 10
    ds = BalancedDataset(list(range(100)), labels, seed=0)
    drawn = [labels[ds[i]] for i in range(len(ds))]
    assert 30 < sum(drawn) < 70  # about half from the rare class
    first = [ds[i] for i in range(10)]
    ds.set_epoch(1)
    assert [ds[i] for i in range(10)] != first
    ds.set_epoch(0)
    assert [ds[i] for i in range(10)] == first


def test_resolve_steps() -> None:
    assert resolve_steps(100, None, 50, 8) == 100
    assert resolve_steps(100, 2, 50, 8) == 13
    assert resolve_steps(100, 1, 50, 8, processes=2) == 4


def test_load_encoder_random_and_from_checkpoint(tiny_checkpoint) -> None:
    src = load_encoder("random:tiny", seed=1, model_overrides={"img_size": 16, "patch_size": 8, "depth": 1})
    assert src.checkpoint_config is None and src.preprocess.roi_size == 16
    assert (
        src.key
        == load_encoder(
            "random:tiny", seed=1, model_overrides={"img_size": 16, "patch_size": 8, "depth": 1}
        ).key
    )
    ck = load_encoder(tiny_checkpoint)
    assert ck.preprocess.spacing == 2.0 and ck.preprocess.roi_size == 16
    rnd = load_encoder(tiny_checkpoint, random_init=True, seed=3)
    assert rnd.encoder.config == ck.encoder.config and rnd.key != ck.key
    w_ck, w_rnd = ck.encoder.patch_embed.weight, rnd.encoder.patch_embed.weight
    assert not torch.equal(w_ck, w_rnd)


def test_checkpoint_saved_before_the_foreground_option_keeps_raw_otsu(tmp_path) -> None:
    from testutils import load_module

    import mrfound
    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.models.checkpoint import save_checkpoint
    from mrfound.models.config import EncoderConfig
    from mrfound.models.encoder import MultiSequenceViT

    tiny = load_module("tests/finetune/cohort_data.py").TINY_ENCODER
    legacy = PreprocessConfig(spacing=2.0, roi_size=16).to_dict()
    del legacy["foreground"]  # as written before the field existed (raw Otsu was the only method)
    enc = MultiSequenceViT(EncoderConfig(**tiny))
    save_checkpoint(tmp_path / "old", enc, {"preprocessing": legacy})
    save_checkpoint(
        tmp_path / "new", enc, {"preprocessing": PreprocessConfig(spacing=2.0, roi_size=16).to_dict()}
    )
    assert load_encoder(tmp_path / "old").preprocess.foreground == "otsu"
    assert mrfound.load_pretrained(tmp_path / "old").preprocessing.foreground == "otsu"
    assert load_encoder(tmp_path / "new").preprocess.foreground == "log_otsu"
    assert mrfound.load_pretrained(tmp_path / "new").preprocessing.foreground == "log_otsu"
    # a random encoder has no saved settings: today's default
    src = load_encoder("random:tiny", model_overrides={"img_size": 16, "patch_size": 8, "depth": 1})
    assert src.preprocess.foreground == "log_otsu"


def test_load_encoder_with_decoder(tmp_path, tiny_checkpoint) -> None:
    from testutils import load_module

    from mrfound.errors import CheckpointError
    from mrfound.models.mae import MaskedModalityAutoencoder

    mae_ckpt = load_module("tests/finetune/cohort_data.py").write_mae_checkpoint(tmp_path / "mae")
    plain = load_encoder(mae_ckpt)
    src = load_encoder(mae_ckpt, with_decoder=True)
    assert plain.completer is None and isinstance(src.completer, MaskedModalityAutoencoder)
    assert src.completer.encoder is src.encoder and not src.completer.training
    assert src.key == plain.key  # same encoder weights, same feature-cache identity
    assert torch.equal(src.encoder.patch_embed.weight, plain.encoder.patch_embed.weight)
    # the random-init baseline re-initialises the decoder too, and its encoder is the one without it
    rnd = load_encoder(mae_ckpt, random_init=True, seed=3, with_decoder=True)
    rnd_plain = load_encoder(mae_ckpt, random_init=True, seed=3)
    assert rnd.completer.encoder is rnd.encoder and rnd.key == rnd_plain.key
    for (name, a), (_, b) in zip(rnd.encoder.state_dict().items(), rnd_plain.encoder.state_dict().items()):
        assert torch.equal(a, b), name
    w_dec, w_rnd = src.completer.decoder_pred.weight, rnd.completer.decoder_pred.weight
    assert not torch.equal(w_dec, w_rnd)
    overrides = {"img_size": 16, "patch_size": 8, "depth": 1}
    fresh = load_encoder("random:tiny", seed=1, model_overrides=overrides, with_decoder=True)
    same = load_encoder("random:tiny", seed=1, model_overrides=overrides)
    assert fresh.completer.encoder is fresh.encoder and fresh.key == same.key
    assert torch.equal(fresh.encoder.patch_embed.weight, same.encoder.patch_embed.weight)
    with pytest.raises(CheckpointError, match="no decoder to synthesise"):
        load_encoder(tiny_checkpoint, with_decoder=True)


def test_hold_encoder_marks_every_group_outside_the_head() -> None:
    from mrfound.models.config import EncoderConfig
    from mrfound.models.encoder import MultiSequenceViT
    from mrfound.models.heads import Classifier, make_classification_head, param_groups_layer_decay

    enc = MultiSequenceViT(EncoderConfig(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2))
    model = Classifier(enc, make_classification_head(enc, 2), ("a", "b"))
    groups = hold_encoder(param_groups_layer_decay(model, 0.05, 0.75), model, 5, 20)
    head = {id(p) for p in model.head.parameters()}
    held = [g for g in groups if "hold_steps" in g]
    assert held and all(g["hold_steps"] == 5 for g in held)
    # the held groups hold exactly the encoder; the head's groups train from the first step
    assert {id(p) for g in held for p in g["params"]} == {id(p) for p in enc.parameters()}
    assert all(id(p) in head for g in groups if "hold_steps" not in g for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert hold_encoder(param_groups_layer_decay(model, 0.05), model, 0, 20)[0].get("hold_steps") is None
    with pytest.raises(ConfigError, match="head_only_steps"):
        hold_encoder(groups, model, 20, 20)


def test_set_steps_resolves_epochs_and_keeps_the_warmup_inside() -> None:
    from mrfound.finetune.config import FinetuneConfig

    cfg = FinetuneConfig(steps=100, epochs=2, batch_size=8, warmup_steps=50)
    set_steps(cfg, 50, processes=1)
    assert (cfg.steps, cfg.warmup_steps) == (13, 13)  # ceil(2 * 50 / 8); the warm-up cut to the steps
    cfg = FinetuneConfig(steps=100, batch_size=8, warmup_steps=10)
    set_steps(cfg, 50, processes=1)
    assert (cfg.steps, cfg.warmup_steps) == (100, 10)


@pytest.mark.parametrize("freeze", [False, True])
def test_finetune_param_groups_freeze_or_hold_the_encoder(freeze: bool) -> None:
    from mrfound.finetune.config import FinetuneConfig
    from mrfound.models.config import EncoderConfig
    from mrfound.models.encoder import MultiSequenceViT
    from mrfound.models.heads import Classifier, make_classification_head

    enc = MultiSequenceViT(EncoderConfig(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2))
    model = Classifier(enc, make_classification_head(enc, 2), ("a", "b"))
    cfg = FinetuneConfig(steps=20, head_only_steps=5, freeze_encoder=freeze)
    groups = finetune_param_groups(model, cfg)
    trainable = any(p.requires_grad for p in enc.parameters())
    held = any("hold_steps" in g for g in groups)
    # frozen: no encoder gradient and nothing to hold; trained: the encoder waits head_only_steps
    assert (trainable, held) == (not freeze, not freeze)
    assert all(p.requires_grad for p in model.head.parameters())
