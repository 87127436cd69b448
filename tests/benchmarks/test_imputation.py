"""Smoke test of benchmarks/imputation.py at its ``tiny`` budget (no claims about the numbers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from testutils import load_module

REPO = Path(__file__).resolve().parents[2]
TRISTAN = REPO.parent / "shared" / "data" / "tristan_vfa_liver"


@pytest.fixture(scope="module")
def imp():
    """The benchmark script imported as a module."""
    return load_module("benchmarks/imputation.py")


@pytest.mark.slow
def test_tiny_budget_scores_every_method_and_records_the_recipe(imp, tmp_path: Path) -> None:
    argv = ["--budget", "tiny", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r"), "--threads", "1"]
    argv += ["--cases", "12"]  # --cases overrides the budget's cohort size
    argv += ["--calibration-gains", "1", "0.5", "0", "--calibration-widths-mm", "4", "16", "96"]
    if not TRISTAN.is_dir():
        argv.append("--skip-tristan")
    doc = imp.main(argv)
    saved = json.loads((tmp_path / "r" / "imputation.json").read_text())
    assert saved["command"].startswith("python benchmarks/imputation.py --budget tiny")
    # the default pretraining is the imputation recipe, and the checkpoint was built with it
    assert saved["pretraining_mae_overrides"] == imp.IMPUTATION_MAE
    # numbers are tied to the CPU that made them: the JSON names it and says so
    assert saved["machine"]["cpu_model"] and "not across CPUs" in saved["reproducibility"]
    ph = doc["phantom"]
    assert saved["settings"]["cases"] == 12 and ph["n_train_cases"] + ph["n_test_cases"] == 12
    assert ph["pretraining"]["steps"] == imp.BUDGETS["tiny"]["steps"]
    methods = ("mrfound", "copy_nearest", "mean_image", "mean_image_liver_aligned", "linear_map")
    assert ph["cases"], "held-out cases were scored"
    for row in ph["cases"]:
        for m in methods:
            assert math.isfinite(row[f"psnr_{m}"]) and -1.0 <= row[f"ssim_{m}"] <= 1.0
        assert row["nearest"] in row["sources"] and row["sequence"] not in row["sources"]
    for seq, entry in ph["per_sequence"].items():
        assert entry["beats_both_psnr"] == (
            entry["psnr_mrfound"] > max(entry["psnr_copy_nearest"], entry["psnr_mean_image"])
        ), seq
    assert ph["sequences_beating_linear_map_psnr"] == [
        seq for seq, e in ph["per_sequence"].items() if e["psnr_mrfound"] > e["psnr_linear_map"]
    ]
    for entry in ph["per_sequence"].values():  # the paired gain's mean is the difference of the means
        gain = entry["psnr_gain_vs"]["mean_image"]
        assert math.isclose(gain["value"], entry["psnr_mrfound"] - entry["psnr_mean_image"], abs_tol=1e-9)
        assert gain["ci_low"] <= gain["value"] <= gain["ci_high"] and gain["n"] == entry["n_cases"]
    assert set(ph["sequences_ahead_of_both_ci_excludes_0"]) <= set(ph["per_sequence"])
    assert ph["all_sequences_beat_both_baselines_psnr"] == all(
        e["beats_both_psnr"] for e in ph["per_sequence"].values()
    )
    # mrfound_calibrated: each sequence's local-contrast shrinkage chosen on training cases, scored alike
    calib = ph["local_contrast_calibration"]["per_sequence"]
    assert ph["local_contrast_calibration"]["region"] == "liver"  # the default; the grids asked for
    assert ph["local_contrast_calibration"]["sigmas_mm"] == [4.0, 16.0, 96.0]
    assert ph["local_contrast_calibration"]["gains"] == [1.0, 0.5, 0.0]
    assert calib, "some training case was calibrated on"
    for seq, entry in ph["per_sequence"].items():
        if seq not in calib:
            continue
        lc = entry["local_contrast"]
        assert lc == calib[seq] and lc["gain"] in (1.0, 0.5, 0.0) and lc["sigma_mm"] in (4.0, 16.0, 96.0)
        assert lc["psnr"] >= lc["psnr_as_decoded"]  # gain 1 is on the grid
        if lc["gain"] == 1.0:  # the identity: the same synthesis
            assert entry["psnr_mrfound_calibrated"] == entry["psnr_mrfound"]
        assert entry["calibrated_beats_both_psnr"] == (
            entry["psnr_mrfound_calibrated"] > max(entry["psnr_copy_nearest"], entry["psnr_mean_image"])
        )
    assert ph["calibrated_all_sequences_beat_both_baselines_psnr"] == all(
        e.get("calibrated_beats_both_psnr", False) for e in ph["per_sequence"].values()
    )
    if TRISTAN.is_dir():
        rows = doc["tristan"]["per_flip_angle"]
        assert len(rows) == 5


def test_linear_map_recovers_a_linear_contrast_and_drops_unseen_sources(imp) -> None:
    rng = np.random.default_rng(0)
    samples = []
    for k in range(6):
        x = rng.random((4, 500)).astype(np.float32)
        x[3] = 0.5 * x[0] - 2.0 * x[1] + 0.25  # target 3 = a linear map of sources 0 and 1
        av = np.ones(4, dtype=bool)
        av[2] = k < 2  # source 2 is rarely present
        samples.append((x, av))
    lm = imp.LinearMap(samples, alpha=1e-6)
    image = rng.random((4, 5, 6, 7)).astype(np.float32)
    truth = 0.5 * image[0] - 2.0 * image[1] + 0.25
    np.testing.assert_allclose(lm.predict(image, 3, [0, 1]), truth, atol=1e-3)
    np.testing.assert_allclose(lm.predict(image, 3, [0, 1, 2]), truth, atol=1e-3)  # 2 cases have all three
    never = [(x, np.array([True, True, False, True])) for x, _ in samples]
    lm2 = imp.LinearMap(never, alpha=1e-6)
    np.testing.assert_allclose(lm2.predict(image, 3, [0, 1, 2]), truth, atol=1e-3)  # source 2 dropped
    assert lm2._fits[(3, (0, 1, 2))][1] == (0, 1)


def test_paired_gain_interval_and_wins(imp) -> None:
    g = imp.paired_gain([20.0, 21.0, 22.0, 23.0], [19.0, 20.0, 21.0, 22.5])
    assert math.isclose(g["value"], 0.875) and g["wins"] == 4 and g["n"] == 4
    assert 0.5 <= g["ci_low"] <= g["value"] <= g["ci_high"] <= 1.0
    mixed = imp.paired_gain([20.0, 18.0, float("nan")], [19.0, 19.0, 19.0])
    assert mixed["n"] == 2 and mixed["wins"] == 1 and mixed["ci_low"] < 0 < mixed["ci_high"]
    assert imp.paired_gain([], [])["value"] is None


def test_split_baselines_and_case_predictions_without_a_model(imp, tmp_path: Path) -> None:
    from mrfound.data.preprocess import PreprocessConfig, preprocess_case
    from mrfound.data.sequences import SEQUENCES

    b = imp.BUDGETS["tiny"] | {"cases": 6}
    split = imp.phantom_split(b, tmp_path, seed=0)
    assert len(split.train_cases) + len(split.test_cases) == 6 and split.train_csv.is_file()
    assert not {c.subject for c in split.train_cases} & {c.subject for c in split.test_cases}
    again = imp.phantom_split(b, tmp_path, seed=0)  # the cohort is reused and the split is the same
    assert [c.case for c in again.test_cases] == [c.case for c in split.test_cases]

    pp = PreprocessConfig(spacing=b["spacing"], roi_size=b["roi"], foreground=imp.PHANTOM_FOREGROUND)
    stats = imp.baseline_stats(split.train_cases, pp, b["mean_box"], seed=0)
    assert stats.mean_box["body"].shape == (len(SEQUENCES), *(b["mean_box"],) * 3)
    case = split.test_cases[0]
    s = preprocess_case(case, pp)
    t = int(np.flatnonzero(s["available"])[0])
    methods = tuple(m for m in imp.PHANTOM_METHODS if m != "mrfound")  # the baselines need no model
    cp = imp.case_predictions(case, s, t, None, stats, tuple(pp.clip), methods=methods)
    assert cp is not None and set(cp.preds) == set(methods)
    assert SEQUENCES[t] not in cp.sources and cp.nearest in cp.sources
    np.testing.assert_array_equal(cp.preds["copy_nearest"], s["image"][SEQUENCES.index(cp.nearest)])
    assert all(v.shape == cp.truth.shape for v in cp.preds.values())
    assert cp.region.any() and not (cp.region & ~(s["mask"][0] > 0)).any()  # scored inside the liver only
    alone = dict(s, available=np.eye(len(SEQUENCES), dtype=bool)[t])  # nothing left to synthesise from
    assert imp.case_predictions(case, alone, t, None, stats, tuple(pp.clip), methods=methods) is None


@pytest.mark.slow
def test_extra_unlabeled_cases_reach_pretraining_but_not_the_held_out_split(imp, tmp_path: Path) -> None:
    argv = ["--budget", "tiny", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r"), "--threads", "1"]
    doc = imp.main([*argv, "--cases", "8", "--extra-unlabeled", "3", "--skip-tristan"])
    ph = doc["phantom"]
    assert ph["n_extra_unlabeled_cases"] == 3 and ph["n_train_cases"] + ph["n_test_cases"] == 8
    [run] = (tmp_path / "w" / "tiny").glob("pretrain_phantom_8_*")
    manifests = json.loads((run / "config.json").read_text())["manifest"]
    assert len(manifests) == 2
    extra = pd.read_csv(manifests[1])
    cohort = pd.read_csv(Path(manifests[0]).parent / "manifest.csv")
    assert len(extra) == 3 and extra["case"].str.startswith("uph").all()
    assert not set(extra["subject"]) & set(cohort["subject"]), "no subject shared with the evaluated cohort"
    assert not set(ph["test_cases"]) & set(extra["case"])
    with pytest.raises(SystemExit, match="--extra-unlabeled"):
        imp.main([*argv, "--extra-unlabeled", "-1"])
