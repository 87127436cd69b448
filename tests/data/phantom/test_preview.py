"""Lesion-centred class x sequence montage."""

from __future__ import annotations

import numpy as np

from mrfound.data.phantom.preview import PreviewRow, axial_plane, cohort_preview, montage, typicality

from .conftest import TINY_CONFIG


def test_axial_plane_is_radiological():
    """Patient right (+x) is on the image's left, anterior (+y) at the top."""
    a = np.zeros((21, 21, 3), np.float32)
    a[15:, :, :] = 1.0  # x > 5 mm: patient right
    a[:, 15:, :] = 2.0  # y > 5 mm: anterior
    aff = np.eye(4)
    aff[:3, 3] = [-10, -10, -1]
    p = axial_plane(a, aff, (0.0, 0.0, 0.0), 9.0, pixel_mm=1.0)
    assert p[10, 0] == 1.0 and p[10, -1] == 0.0  # left column = patient right
    assert p[0, 10] == 2.0 and p[-1, 10] == 0.0  # top row = anterior


def test_typicality_prefers_the_table():
    close = {"t2": {"ratio": 3.6}, "t1_pv": {"ratio": 0.25}}
    far = {"t2": {"ratio": 1.0}, "t1_pv": {"ratio": 1.5}}
    assert typicality(close, "cyst") < 0.01 < typicality(far, "cyst")
    assert typicality(close, "cyst") < typicality(close, "hcc")


def test_montage_png(tmp_path):
    arr = np.random.default_rng(0).random((20, 20, 5)).astype(np.float32) + 1
    mask = np.ones((20, 20, 5), np.uint8)
    mask[8:12, 8:12, 1:4] = 2
    rows = [PreviewRow("cyst", {"t2": (arr, np.eye(4))}, (mask, np.eye(4)), (10.0, 10.0, 2.0), 20.0),
            PreviewRow("hcc", {}, None, (10.0, 10.0, 2.0), 20.0)]
    out = montage(rows, tmp_path / "m.png", sequences=("t2", "dwi"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cohort_preview_has_a_row_per_class(tiny_cohort, tmp_path):
    import matplotlib.image as mpimg

    out = cohort_preview(tiny_cohort, tmp_path / "preview.png", seed=9, config=TINY_CONFIG)
    img = mpimg.imread(out)
    h, w = img.shape[:2]
    assert w > 1200 and h > 1200  # 8 class rows x (8 sequences + mask) columns
    assert img[..., :3].std() > 0.1  # not blank
