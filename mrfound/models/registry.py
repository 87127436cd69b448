"""Named model sizes (DESIGN §4): ``tiny``, ``small``, ``base``.

Encoder widths follow ViT-Ti/S/B; decoders are light (MAE: decoder much narrower than the encoder)
with 32-wide attention heads. All sizes default to a 64^3 ROI with 16^3 patches (64 tokens per
sequence); change ``img_size``/``patch_size`` through overrides.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mrfound.errors import ConfigError
from mrfound.models.config import EncoderConfig, MAEConfig

MODEL_SIZES: dict[str, EncoderConfig] = {
    "tiny": EncoderConfig(embed_dim=192, depth=6, num_heads=3),
    "small": EncoderConfig(embed_dim=384, depth=12, num_heads=6),
    "base": EncoderConfig(embed_dim=768, depth=12, num_heads=12),
}
"""Encoder configuration of each named size."""

MAE_SIZES: dict[str, MAEConfig] = {
    "tiny": MAEConfig(decoder_dim=128, decoder_depth=2, decoder_heads=4),
    "small": MAEConfig(decoder_dim=192, decoder_depth=4, decoder_heads=6),
    "base": MAEConfig(decoder_dim=384, decoder_depth=4, decoder_heads=12),
}
"""Pretraining decoder configuration of each named size."""


def _check_name(name: str) -> None:
    if name not in MODEL_SIZES:
        raise ConfigError(f"unknown model size {name!r}; known: {', '.join(MODEL_SIZES)}")


def get_model_config(name: str, **overrides: Any) -> EncoderConfig:
    """Encoder config of a named size, with fields overridden.

    Example:
        >>> get_model_config("tiny", img_size=32, patch_size=8).num_patches
        64

    Raises:
        ConfigError: Unknown size, unknown field or invalid value.
    """
    _check_name(name)
    return MODEL_SIZES[name].replace(**overrides)


def get_mae_config(name: str, **overrides: Any) -> MAEConfig:
    """Decoder/masking config of a named size, with fields overridden."""
    _check_name(name)
    return MAE_SIZES[name].replace(**overrides)


def get_configs(name: str, **overrides: Any) -> tuple[EncoderConfig, MAEConfig]:
    """Encoder and MAE configs of a named size; each override goes to whichever config has the field.

    Example:
        >>> enc, mae = get_configs("tiny", img_size=32, mask_ratio=0.8)
        >>> enc.img_size, mae.mask_ratio
        (32, 0.8)
    """
    _check_name(name)
    enc_fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    mae_fields = {f.name for f in dataclasses.fields(MAEConfig)}
    unknown = sorted(set(overrides) - enc_fields - mae_fields)
    if unknown:
        raise ConfigError(
            f"unknown model option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(enc_fields | mae_fields))}"
        )
    enc = get_model_config(name, **{k: v for k, v in overrides.items() if k in enc_fields})
    mae = get_mae_config(name, **{k: v for k, v in overrides.items() if k in mae_fields})
    return enc, mae
