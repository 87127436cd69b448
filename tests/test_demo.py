"""Smoke test of ``mrfound demo`` (mrfound/demo.py) at a micro budget: every stage runs and reports."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrfound.demo import Budget, DemoConfig, TimePlan, md_table, run_demo

MICRO = {
    "cases": 24,
    "spacing": 4.0,
    "roi_size": 16,
    "patch_size": 8,
    "spacing_scale": 3.0,
    "model_overrides": {"embed_dim": 24, "depth": 1, "num_heads": 2},
    "mae_overrides": {"decoder_dim": 24, "decoder_depth": 1, "decoder_heads": 2},
    "max_steps": {"pretrain": 2, "classify": 2, "segment": 2},
    "min_steps": {"pretrain": 2, "classify": 2, "segment": 2},
    "label_fractions": (0.5, 1.0),
    "n_boot": 10,
    "predict_cases": 1,
    "batch_size": 4,
    "segment_spacing": 6.0,
    "segment_batch_size": 2,
    "segment_feature_size": 4,
    "impute_cases": 2,
    "calibrate_cases": 2,
    "calibrate_holdout_cases": 1,
    "workers": 2,
    "montage_candidates": 1,
}


MICRO_CALIBRATE = MICRO["calibrate_cases"]


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    stream = io.StringIO()
    summary = run_demo(
        DemoConfig(out=str(out), minutes=10, seed=1, command="pytest demo", **MICRO), stream=stream
    )

    # every figure of the report exists, is a PNG, and is linked from report.md
    report = (out / "report.md").read_text()
    figures = {
        "montage",
        "pretrain_loss",
        "reconstruction",
        "robustness",
        "label_efficiency",
        "roc",
        "confusion",
        "segmentation",
        "imputation",
        "imputation_calibration",
    }
    for name in figures:
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"figures/{name}.png" in report, name
    assert "pytest demo" in report and "## 3. Missing-sequence robustness" in report
    # imputation PSNR over up to impute_cases unseen ROIs, with their mean in the report
    imp = summary["inference"]["imputation"]
    assert 1 <= len(imp) <= 2 and f"mean of {len(imp)}" in report

    # the numbers are measured, sane, and the same in summary.json
    saved = json.loads((out / "summary.json").read_text())
    assert saved["split"]["train"] + saved["split"]["test"] == 24
    assert saved["pretrain"]["steps"] == 2 and saved["classify"]["steps"] == 2
    for probe in saved["probe"].values():
        auc = probe["protocols"]["all"]["auc_macro"]["value"]
        assert 0.0 <= auc <= 1.0
        assert set(probe["fractions"]) == {"0.5", "1.0"}
    rec = saved["pretrain"]["heldout"]
    assert rec["model"]["loss_inpaint"] > 0 and rec["mean_baseline"]["loss_inpaint"] > 0
    assert saved["segment"]["test"]["n_cases"] >= 1
    assert saved["segment"]["spacing_mm"] == 6.0 and saved["segment"]["batch_size"] == 2
    assert summary["wall_s"]["total"] == pytest.approx(saved["wall_s"]["total"], abs=1.0)
    # the plan was recalibrated from the measured fixed work of pretraining and probing
    plan = saved["time_plan"]
    assert set(plan["measured_fixed_s"]) == {"pretrain", "probe"} and plan["fixed_ratio"] > 0
    assert TimePlan.SCALE_BOUNDS[0] <= plan["reserve_scale"] <= TimePlan.SCALE_BOUNDS[1]

    # inference outputs for the unseen case: predictions table and a synthesised sequence on its grid
    pred = (out / "predictions" / "predictions.csv").read_text().splitlines()
    assert pred[0].startswith("case,label_pred") and len(pred) == 2
    case = saved["inference"]["predictions"][0]["case"]
    img = nib.load(str(next((out / "imputed").glob(f"{case}_t1_art.nii.gz"))))
    assert img.ndim == 3 and np.isfinite(np.asarray(img.dataobj)).all()
    # the pretrained checkpoint was calibrated on training cases and imputation applied it
    cal = saved["inference"]["calibration"]
    assert 1 <= cal["n_cases"] <= MICRO_CALIBRATE and cal["psnr"] >= cal["psnr_as_decoded"]
    stored = json.loads((Path(saved["pretrain"]["checkpoint"]) / "config.json").read_text())
    assert stored["local_contrast"]["sequences"]["t1_art"]["gain"] == cal["gain"]
    applied = saved["inference"]["impute_summary"]["local_contrast"]
    assert applied == [cal["gain"], cal["sigma_mm"], cal["level"]]
    assert "calibrated (`mrfound calibrate`)" in report
    # and checked on an unseen (test) case: the same setting, as decoded and calibrated, in the report
    held = saved["inference"]["calibration_holdout"]
    assert held["n_cases"] == len(held["cases"]) == 1 and held["local_contrast"] == applied
    test_cases = (out / "work" / "test.csv").read_text()
    row = held["cases"][0]
    assert set(row) == {"case", "psnr", "psnr_as_decoded"} and f"\n{row['case']}," in test_cases
    assert held["psnr"] == row["psnr"] and np.isfinite(row["psnr_as_decoded"])
    assert "Does the calibration carry over?" in report and f"| {row['case']} |" in report

    # progress on the terminal: numbered stage headers and the closing summary table
    text = stream.getvalue()
    assert "== [1/8]" in text and "== [8/8]" in text
    assert "mrfound demo summary" in text and str(out / "report.md") in text
    assert "calibrated imputation" in text and "unseen volume(s)" in text
    assert "Dice nan" not in text  # a Dice of 0 is printed as 0.000, not as missing


def test_budget_steps_fit_the_time_and_respect_the_bounds() -> None:
    assert Budget.steps(60.0, 0.5, 10, 1000) == 120
    assert Budget.steps(60.0, 10.0, 10, 1000) == 10  # slow machine: the floor
    assert Budget.steps(1e6, 0.1, 10, 1000) == 1000  # fast machine: the cap
    assert Budget.steps(60.0, float("nan"), 10, 1000) == 1000


def test_time_plan_reserves_scaled_fixed_work_and_shares_the_rest() -> None:
    from mrfound.demo import FIXED_COSTS

    budget = Budget(10.0)
    budget.left = lambda: 600.0  # type: ignore[method-assign]  # freeze the clock
    later = ["probe", "classify", "segment", "infer"]
    fast = TimePlan(budget, 1.0, segment=True, n_volumes=1)
    slow = TimePlan(budget, 2.0, segment=True, n_volumes=1)
    fixed = sum(FIXED_COSTS[s] for s in ["pretrain", *later]) + FIXED_COSTS["volume"] * (2 + 2)
    assert fast.fixed(["pretrain", *later]) == pytest.approx(fixed)
    assert slow.fixed(["pretrain", *later]) == pytest.approx(2 * fixed)  # a busy machine reserves more
    # pretraining gets its share (0.5 of 0.5 + 0.3 + 0.2) of what the fixed work leaves
    assert fast.seconds_for("pretrain", later) == pytest.approx((600.0 - fixed) * 0.5)
    assert slow.seconds_for("pretrain", later) < fast.seconds_for("pretrain", later)
    # without segmentation its share and fixed work go to the other stages
    noseg = TimePlan(budget, 1.0, segment=False, n_volumes=1)
    fixed_noseg = fixed - FIXED_COSTS["segment"] - FIXED_COSTS["volume"] * 3
    assert noseg.seconds_for("pretrain", later) == pytest.approx((600.0 - fixed_noseg) * 0.5 / 0.8)
    # the reserve stays well inside the budget, so training gets most of it
    assert fast.fixed(["pretrain", *later]) < 0.3 * 600.0
    # each calibration volume of the inference stage is one more whole-volume pass
    calib = TimePlan(budget, 1.0, segment=True, n_volumes=1, calibration_volumes=3)
    assert calib.fixed(["infer"]) - fast.fixed(["infer"]) == pytest.approx(3 * FIXED_COSTS["volume"])


def test_md_table_and_config_validation(tmp_path: Path) -> None:
    assert md_table(["a", "b"], [[1, 0.5]]) == "| a | b |\n|---|---|\n| 1 | 0.500 |\n"
    from mrfound.errors import ConfigError

    with pytest.raises(ConfigError, match="--cases"):
        DemoConfig(out=str(tmp_path), cases=5).validate()
    with pytest.raises(ConfigError, match="--minutes"):
        DemoConfig(out=str(tmp_path), minutes=0).validate()
    with pytest.raises(ConfigError, match="segment_spacing"):
        DemoConfig(out=str(tmp_path), segment_spacing=0).validate()
    with pytest.raises(ConfigError, match="segment_feature_size"):
        DemoConfig(out=str(tmp_path), segment_feature_size=0).validate()
    with pytest.raises(ConfigError, match="calibrate_cases"):
        DemoConfig(out=str(tmp_path), calibrate_cases=-1).validate()
    with pytest.raises(ConfigError, match="calibrate_holdout_cases must be >= 0"):
        DemoConfig(out=str(tmp_path), calibrate_holdout_cases=-1).validate()
    with pytest.raises(ConfigError, match="impute_cases"):
        DemoConfig(out=str(tmp_path), impute_cases=0).validate()
    with pytest.raises(ConfigError, match="segment_lr"):
        DemoConfig(out=str(tmp_path), segment_lr=float("nan")).validate()


def test_demo_command_rejects_bad_input_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mrfound.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--cases", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mrfound demo: error:") and "--cases" in err[0]


def test_prepare_out_replaces_an_earlier_demo_and_refuses_other_folders(tmp_path: Path) -> None:
    from mrfound.demo import prepare_out
    from mrfound.errors import ConfigError

    earlier = tmp_path / "demo"
    (earlier / "work" / "pretrain" / "checkpoints").mkdir(parents=True)
    (earlier / "work" / "cache").mkdir()
    (earlier / "summary.json").write_text("{}")
    prepare_out(earlier)
    assert not (earlier / "work" / "pretrain").exists()  # a new run can train again
    assert (earlier / "work" / "cache").is_dir()  # content-addressed: reused

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not empty"):
        prepare_out(foreign)
    assert (foreign / "holiday.jpg").exists()


def test_time_plan_observe_rescales_later_reserves_from_measured_fixed_work() -> None:
    from mrfound.demo import FIXED_COSTS

    budget = Budget(10.0)
    budget.left = lambda: 600.0  # type: ignore[method-assign]  # freeze the clock
    plan = TimePlan(budget, 2.0, segment=True, n_volumes=1)
    later = ["classify", "segment", "infer"]
    before = plan.fixed(later)
    # the probe's fixed work took half of what was planned at this speed: later reserves shrink by
    # MARGIN x 0.5, and the training stages get the difference
    assert plan.observe("probe", 0.5 * FIXED_COSTS["probe"] * 2.0) == pytest.approx(TimePlan.MARGIN * 0.5)
    assert plan.ratio == pytest.approx(0.5)
    assert plan.fixed(later) == pytest.approx(before * TimePlan.MARGIN * 0.5)
    assert plan.seconds_for("classify", ["segment", "infer"]) > (600.0 - before) * 0.6
    # the ratio is over every observed stage, and a busy spell raises the reserve, up to the bound
    plan.observe("pretrain", 0.0)
    assert plan.ratio == pytest.approx(
        0.5 * FIXED_COSTS["probe"] / (FIXED_COSTS["probe"] + FIXED_COSTS["pretrain"])
    )
    assert plan.scale == TimePlan.SCALE_BOUNDS[0]
    plan.observe("probe", 1e6)
    assert plan.scale == TimePlan.SCALE_BOUNDS[1]
    with pytest.raises(KeyError, match="no fixed cost"):
        plan.observe("lunch", 1.0)
