"""Models: multi-sequence 3D ViT encoder, masked-modality autoencoder, named sizes and checkpoint IO.

Configs and the size registry import without torch; the networks and checkpoint functions load on
first attribute access so that ``import mrfound.models.registry`` (CLI help, config validation) stays
fast.

Example:
    >>> from mrfound.models import MaskedModalityAutoencoder, get_configs  # doctest: +SKIP
    >>> model = MaskedModalityAutoencoder(*get_configs("tiny"))
    >>> out = model(batch)            # {"loss", "loss_inpaint", "loss_synth", ...}
"""

from __future__ import annotations

import importlib
from typing import Any

from mrfound.models.config import EncoderConfig, MAEConfig
from mrfound.models.registry import MAE_SIZES, MODEL_SIZES, get_configs, get_mae_config, get_model_config

_LAZY = {
    "MultiSequenceViT": "mrfound.models.encoder",
    "MaskedModalityAutoencoder": "mrfound.models.mae",
    "save_checkpoint": "mrfound.models.checkpoint",
    "load_checkpoint": "mrfound.models.checkpoint",
    "load_model": "mrfound.models.checkpoint",
    "build_model": "mrfound.models.checkpoint",
    "read_config": "mrfound.models.checkpoint",
    "resolve_checkpoint": "mrfound.models.checkpoint",
    "register_architecture": "mrfound.models.checkpoint",
}

__all__ = [
    "MAE_SIZES",
    "MODEL_SIZES",
    "EncoderConfig",
    "MAEConfig",
    "get_configs",
    "get_mae_config",
    "get_model_config",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mrfound.models' has no attribute {name!r}")
