"""Shared fixtures of the model tests: tiny configs (ROI 32, patch 8 -> 64 tokens per sequence, width 32)."""

from __future__ import annotations

import pytest
import torch

from mrfound.models.config import EncoderConfig, MAEConfig

TINY_ENCODER = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TINY_MAE = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)


@pytest.fixture()
def enc_cfg() -> EncoderConfig:
    """Encoder config of the model tests (8 default sequences, 64 tokens each)."""
    return EncoderConfig(**TINY_ENCODER)


@pytest.fixture()
def mae_cfg() -> MAEConfig:
    """Decoder/masking config of the model tests (defaults: mask 0.75, sequence_drop 0.5)."""
    return MAEConfig(**TINY_MAE)


def make_batch(b: int = 3, s: int = 8, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random image with a different available set per sample (sample 0 has all sequences)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, s, size, size, size, generator=g)
    available = torch.rand(b, s, generator=g) > 0.5
    available[0] = True
    available[:, 0] = True
    image[~available] = 0.0
    return {"image": image, "available": available}


@pytest.fixture()
def batch() -> dict[str, torch.Tensor]:
    """Three samples with different available sequences."""
    return make_batch()


@pytest.fixture()
def batch_factory():
    """``make_batch(b, s, size, seed)`` for tests that need several batches."""
    return make_batch
