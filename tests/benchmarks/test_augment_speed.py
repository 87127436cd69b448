"""Tests of benchmarks/augment_speed.py."""

from __future__ import annotations

import json

import numpy as np
from testutils import load_module


def test_baseline_is_the_same_resampling_and_the_report_has_the_ratio(monkeypatch, capsys) -> None:
    bench = load_module("benchmarks/augment_speed.py")
    (img, lab), *_ = bench.crops(1, 16)
    ours = bench.augment_spatial(img, lab, np.random.default_rng(3), out_size=16)
    base = bench.monai_affine(img, lab, np.random.default_rng(3), 16)
    np.testing.assert_allclose(ours[0], base[0], atol=1e-5)
    np.testing.assert_array_equal(ours[1], base[1])
    monkeypatch.setattr("sys.argv", ["augment_speed.py", "--crops", "2", "--repeats", "1", "--roi", "16"])
    bench.main()
    doc = json.loads(capsys.readouterr().out)
    assert doc["crop_edge"] == 16 + 2 * bench.spatial_context(16) and doc["crops"] == 2
    assert doc["spatial_ms"] > 0 and doc["monai_affine_ms"] > 0
    # the ratio is of the unrounded times: inside the range the printed ones (rounded to 0.01 ms) allow
    base, ours, half = doc["monai_affine_ms"], doc["spatial_ms"], 0.005
    low, high = (base - half) / (ours + half), (base + half) / max(ours - half, 1e-9)
    assert low - half <= doc["speedup_vs_monai_affine"] <= high + half
    assert doc["machine"]["cpu_model"]
