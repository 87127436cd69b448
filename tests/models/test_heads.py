"""Tests of the classification/segmentation heads and their trainable wrappers."""

from __future__ import annotations

import pytest
import torch

from mrfound.errors import ConfigError
from mrfound.models.checkpoint import load_model, save_checkpoint
from mrfound.models.config import EncoderConfig
from mrfound.models.encoder import MultiSequenceViT
from mrfound.models.heads import (
    ClassificationHead,
    Classifier,
    Segmenter,
    drop_sequences,
    fuse_tokens_to_grid,
    make_classification_head,
    make_segmentation_head,
    param_groups_layer_decay,
    remap_mask,
)

CLASSES = ("hcc", "icca", "metastasis", "hemangioma", "fnh", "adenoma", "cyst", "abscess")


@pytest.fixture()
def encoder() -> MultiSequenceViT:
    torch.manual_seed(0)
    return MultiSequenceViT(EncoderConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2))


def _batch(b: int = 2, with_mask: bool = True) -> dict:
    g = torch.Generator().manual_seed(1)
    image = torch.randn(b, 8, 32, 32, 32, generator=g)
    available = torch.zeros(b, 8, dtype=torch.bool)
    available[0, :3] = True
    available[1:, 5] = True
    out = {"image": image, "available": available, "label": torch.arange(b) % 8}
    if with_mask:
        out["mask"] = torch.randint(0, 4, (b, 1, 32, 32, 32), generator=g)
    return out


def test_fuse_tokens_averages_sequences_per_position() -> None:
    tokens = torch.tensor([[[1.0], [3.0], [5.0], [100.0]]])  # pos 0 (seq a), pos 0 (seq b), pos 1, padding
    valid = torch.tensor([[True, True, True, False]])
    pos = torch.tensor([[0, 0, 1, 0]])
    grid = fuse_tokens_to_grid(tokens, valid, pos, (1, 1, 2))
    assert grid.shape == (1, 1, 1, 1, 2)
    assert grid.flatten().tolist() == [2.0, 5.0]


@pytest.mark.parametrize("pooling", ["mean", "centre", "centre_per_sequence", "attention"])
def test_classifier_shapes_and_probabilities(encoder, pooling) -> None:
    clf = Classifier(encoder, make_classification_head(encoder, 8, pooling=pooling, num_heads=2), CLASSES)
    batch = _batch(3, with_mask=False)
    out = clf(batch)
    assert out["loss"].ndim == 0 and out["logits"].shape == (3, 8)
    p = clf.predict_proba(batch["image"], batch["available"])
    assert p.shape == (3, 8) and torch.allclose(p.sum(1), torch.ones(3))


def test_classifier_ignores_unlabelled(encoder) -> None:
    clf = Classifier(encoder, make_classification_head(encoder, 8), CLASSES)
    batch = _batch(2, with_mask=False)
    batch["label"] = torch.tensor([-1, -1])
    out = clf(batch)
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad


@pytest.mark.parametrize("skip_source", ["tokens", "image"])
def test_segmenter_output_at_input_resolution_and_sliding_window(encoder, skip_source) -> None:
    seg = Segmenter(encoder, make_segmentation_head(encoder, feature_size=8, skip_source=skip_source))
    batch = _batch(2)
    logits = seg.logits(batch["image"], batch["available"])
    assert logits.shape == (2, 3, 32, 32, 32)
    out = seg(batch)
    out["loss"].backward()
    assert out["loss"].ndim == 0 and 0 <= out["dice_fg"].item() <= 1
    assert encoder.blocks[0].attn.qkv.weight.grad is not None  # the skips reach the encoder
    vol = torch.randn(1, 8, 40, 24, 36)
    labels = seg.segment(vol, batch["available"][:1], overlap=0.25)
    assert labels.shape == (1, 1, 40, 24, 36) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2}
    with pytest.raises(ConfigError):
        seg.segment(vol, batch["available"][:1], roi_size=(16, 16, 16))


def test_segment_mirror_averages_the_probabilities_of_mirrored_volumes(encoder) -> None:
    seg = Segmenter(encoder, make_segmentation_head(encoder, feature_size=8))
    vol = torch.randn(1, 8, 40, 24, 36)
    avail = _batch(1)["available"]
    probs = seg.segment(vol, avail, return_probs=True, mirror=True)
    plain = seg.segment(vol, avail, return_probs=True)
    flipped = seg.segment(vol.flip(2, 4), avail, return_probs=True).flip(2, 4)
    assert probs.shape == (1, 3, 40, 24, 36) and torch.allclose(probs.sum(1), torch.ones(1, 40, 24, 36))
    assert not torch.allclose(probs, plain, atol=1e-4)  # a ViT with a position grid is not mirror-symmetric
    # the mirrored average is symmetric: mirroring the input mirrors the output
    torch.testing.assert_close(
        seg.segment(vol.flip(2, 4), avail, return_probs=True, mirror=True).flip(2, 4), probs
    )
    assert not torch.allclose(flipped, plain, atol=1e-4)
    labels = seg.segment(vol, avail, mirror=True)
    torch.testing.assert_close(labels, probs.argmax(1, keepdim=True))


@pytest.mark.parametrize("skip_source", ["tokens", "image"])
def test_segmentation_ignores_missing_sequence_content(encoder, skip_source) -> None:
    head = make_segmentation_head(encoder, feature_size=8, skip_source=skip_source)
    seg = Segmenter(encoder, head).eval()
    batch = _batch(1, with_mask=False)
    other = batch["image"].clone()
    other[:, 3:] = 7.0  # content of unavailable channels must not matter
    with torch.no_grad():
        a = seg.logits(batch["image"], batch["available"])
        b = seg.logits(other, batch["available"])
    assert torch.allclose(a, b, atol=1e-5)


def test_image_skips_replace_token_skips(encoder) -> None:
    head = make_segmentation_head(encoder, feature_size=8, skip_source="image")
    assert head.skip_layers == [] and len(head.skips) == 0 and len(head.image_down) == 2  # p=8: 1/2, 1/4
    assert head.config()["skip_source"] == "image"
    with pytest.raises(ConfigError, match="skip_source must be one of tokens, image"):
        make_segmentation_head(encoder, skip_source="conv")
    with pytest.raises(ConfigError, match="skip_layers must be 0 block indices"):
        make_segmentation_head(encoder, skip_source="image", skip_layers=[0, 1])


def test_remap_mask_other_lesions_to_lesion() -> None:
    m = torch.tensor([0, 1, 2, 3])
    assert remap_mask(m).tolist() == [0, 1, 2, 2]


def test_drop_sequences_keeps_at_least_one_subset() -> None:
    avail = torch.tensor([[True, True, False, True], [False, False, True, False]])
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        d = drop_sequences(avail, 0.9, generator=g)
        assert (d.sum(1) >= 1).all() and not (d & ~avail).any()
    assert torch.equal(drop_sequences(avail, 0.0), avail)


def test_layer_decay_groups(encoder) -> None:
    clf = Classifier(encoder, make_classification_head(encoder, 8), CLASSES)
    groups = param_groups_layer_decay(clf, weight_decay=0.05, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales == [0.125, 0.25, 0.5, 1.0]  # embeddings, block 0, block 1, norm + head
    n = sum(len(g["params"]) for g in groups)
    assert n == len([p for p in clf.parameters() if p.requires_grad])
    head_group = next(g for g in groups if any(p is clf.head.fc.weight for p in g["params"]))
    assert head_group["lr_scale"] == 1.0 and head_group["weight_decay"] == 0.05
    bias_group = next(g for g in groups if any(p is clf.head.fc.bias for p in g["params"]))
    assert bias_group["weight_decay"] == 0.0


@pytest.mark.parametrize("kind", ["classifier", "segmenter", "segmenter_image_skips"])
def test_checkpoint_round_trip_identical_outputs(encoder, kind, tmp_path) -> None:
    if kind == "classifier":
        model = Classifier(encoder, ClassificationHead(32, 8, pooling="attention", num_heads=2), CLASSES)
    else:
        skip_source = "image" if kind.endswith("image_skips") else "tokens"
        model = Segmenter(encoder, make_segmentation_head(encoder, feature_size=8, skip_source=skip_source))
    model.eval()
    batch = _batch(2, with_mask=False)
    save_checkpoint(tmp_path / "ck", model, {"provenance": {"test": True}})
    loaded, cfg = load_model(tmp_path / "ck")
    assert cfg["architecture"] == kind.split("_")[0] and type(loaded) is type(model)
    with torch.no_grad():
        a = model.logits(batch["image"], batch["available"])
        b = loaded.logits(batch["image"], batch["available"])
    assert torch.equal(a, b)
    if kind == "classifier":
        assert cfg["classes"] == list(CLASSES) and cfg["head"]["pooling"] == "attention"


def test_segmenter_class_weights_weigh_the_loss_and_stay_out_of_checkpoints(encoder, tmp_path) -> None:
    head = make_segmentation_head(encoder, feature_size=8, skip_source="image")
    plain = Segmenter(encoder, head)
    weighted = Segmenter(encoder, head, class_weights=(1.0, 1.0, 10.0))
    batch = _batch(2, with_mask=True)
    assert not torch.allclose(plain(batch)["loss"], weighted(batch)["loss"])
    assert not any(k.startswith("loss_fn.") for k in weighted.state_dict())
    save_checkpoint(tmp_path / "ck", weighted)  # three weight tensors share memory: refused if saved
    loaded, _ = load_model(tmp_path / "ck")
    assert type(loaded) is Segmenter


def test_centre_pooling_classifies_from_the_central_tokens_only(encoder, tmp_path) -> None:
    clf = Classifier(encoder, make_classification_head(encoder, 8, pooling="centre"), CLASSES).eval()
    batch = _batch(2, with_mask=False)
    with torch.no_grad():
        out = encoder(batch["image"], batch["available"])
        keep = out["valid"] & encoder.centre_tokens(out["pos_idx"])
        assert torch.allclose(clf.logits(batch["image"], batch["available"]), clf.head(out["tokens"], keep))
        ref = clf.logits(batch["image"], batch["available"])
    save_checkpoint(tmp_path / "ck", clf, {"provenance": {"test": True}})
    loaded, cfg = load_model(tmp_path / "ck")
    assert cfg["head"]["pooling"] == "centre"
    with torch.no_grad():
        assert torch.equal(loaded.logits(batch["image"], batch["available"]), ref)
    with pytest.raises(ConfigError, match="classification pooling"):
        ClassificationHead(32, 8, pooling="max")


def test_per_sequence_pooling_keeps_each_sequence_apart_and_fills_absent_ones() -> None:
    torch.manual_seed(0)
    head = ClassificationHead(2, 3, pooling="centre_per_sequence", num_sequences=3)
    # case 0: sequence 0 has tokens 1 and 3, sequence 2 has 10, one padding token; sequence 1 absent
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [99.0, 99.0]]], requires_grad=True)
    valid = torch.tensor([[True, True, True, False]])
    seq_idx = torch.tensor([[0, 0, 2, 1]])
    pooled = head.pool(tokens, valid, seq_idx)
    assert pooled.shape == (1, 3, 2)
    assert pooled[0, 0].tolist() == [2.0, 1.0] and pooled[0, 2].tolist() == [10.0, 10.0]
    assert torch.equal(pooled[0, 1], head.missing[1])  # absent (its only token is padding): learnt vector
    head(tokens, valid, seq_idx).sum().backward()
    # the missing vector of the absent sequence learns; those of present sequences get no gradient
    assert head.missing.grad[1].abs().sum() > 0 and head.missing.grad[[0, 2]].abs().sum() == 0
    assert head.fc.in_features == 6
    with pytest.raises(ValueError, match="sequence indices"):
        head.pool(tokens, valid)
    with pytest.raises(ConfigError, match="num_sequences"):
        ClassificationHead(2, 3, pooling="centre_per_sequence")


def test_per_sequence_classifier_pools_central_tokens_per_sequence_and_round_trips(encoder, tmp_path) -> None:
    clf = Classifier(encoder, make_classification_head(encoder, 8, pooling="centre_per_sequence"), CLASSES)
    clf.eval()
    assert clf.head.num_sequences == encoder.config.num_sequences
    batch = _batch(2, with_mask=False)
    with torch.no_grad():
        out = encoder(batch["image"], batch["available"])
        keep = out["valid"] & encoder.centre_tokens(out["pos_idx"])
        pooled = clf.head.pool(out["tokens"], keep, out["seq_idx"])
        # present sequences: the encoder's own per-sequence central features; absent: the learnt vectors
        ref = encoder.pool_per_sequence(out["tokens"], keep, out["seq_idx"]).reshape(pooled.shape)
        present = batch["available"]
        assert torch.allclose(pooled[present], ref[present])
        assert torch.equal(pooled[~present], clf.head.missing.expand(2, -1, -1)[~present])
        logits = clf.logits(batch["image"], batch["available"])
    save_checkpoint(tmp_path / "ck", clf, {"provenance": {"test": True}})
    loaded, cfg = load_model(tmp_path / "ck")
    assert cfg["head"]["pooling"] == "centre_per_sequence" and cfg["head"]["num_sequences"] == 8
    with torch.no_grad():
        assert torch.equal(loaded.logits(batch["image"], batch["available"]), logits)
