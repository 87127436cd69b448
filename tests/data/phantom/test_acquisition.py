"""Scanner grids, separable PSF resampling, bias field, Rician noise and the built-in centres."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mrfound.data.phantom import acquisition as acq
from mrfound.data.sequences import SEQUENCES
from mrfound.errors import ConfigError


def test_builtin_centres_cover_the_required_protocols():
    c = acq.CENTERS
    assert len(c) >= 4
    assert any(set(p.sequences) == set(SEQUENCES) for p in c.values())
    assert any("dwi" not in p.sequences and "t2" in p.sequences for p in c.values())
    assert any("t1_in" not in p.sequences and "t1_opp" not in p.sequences for p in c.values())
    assert any(set(p.sequences) == {"t2", "dwi", "t1_pv"} for p in c.values())
    for p in c.values():
        assert abs(sum(p.class_weights.values())) > 0
        for proto in p.protocols.values():
            assert 0.7 <= proto.inplane_mm <= 2.5 and 2.0 <= proto.slice_mm <= 8.0


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LIP", "RSA"])
def test_grid_affine_matches_axis_codes_and_is_centred(codes):
    proto = acq.SequenceProtocol(axcodes=codes, inplane_mm=1.5, slice_mm=5.0, fov_mm=(300.0, 240.0, 160.0))
    centre = np.array([10.0, -20.0, 5.0])
    g = acq.ScannerGrid.from_protocol(proto, centre)
    assert "".join(nib.aff2axcodes(g.affine)) == codes
    mid = g.affine @ np.r_[(np.array(g.shape) - 1) / 2.0, 1.0]
    np.testing.assert_allclose(mid[:3], centre, atol=1e-6)
    assert np.allclose(np.sqrt((g.affine[:3, :3] ** 2).sum(0)), [1.5, 1.5, 5.0])


def test_bad_orientation_is_rejected():
    with pytest.raises(ConfigError, match="orientation"):
        acq.ScannerGrid.from_protocol(acq.SequenceProtocol(axcodes="RRS"), np.zeros(3))


def test_kernel_matrix_interpolates_and_is_zero_outside():
    pos = np.array([-20.0, 0.0, 3.0, 10.5, 50.0])
    w = acq.kernel_matrix(pos, 0.0, 2.0, 20, 0.0)
    nodes = 2.0 * np.arange(20)
    np.testing.assert_allclose(w[1:4] @ nodes, pos[1:4], atol=1e-5)  # linear interpolation is exact on a ramp
    assert w[0].sum() == 0 and w[4].sum() == 0
    g = acq.kernel_matrix(pos, 0.0, 2.0, 20, 3.0)
    np.testing.assert_allclose(g[3].sum(), 1.0, atol=1e-4)  # PSF weights sum to 1 away from the edge
    np.testing.assert_allclose(g[3] @ nodes, 10.5, atol=0.05)
    assert g[2].sum() < 0.95  # near the edge the missing (air) nodes keep their share


def test_separable_resample_follows_the_affine():
    """A world ramp sampled on a flipped, permuted (coronal LIP) grid reads the world coordinate back."""
    world = acq.WorldGrid(origin=np.array([-60.0, -50.0, -40.0]), spacing=2.0, shape=(61, 51, 41))
    x = world.coords(0)[:, None, None]
    y = world.coords(1)[None, :, None]
    z = world.coords(2)[None, None, :]
    ramp = (x + 2 * y + 3 * z + 0 * x * y * z).astype(np.float32)
    proto = acq.SequenceProtocol("LIP", 3.0, 4.0, (80.0, 60.0, 50.0))
    g = acq.ScannerGrid.from_protocol(proto, np.array([5.0, 3, -2]))
    out = acq.separable_resample(ramp, acq.grid_matrices(g, world, np.zeros(3), None), g.world_axis)
    assert out.shape == g.shape
    ijk = np.argwhere(np.ones(out.shape, bool))
    w = ijk @ g.affine[:3, :3].T + g.affine[:3, 3]
    np.testing.assert_allclose(out.ravel(), w[:, 0] + 2 * w[:, 1] + 3 * w[:, 2], atol=1e-2)
    # a breathing offset moves the body: sampling at p reads the phantom at p - shift
    mats = acq.grid_matrices(g, world, np.array([0.0, 0.0, 4.0]), None)
    shifted = acq.separable_resample(ramp, mats, g.world_axis)
    np.testing.assert_allclose(shifted - out, -12.0, atol=1e-2)


def test_rician_noise_statistics():
    rng = np.random.default_rng(0)
    air = acq.rician(np.zeros(200_000, np.float32), 0.1, rng)
    np.testing.assert_allclose(air.mean(), 0.1 * np.sqrt(np.pi / 2), rtol=0.02)  # Rayleigh in air
    tissue = acq.rician(np.full(200_000, 1.0, np.float32), 0.05, rng)
    np.testing.assert_allclose(tissue.mean(), 1.0, atol=0.01)
    np.testing.assert_allclose(tissue.std(), 0.05, rtol=0.05)


def test_bias_field_is_smooth_and_bounded():
    b = acq.bias_field((40, 30, 10), 0.25, np.random.default_rng(3))
    assert b.shape == (40, 30, 10) and b.dtype == np.float32
    assert np.exp(-0.26) <= b.min() and b.max() <= np.exp(0.26)
    assert np.abs(np.diff(b, axis=0)).max() < 0.05


def test_int16_scanner_units():
    out = acq.to_scanner_units(np.array([0.0, 1.0, 1e6], np.float32), 500.0)
    assert out.dtype == np.int16 and out.tolist() == [0, 500, 32767]
