"""Tests of mrfound/models/config.py and mrfound/models/registry.py."""

from __future__ import annotations

import json

import pytest

from mrfound.errors import ConfigError
from mrfound.models.config import EncoderConfig, MAEConfig
from mrfound.models.registry import MODEL_SIZES, get_configs, get_mae_config, get_model_config


def test_encoder_config_json_round_trip() -> None:
    cfg = EncoderConfig(
        img_size=(32, 48, 64),
        patch_size=16,
        sequences=("t2", "adc"),
        embed_dim=64,
        depth=3,
        num_heads=4,
        drop_path_rate=0.1,
    )
    back = EncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.grid_size == (2, 3, 4) and back.num_patches == 24 and back.patch_volume == 16**3
    assert EncoderConfig(img_size=[32, 32, 32]).img_size == 32  # cube stays an int


def test_mae_config_json_round_trip() -> None:
    cfg = MAEConfig(decoder_dim=64, dirichlet_alpha=0.5, max_decoded=100, norm_pix_loss=False)
    assert MAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("cls", "kwargs", "fragment"),
    [
        (EncoderConfig, {"patch_size": 7}, "must divide img_size"),
        (EncoderConfig, {"embed_dim": 30, "num_heads": 4}, "must divide embed_dim"),
        (EncoderConfig, {"sequences": ("t2", "t2")}, "unique"),
        (EncoderConfig, {"img_size": (32, 32)}, "img_size"),
        (EncoderConfig, {"depth": 0}, "depth"),
        (EncoderConfig, {"drop_path_rate": 1.0}, "drop_path_rate"),
        (MAEConfig, {"mask_ratio": 1.0}, "mask_ratio"),
        (MAEConfig, {"mask_ratio": 0.0}, "mask_ratio"),
        (MAEConfig, {"sequence_drop": -0.1}, "sequence_drop"),
        (MAEConfig, {"single_drop_prob": 1.5}, "single_drop_prob"),
        (MAEConfig, {"dirichlet_alpha": 0.0}, "dirichlet_alpha"),
        (MAEConfig, {"max_decoded": 0}, "max_decoded"),
        (MAEConfig, {"norm_pix_loss": "yes"}, "norm_pix_loss"),
        (EncoderConfig, {"seq_embed_std": 0.0}, "seq_embed_std"),
        (MAEConfig, {"decoder_seq_embed_std": -1.0}, "decoder_seq_embed_std"),
    ],
)
def test_invalid_values_raise_config_error(cls, kwargs, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        cls(**kwargs)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown EncoderConfig key.*embed_dimm"):
        EncoderConfig.from_dict({"embed_dimm": 3})
    with pytest.raises(ConfigError, match="unknown MAEConfig key"):
        MAEConfig.from_dict({"mask": 0.5})


def test_registry_sizes_and_overrides() -> None:
    assert set(MODEL_SIZES) >= {"tiny", "small", "base"}
    tiny, small, base = (get_model_config(n) for n in ("tiny", "small", "base"))
    assert (tiny.embed_dim, tiny.depth, tiny.num_heads) == (192, 6, 3)
    assert (small.embed_dim, small.depth, small.num_heads) == (384, 12, 6)
    assert (base.embed_dim, base.depth, base.num_heads) == (768, 12, 12)
    assert (get_mae_config("tiny").decoder_dim, get_mae_config("tiny").decoder_depth) == (128, 2)
    assert (get_mae_config("small").decoder_dim, get_mae_config("small").decoder_depth) == (192, 4)
    enc, mae = get_configs("small", img_size=48, mask_ratio=0.8)
    assert enc.img_size == 48 and enc.embed_dim == 384 and mae.mask_ratio == 0.8
    assert MODEL_SIZES["small"].img_size == 64  # overrides do not leak into the registry
    with pytest.raises(ConfigError, match="unknown model size"):
        get_model_config("huge")
    with pytest.raises(ConfigError, match="unknown model option"):
        get_configs("tiny", widht=3)
