"""Tests of mrfound/models/encoder.py: missing sequences, order invariance, padding, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mrfound.errors import ConfigError, MrfoundError
from mrfound.models.encoder import Attention, MultiSequenceViT


@pytest.fixture()
def encoder(enc_cfg) -> MultiSequenceViT:
    torch.manual_seed(0)
    return MultiSequenceViT(enc_cfg).eval()


def test_forward_packs_only_available_sequences(encoder, batch) -> None:
    out = encoder(batch["image"], batch["available"])
    counts = batch["available"].sum(1) * encoder.config.num_patches
    assert out["tokens"].shape == (3, int(counts.max()), 32)
    assert out["valid"].sum(1).tolist() == counts.tolist()
    for b in range(3):  # every valid token belongs to an available sequence
        seqs = out["seq_idx"][b][out["valid"][b]]
        assert batch["available"][b, seqs].all()


def test_missing_channel_content_is_ignored(encoder, batch) -> None:
    garbage = batch["image"].clone()
    garbage[~batch["available"]] = 1e3
    with torch.no_grad():
        a = encoder.embed(batch["image"], batch["available"])
        b = encoder.embed(garbage, batch["available"])
    assert torch.equal(a, b)


def test_case_alone_equals_case_padded_in_a_batch(encoder, batch) -> None:
    image, available = batch["image"], batch["available"]
    assert available[1].sum() < available[0].sum()  # sample 1 needs padding next to sample 0
    with torch.no_grad():
        together = encoder.embed(image, available)
        alone = encoder.embed(image[1:2], available[1:2])
        tok_all = encoder(image, available)
        tok_one = encoder(image[1:2], available[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-5)
    n = int(tok_one["valid"].sum())
    torch.testing.assert_close(tok_all["tokens"][1, :n], tok_one["tokens"][0], atol=1e-5, rtol=1e-5)


def test_token_order_does_not_matter(encoder, batch) -> None:
    out = encoder(batch["image"][:1], batch["available"][:1])
    from mrfound.models.layers import gather_patches

    patches = gather_patches(batch["image"][:1], 8, out["seq_idx"], out["pos_idx"])
    perm = torch.randperm(patches.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = encoder.forward_tokens(patches, out["seq_idx"], out["pos_idx"])
        shuffled = encoder.forward_tokens(patches[:, perm], out["seq_idx"][:, perm], out["pos_idx"][:, perm])
    torch.testing.assert_close(shuffled, ref[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled.mean(1), ref.mean(1), atol=1e-5, rtol=1e-5)


def test_sequence_storage_order_does_not_matter(encoder, enc_cfg, batch) -> None:
    """Same weights, vocabulary stored in another order, channels permuted alike: same embedding."""
    perm = [3, 0, 7, 1, 6, 2, 5, 4]
    other = MultiSequenceViT(enc_cfg.replace(sequences=tuple(enc_cfg.sequences[i] for i in perm))).eval()
    state = encoder.state_dict()
    state["seq_embed"] = state["seq_embed"][perm]
    other.load_state_dict(state)
    with torch.no_grad():
        a = encoder.embed(batch["image"], batch["available"])
        b = other.embed(batch["image"][:, perm], batch["available"][:, perm])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter(enc_cfg, batch) -> None:
    enc = MultiSequenceViT(enc_cfg)
    enc.embed(batch["image"], batch["available"]).pow(2).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bad_inputs_raise_clear_errors(encoder, batch) -> None:
    with pytest.raises(MrfoundError, match="image must have shape"):
        encoder(batch["image"][:, :4], batch["available"][:, :4])
    none = torch.zeros_like(batch["available"])
    with pytest.raises(MrfoundError, match="at least one available sequence"):
        encoder(batch["image"], none)


def test_low_precision_cpu_attention_matches_sdpa() -> None:
    torch.manual_seed(0)
    attn = Attention(32, num_heads=2, qkv_bias=True).eval()
    x = torch.randn(2, 10, 32)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 6:] = False
    mask = valid[:, None, None, :]
    with torch.no_grad():
        ref = attn(x, attn_mask=mask)  # float32: fused SDPA path
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = attn(x, attn_mask=mask)  # explicit matmul path
        qkv = attn.qkv(x).reshape(2, 10, 3, 2, 16).permute(2, 0, 3, 1, 4)
        manual = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        manual = attn.proj(manual.transpose(1, 2).reshape(2, 10, 32))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(ref, manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low.float(), ref, atol=5e-2, rtol=5e-2)


def test_packed_tokens_equal_padded_tokens_and_grads(enc_cfg, mae_cfg, batch, monkeypatch) -> None:
    """Packing the valid tokens of a padded batch (encoder and decoder) changes no number."""
    import mrfound.models.encoder as enc_mod
    from mrfound.models.mae import MaskedModalityAutoencoder

    torch.manual_seed(0)
    model = MaskedModalityAutoencoder(enc_cfg, mae_cfg)
    image, available = batch["image"], batch["available"]
    assert enc_mod.packed_layout(model.encoder.blocks, model.encoder(image, available)["valid"]) is not None

    def run(min_padding: float):
        monkeypatch.setattr(enc_mod, "PACK_MIN_PADDING", min_padding)
        model.zero_grad()
        out = model(image, available, generator=torch.Generator().manual_seed(1), return_details=True)
        out["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return out, grads

    packed, g_packed = run(0.0)
    padded, g_padded = run(2.0)  # never pack
    valid = padded["target_valid"]  # padding slots hold unused values either way
    assert torch.equal(packed["target_valid"], valid) and not bool(valid.all())
    torch.testing.assert_close(packed["pred"][valid], padded["pred"][valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed["loss"], padded["loss"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_packed, g_padded, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # hooked blocks (segmentation skips) keep the documented (B, N, C) layout
        handle = model.encoder.blocks[0].register_forward_hook(lambda m, i, o: None)
        try:
            monkeypatch.setattr(enc_mod, "PACK_MIN_PADDING", 0.0)
            valid = model.encoder(image, available)["valid"]
            assert enc_mod.packed_layout(model.encoder.blocks, valid) is None
        finally:
            handle.remove()


def test_centre_pooling_uses_the_central_half_of_the_grid(encoder, batch) -> None:
    grid = encoder.config.grid_size  # 4x4x4 in the test config
    pos = torch.arange(grid[0] * grid[1] * grid[2]).unsqueeze(0)
    centre = encoder.centre_tokens(pos)[0]
    want = {z * 16 + y * 4 + x for z in (1, 2) for y in (1, 2) for x in (1, 2)}
    assert set(torch.nonzero(centre).flatten().tolist()) == want
    with torch.no_grad():
        out = encoder(batch["image"], batch["available"])
        keep = out["valid"] & encoder.centre_tokens(out["pos_idx"])
        manual = encoder.pool(out["tokens"], keep)
        assert torch.allclose(encoder.embed(batch["image"], batch["available"], pooling="centre"), manual)
        assert torch.allclose(
            encoder.embed(batch["image"], batch["available"]), encoder.pool(out["tokens"], out["valid"])
        )
    with pytest.raises(ConfigError, match="unknown pooling"):
        encoder.embed(batch["image"], batch["available"], pooling="max")


def test_centre_per_sequence_pooling_concatenates_each_sequences_central_mean(encoder, batch) -> None:
    image, available = batch["image"], batch["available"]
    s, c = encoder.config.num_sequences, encoder.embed_dim
    assert encoder.embed_dim_of("centre_per_sequence") == s * c and encoder.embed_dim_of("centre") == c
    with torch.no_grad():
        feats = encoder.embed(image, available, pooling="centre_per_sequence")
        out = encoder(image, available)
    assert feats.shape == (image.shape[0], s * c)
    keep = out["valid"] & encoder.centre_tokens(out["pos_idx"])
    for b in range(image.shape[0]):
        for k in range(s):
            block = feats[b, k * c : (k + 1) * c]
            if not available[b, k]:
                assert torch.isnan(block).all()  # absent, not zero
                continue
            sel = keep[b] & (out["seq_idx"][b] == k)
            assert int(sel.sum()) == 8  # the 2x2x2 central patches of a 4x4x4 grid
            assert torch.allclose(block, out["tokens"][b, sel].mean(0), atol=1e-6)
    # a sample's features do not depend on the other samples of the batch (padding excluded)
    with torch.no_grad():
        alone = encoder.embed(image[1:2], available[1:2], pooling="centre_per_sequence")
    assert torch.allclose(alone, feats[1:2], atol=1e-5, equal_nan=True)
    with pytest.raises(ConfigError, match="unknown pooling"):
        encoder.embed_dim_of("max")
