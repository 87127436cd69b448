"""Lesion statistics from images and masks on different grids, through world coordinates only."""

from __future__ import annotations

import numpy as np

from mrfound.data.phantom.measure import lesion_regions, lesion_statistics, sample_world


def _sphere_case():
    # mask grid: 2 mm isotropic RAS; image grid: 1.5 x 1.5 x 4 mm LPS with another origin
    mask_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    mask_aff[:3, 3] = [-40, -40, -40]
    idx = np.indices((41, 41, 41)).reshape(3, -1).T
    xyz = idx @ mask_aff[:3, :3].T + mask_aff[:3, 3]
    r = np.linalg.norm(xyz, axis=1).reshape(41, 41, 41)
    mask = np.where(r < 15, 2, 1).astype(np.uint8)
    img_aff = np.diag([-1.5, -1.5, 4.0, 1.0])
    img_aff[:3, 3] = [45, 45, -42]
    iidx = np.indices((61, 61, 22)).reshape(3, -1).T
    ixyz = iidx @ img_aff[:3, :3].T + img_aff[:3, 3]
    ir = np.linalg.norm(ixyz, axis=1).reshape(61, 61, 22)
    # lesion 2x liver, brighter rim (r > 10 mm) than centre
    img = np.where(ir < 15, np.where(ir > 10, 300.0, 200.0), 100.0).astype(np.float32)
    return mask, mask_aff, img, img_aff


def test_sample_world_nan_outside():
    a = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    v = sample_world(a, np.eye(4), np.array([[1.0, 1.0, 1.0], [10.0, 0, 0]]))
    assert v[0] == 13 and np.isnan(v[1])


def test_regions_and_ratios_across_grids():
    mask, maff, img, iaff = _sphere_case()
    reg = lesion_regions(mask, maff)
    assert set(reg) == {"lesion", "rim", "centre", "edge", "liver", "halo"}
    assert np.linalg.norm(reg["centre"], axis=1).max() < 8.0
    d = np.linalg.norm(reg["liver"], axis=1)
    assert d.min() > 15 + 5 and d.max() < 15 + 32
    st = lesion_statistics({"t2": (img, iaff)}, mask, maff)["t2"]
    assert st["liver"] == 100.0
    assert 1.9 < st["ratio"] <= 3.0
    assert st["rim_centre"] > 1.3 and st["centre"] < 2.2
    assert abs(st["halo"] - 1.0) < 0.3


def test_no_target_no_regions():
    assert lesion_regions(np.ones((5, 5, 5), np.uint8), np.eye(4)) == {}
