"""augment_intensity (per-sequence random gamma and gain), augment_organ_contrast (organ gain) and
augment_spatial (rotation and zoom of a crop with its labels)."""

from __future__ import annotations

import numpy as np
import pytest

from mrfound.data.augment import (
    DEFAULT_ROTATE_DEG,
    DEFAULT_ZOOM,
    augment_intensity,
    augment_organ_contrast,
    augment_spatial,
    spatial_context,
)
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


def _labels() -> np.ndarray:
    lab = np.zeros((8, 8, 8), np.int64)
    lab[2:6, 2:6, 2:6] = 1  # the organ of _image
    lab[3, 3, 3] = 2  # a lesion inside it
    return lab


def test_organ_gain_scales_the_organ_only() -> None:
    x, lab = _image(), _labels()
    y = augment_organ_contrast(x, lab, np.random.default_rng(0), available=[True, False, True], sigma=0)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(x, _image())  # input not modified
    np.testing.assert_array_equal(y[1], x[1])  # absent sequence untouched
    outside = lab != 1
    for s in (0, 2):
        np.testing.assert_array_equal(y[s][outside], x[s][outside])  # lesion and background untouched
        gain = y[s][lab == 1] / x[s][lab == 1]
        np.testing.assert_allclose(gain, gain[0], rtol=1e-6)  # one gain over the organ
        assert 0.35 - 1e-6 <= gain[0] <= 1.5 + 1e-6 and not np.isclose(gain[0], 1.0)
    # the two sequences get their own gain; a (1, D, H, W) label map is accepted too
    assert not np.isclose(y[0, 2, 2, 2], y[2, 2, 2, 2])
    z = augment_organ_contrast(x, lab[None], np.random.default_rng(0), available=[True, False, True], sigma=0)
    np.testing.assert_array_equal(y, z)


def test_organ_gain_range_smoothing_and_no_organ() -> None:
    x, lab = _image()[:1], _labels()
    gains = [
        float(augment_organ_contrast(x, lab, np.random.default_rng(seed), sigma=0)[0, 2, 2, 2] / 0.4)
        for seed in range(200)
    ]
    assert min(gains) < 0.5 and max(gains) > 1.3  # darker and brighter livers
    assert 0.35 - 1e-6 <= min(gains) and max(gains) <= 1.5 + 1e-6
    # smoothed weight: the gain fades across the edge instead of stepping on it
    y = augment_organ_contrast(x, lab, np.random.default_rng(3), sigma=1.0)
    g = augment_organ_contrast(x, lab, np.random.default_rng(3), sigma=0)[0, 2, 2, 2] / 0.4
    edge_gain = y[0, 2, 4, 4] / 0.4  # organ voxel on the face of the cube: part of its weight blurred out
    assert min(1.0, g) < edge_gain < max(1.0, g)
    # no organ in the crop: a copy, and no draw from the generator
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(augment_organ_contrast(x, np.zeros_like(lab), rng), x)
    assert rng.random() == np.random.default_rng(5).random()


def test_organ_gain_bad_input() -> None:
    with pytest.raises(ConfigError, match="scale range"):
        augment_organ_contrast(_image(), _labels(), np.random.default_rng(0), scale=(1.5, 0.35))
    with pytest.raises(ConfigError, match="sigma"):
        augment_organ_contrast(_image(), _labels(), np.random.default_rng(0), sigma=-1)
    with pytest.raises(ConfigError, match="do not match"):
        augment_organ_contrast(_image(), _labels()[:4], np.random.default_rng(0))


def _ball(edge: int, radius: float, centre: tuple[float, float, float] | None = None) -> np.ndarray:
    c = np.array(centre if centre is not None else ((edge - 1) / 2,) * 3)[:, None, None, None]
    return ((np.indices((edge,) * 3) - c) ** 2).sum(0) < radius**2


def test_spatial_identity_and_centre_crop() -> None:
    edge, out = 48, 32
    rng = np.random.default_rng(0)
    x = rng.random((2, edge, edge, edge)).astype(np.float32)
    lab = rng.integers(0, 3, (1, edge, edge, edge)).astype(np.int64)
    y, ly = augment_spatial(x, lab, np.random.default_rng(1), out_size=out, rotate_deg=0.0, zoom=(1.0, 1.0))
    lo = (edge - out) // 2
    np.testing.assert_allclose(y, x[:, lo : lo + out, lo : lo + out, lo : lo + out], atol=1e-5)
    np.testing.assert_array_equal(ly, lab[:, lo : lo + out, lo : lo + out, lo : lo + out])
    assert y.dtype == np.float32 and ly.dtype == lab.dtype and ly.shape == (1, out, out, out)


def test_spatial_moves_image_and_labels_together_and_zooms() -> None:
    edge = 40
    ball = _ball(edge, 8.0, (22.0, 17.0, 20.0))  # off centre, so rotations move it
    x = np.stack([ball * 0.5, ball * 1.0]).astype(np.float32)
    for seed in range(4):
        y, ly = augment_spatial(x, ball.astype(np.uint8), np.random.default_rng(seed))
        assert ly.shape == ball.shape and set(np.unique(ly)) <= {0, 1}
        inside = ly == 1
        # the warped label marks exactly where the warped image is bright (one matrix for both)
        assert y[1][inside].mean() > 0.9 and y[1][~inside].mean() < 0.02
        np.testing.assert_allclose(y[0], 0.5 * y[1], atol=1e-6)
    _, big = augment_spatial(x, ball, np.random.default_rng(0), rotate_deg=0.0, zoom=(1.15, 1.15))
    _, small = augment_spatial(x, ball, np.random.default_rng(0), rotate_deg=0.0, zoom=(0.85, 0.85))
    assert np.isclose(big.sum() / ball.sum(), 1.15**3, rtol=0.08)
    assert np.isclose(small.sum() / ball.sum(), 0.85**3, rtol=0.08)
    a = augment_spatial(x, None, np.random.default_rng(5))
    b = augment_spatial(x, None, np.random.default_rng(5))
    assert a[1] is None and np.array_equal(a[0], b[0])  # reproducible from the generator


def test_spatial_matches_monai_affine() -> None:
    # augment_spatial applies the matrix of MONAI's Affine through one torch grid; it must resample as
    # Affine does (bilinear image, nearest labels, zeros outside), on non-cubic crops and outputs too
    import torch
    from monai.transforms import Affine
    from scipy.ndimage import gaussian_filter

    r = np.random.default_rng(0)
    for seed in range(6):
        shape, out = tuple(r.integers(30, 46, 3)), tuple(r.integers(16, 30, 3))
        image = np.stack([gaussian_filter(r.normal(size=shape), 2) for _ in range(2)]).astype(np.float32)
        labels = (gaussian_filter(r.normal(size=shape), 3) > 0).astype(np.uint8) * 2
        got, got_lab = augment_spatial(image, labels, np.random.default_rng(seed), out_size=out)
        draw = np.random.default_rng(seed)  # the same draws: three angles, then the zoom
        angles = np.deg2rad(draw.uniform(-DEFAULT_ROTATE_DEG, DEFAULT_ROTATE_DEG, 3))
        zoom = np.exp(draw.uniform(*np.log(DEFAULT_ZOOM)))
        kw = {
            "rotate_params": tuple(float(a) for a in angles),
            "scale_params": (float(1 / zoom),) * 3,
            "spatial_size": out,
            "padding_mode": "zeros",
            "image_only": True,
        }
        want = np.asarray(Affine(mode="bilinear", **kw)(torch.as_tensor(image)))
        lab = torch.as_tensor(labels[None], dtype=torch.float32)
        want_lab = np.asarray(Affine(mode="nearest", **kw)(lab))
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_array_equal(got_lab, np.rint(want_lab[0]).astype(np.uint8))


def test_spatial_margin_keeps_padding_out_of_the_output() -> None:
    out = 16
    edge = out + 2 * spatial_context(out)
    x = np.ones((1, edge, edge, edge), np.float32)
    for seed in range(20):
        y, _ = augment_spatial(x, None, np.random.default_rng(seed), out_size=out)
        assert y.min() > 0.999, seed
    # the worst corner: the largest angles about every axis with the smallest zoom
    worst = dict(rotate_deg=15.0, zoom=(0.85, 0.85))

    class Extreme:  # a generator that always draws the range's end
        def uniform(self, lo, hi, size=None):
            return np.full(size, hi) if size is not None else hi

    y, _ = augment_spatial(x, None, Extreme(), out_size=out, **worst)
    assert y.min() > 0.999


def test_spatial_bad_input() -> None:
    x = np.zeros((1, 8, 8, 8), np.float32)
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="rotate_deg"):
        augment_spatial(x, None, rng, rotate_deg=-1.0)
    with pytest.raises(ConfigError, match="zoom"):
        augment_spatial(x, None, rng, zoom=(1.2, 0.8))
    with pytest.raises(ConfigError, match="larger than the crop"):
        augment_spatial(x, None, rng, out_size=9)
    with pytest.raises(ConfigError, match="labels of shape"):
        augment_spatial(x, np.zeros((7, 8, 8)), rng)
