"""Pretraining: the shared Accelerate training loop, its configuration and ``python -m mrfound.pretrain``.

* :mod:`mrfound.pretrain.config`: :class:`TrainerConfig`, :class:`PretrainConfig`, YAML/JSON + overrides.
* :mod:`mrfound.pretrain.trainer`: :class:`Trainer` (generic loop, reused by fine-tuning).
* :mod:`mrfound.pretrain.run`: :func:`pretrain` (masked-modality autoencoder pretraining entry point).
* :mod:`mrfound.pretrain.evaluate`, :mod:`mrfound.pretrain.viz`: held-out reconstruction metrics and figures.

Heavy modules are imported on first use.
"""

from __future__ import annotations

from mrfound.pretrain.config import PretrainConfig, TrainerConfig

__all__ = ["PretrainConfig", "TrainerConfig"]
