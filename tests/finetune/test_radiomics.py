"""Tests of the hand-crafted radiomics baseline features."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrfound.errors import ConfigError
from mrfound.finetune.radiomics import (
    radiomics_feature_names,
    radiomics_features,
    radiomics_table,
    shape_features,
    sphere_mask,
)

SEQS = ("t2", "dwi", "t1_pv")


def _case(shape=(32, 32, 32), radius=6.0):
    rng = np.random.default_rng(0)
    image = rng.normal(0.5, 0.02, size=(3, *shape))
    lesion = sphere_mask(shape, (16, 16, 16), radius, 1.5)
    image[0][lesion] += 0.4  # bright on T2
    core = sphere_mask(shape, (16, 16, 16), radius * 0.65, 1.5)
    image[2][lesion & ~core] += 0.3  # rim enhancement on portal venous
    mask = np.ones(shape, np.uint8)
    mask[lesion] = 2
    return image, mask, lesion


def test_intensity_features_reflect_the_lesion() -> None:
    image, mask, lesion = _case()
    f = radiomics_features(image, [True, False, True], SEQS, mask=mask, spacing=1.5)
    assert list(f) == radiomics_feature_names(SEQS)
    assert f["t2_mean"] == pytest.approx(0.9, abs=0.01)
    assert f["t2_lesion_minus_liver"] == pytest.approx(0.4, abs=0.01)
    assert 0 < f["t2_lesion_liver_contrast"] < 1
    assert f["t1_pv_rim_minus_core"] > 0.15  # rim brighter than core
    assert abs(f["t2_rim_minus_core"]) < 0.02
    assert all(math.isnan(f[f"dwi_{k}"]) for k in ("mean", "std", "p50", "lesion_minus_liver"))  # missing
    assert f["shape_volume_ml"] == pytest.approx(lesion.sum() * 1.5**3 / 1000)
    assert 0.85 < f["shape_sphericity"] < 1.15  # a ball
    assert f["shape_elongation"] == pytest.approx(1.0, abs=0.05)


def test_sphere_roi_without_mask_gives_nan_shape() -> None:
    image, _, _ = _case()
    f = radiomics_features(
        image, [True, True, True], SEQS, lesion_center=(16, 16, 16), spacing=1.5, radius_mm=6
    )
    assert f["t2_mean"] == pytest.approx(0.9, abs=0.02)
    assert f["t2_lesion_minus_liver"] > 0.3  # shell around the sphere is liver-like
    assert math.isnan(f["shape_volume_ml"]) and math.isnan(f["shape_sphericity"])


def test_shape_features_of_a_box() -> None:
    roi = np.zeros((30, 30, 30), bool)
    roi[5:25, 10:15, 10:15] = True
    s = shape_features(roi, 1.0)
    assert s["volume_ml"] == pytest.approx(0.5)
    assert s["extent"] == pytest.approx(1.0)
    assert s["elongation"] < 0.35 and s["flatness"] < 0.35


def test_no_roi_raises_and_table_has_case_column() -> None:
    image, mask, _ = _case()
    with pytest.raises(ConfigError, match="lesion"):
        radiomics_features(image, [True] * 3, SEQS)
    table = radiomics_table(
        [{"image": image, "available": np.array([1, 1, 0], bool), "mask": mask[None]}],
        SEQS,
        ["c1"],
        spacing=1.5,
    )
    assert table.shape == (1, 1 + len(radiomics_feature_names(SEQS)))
    assert table.loc[0, "case"] == "c1" and np.isnan(table.loc[0, "t1_pv_mean"])
