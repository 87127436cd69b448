"""Tests of mrfound/models/layers.py (patch gathering, packing, position embedding)."""

from __future__ import annotations

import torch

from mrfound.models.layers import (
    attention_mask,
    gather_patches,
    pack_tokens,
    patchify,
    scatter_tokens,
    sincos_pos_embed_3d,
    unpatchify,
)


def test_gather_patches_matches_full_patchify() -> None:
    image = torch.randn(2, 3, 16, 24, 8)
    full = patchify(image, 8)  # (2, 3, 6, 512)
    seq = torch.tensor([[0, 2, 1], [1, 1, 0]])
    pos = torch.tensor([[5, 0, 3], [2, 4, 1]])
    got = gather_patches(image, 8, seq, pos)
    want = torch.stack([full[b, seq[b], pos[b]] for b in range(2)])
    assert torch.equal(got, want)
    assert torch.equal(unpatchify(full, (2, 3, 1), 8), image)


def test_patch_voxel_order_is_raster_within_the_patch() -> None:
    image = torch.arange(8 * 8 * 8, dtype=torch.float32).reshape(1, 1, 8, 8, 8)
    patch = gather_patches(image, 4, torch.tensor([[0]]), torch.tensor([[1]]))  # grid (2,2,2): l=1 -> (0,0,1)
    assert torch.equal(patch.reshape(4, 4, 4), image[0, 0, :4, :4, 4:])


def test_pack_tokens_keeps_order_and_marks_padding() -> None:
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    index, valid = pack_tokens(mask)
    assert index.shape == (2, 2)
    assert index[0].tolist() == [1, 2] and index[1, 0].item() == 0
    assert valid.tolist() == [[True, True], [True, False]]
    assert attention_mask(valid).shape == (2, 1, 1, 2)
    assert attention_mask(torch.ones(2, 3, dtype=torch.bool)) is None  # fast path: no mask


def test_scatter_tokens_inverts_packing_and_drops_padding() -> None:
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    index, valid = pack_tokens(mask)
    values = torch.tensor([[[1.0], [2.0]], [[3.0], [99.0]]])  # 99 sits in a padding slot
    full = scatter_tokens(values, index, valid, 4)
    assert full[..., 0].tolist() == [[0.0, 1.0, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0]]


def test_sincos_position_embedding_is_distinct_and_bounded() -> None:
    pe = sincos_pos_embed_3d((2, 3, 4), 32)  # 32 is not a multiple of 6: 2 zero channels
    assert pe.shape == (24, 32) and pe.dtype == torch.float32
    assert pe.abs().max() <= 1.0
    assert torch.all(pe[:, 30:] == 0)
    assert torch.unique(pe, dim=0).shape[0] == 24  # every position gets its own code
