"""Test-time augmentation for dense predictions."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch


def mirror_average(
    predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dims: Sequence[int] = (2, 3, 4)
) -> torch.Tensor:
    """Mean of ``predict`` over every mirroring of ``x`` along ``dims``, each output mirrored back.

    nnU-Net's test-time mirroring: 2**len(dims) calls (8 for a volume). With a sliding window inside
    ``predict``, a mirrored volume also puts the windows (and a ViT's patch grid) at other offsets from the
    anatomy, so the average smooths window and patch borders as well as the model's own asymmetries.

    The model must have been trained on mirrored inputs: one that learnt where the liver lies (on the
    patient's right) segments a mirrored volume badly, and the average with it is worse than no TTA.

    Args:
        predict: Maps (B, C, *spatial) to (B, K, *spatial) with the same spatial shape (e.g. probabilities).
        x: Input batch.
        dims: Axes to mirror (default: the three spatial axes of a 5-D batch).

    Returns:
        The averaged prediction, as float32.
    """
    dims = tuple(dims)
    if len(set(dims)) != len(dims) or any(not -x.ndim <= d < x.ndim for d in dims):
        raise ValueError(f"mirror dims {dims} must be distinct axes of a {x.ndim}-D input")
    total: torch.Tensor | None = None
    for k in range(len(dims) + 1):
        for flip in itertools.combinations(dims, k):
            y = predict(x.flip(flip) if flip else x).float()
            y = y.flip(flip) if flip else y
            total = y if total is None else total + y
    assert total is not None
    return total / 2 ** len(dims)
