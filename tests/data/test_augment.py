"""augment_intensity: per-sequence random gamma and gain."""

from __future__ import annotations

import numpy as np
import pytest

from mrfound.data.augment import augment_intensity
from mrfound.errors import ConfigError


def _image() -> np.ndarray:
    x = np.zeros((3, 8, 8, 8), np.float32)
    x[:, 2:6, 2:6, 2:6] = 0.4  # an organ
    x[:, 3:5, 3:5, 3:5] = 1.2  # a bright structure
    return x


def test_gamma_and_gain_change_present_sequences_only() -> None:
    x = _image()
    y = augment_intensity(x, np.random.default_rng(0), available=[True, False, True])
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y[1], x[1])  # absent sequence untouched
    np.testing.assert_array_equal(x, _image())  # input not modified
    for s in (0, 2):
        assert not np.allclose(y[s], x[s])
        assert np.all(y[s][x[s] == 0] == 0)  # air stays air
        # monotonic: the bright structure stays brighter than the organ
        assert y[s][4, 4, 4] > y[s][2, 2, 2] > 0
    # the two sequences get their own parameters
    assert not np.isclose(y[0][2, 2, 2] / y[0][4, 4, 4], y[2][2, 2, 2] / y[2][4, 4, 4])


def test_ranges_are_respected_and_draws_reproducible() -> None:
    x = _image()[:1]
    organ = []
    for seed in range(200):
        y = augment_intensity(x, np.random.default_rng(seed), gamma=(0.5, 2.0), scale=(0.8, 1.25))
        organ.append(float(y[0, 2, 2, 2]))
    # organ at 0.4 of a [0, 1.2] range: gamma 0.5..2 gives 1.2 * (1/3) ** g = 0.69..0.13, then x 0.8..1.25
    assert 0.13 * 0.8 - 1e-4 <= min(organ) and max(organ) <= 0.693 * 1.25 + 1e-4
    assert min(organ) < 0.2 and max(organ) > 0.6  # the range is used, darker and brighter
    a = augment_intensity(x, np.random.default_rng(7))
    np.testing.assert_array_equal(a, augment_intensity(x, np.random.default_rng(7)))
    # identity ranges give the input back
    np.testing.assert_allclose(
        augment_intensity(x, np.random.default_rng(1), gamma=(1, 1), scale=(1, 1)), x, atol=1e-6
    )


def test_bad_range() -> None:
    with pytest.raises(ConfigError, match="gamma range"):
        augment_intensity(_image(), np.random.default_rng(0), gamma=(2.0, 0.5))
    with pytest.raises(ConfigError, match="scale range"):
        augment_intensity(_image(), np.random.default_rng(0), scale=(0.0, 1.0))
