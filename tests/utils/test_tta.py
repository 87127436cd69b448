"""Tests of mrfound/utils/tta.py."""

from __future__ import annotations

import itertools

import pytest
import torch

from mrfound.utils.tta import mirror_average


def test_mirror_average_is_the_mean_of_the_eight_mirrored_back_predictions() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 5, 6, 7)
    weight = torch.randn(3, 1, 3, 3, 3)

    def predict(v: torch.Tensor) -> torch.Tensor:  # not mirror-symmetric: an asymmetric kernel
        return torch.nn.functional.conv3d(v, weight, padding=1)

    calls = []
    out = mirror_average(lambda v: calls.append(v.shape) or predict(v), x)
    expected = (
        sum(
            predict(x.flip(f)).flip(f) if f else predict(x)
            for k in range(4)
            for f in itertools.combinations((2, 3, 4), k)
        )
        / 8
    )
    assert len(calls) == 8 and out.shape == (2, 3, 5, 6, 7) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, predict(x))  # the asymmetric model's mirrorings differ


def test_mirror_average_of_an_equivariant_model_is_the_model() -> None:
    x = torch.randn(1, 2, 4, 4, 4)
    torch.testing.assert_close(mirror_average(lambda v: torch.softmax(v, 1), x), torch.softmax(x, 1))


def test_mirror_average_along_chosen_axes_and_bad_axes() -> None:
    calls = []
    mirror_average(lambda v: calls.append(1) or v, torch.zeros(1, 1, 3, 3), dims=(2, 3))
    assert len(calls) == 4
    for dims in ((2, 2), (5,)):
        with pytest.raises(ValueError, match="mirror dims"):
            mirror_average(lambda v: v, torch.zeros(1, 1, 3, 3, 3), dims=dims)
