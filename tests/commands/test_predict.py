"""Tests of ``mrfound predict`` (mrfound/commands/predict.py): outputs, errors and concurrent runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_predict_segmenter_writes_csv_and_segmentations(
    inference_setup, run_command, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    assert run_command("predict", "segmenter", out, "--batch-size", "2") == 0
    assert "predicted 3 case(s)" in capsys.readouterr().out
    frame = pd.read_csv(out / "predictions.csv", dtype={"case": str})
    assert list(frame.columns) == [
        "case",
        "segmentation",
        "reference_sequence",
        "sequences_used",
        "liver_ml",
        "lesion_ml",
    ]
    manifest = pd.read_csv(inference_setup["manifest"], dtype=str, keep_default_na=False)
    for row in frame.itertuples():
        src = manifest.loc[manifest["case"] == row.case].iloc[0]
        ref = nib.load(str(inference_setup["manifest"].parent / src[row.reference_sequence]))
        img = nib.load(str(out / row.segmentation))
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
    summary = (out / "predict.json").read_text()
    assert "mrfound predict" in summary and not (out / "skipped.csv").exists()


def test_predict_largest_component_leaves_one_foreground_component(run_command, tmp_path) -> None:
    from scipy import ndimage

    out = tmp_path / "out"
    assert run_command("predict", "segmenter", out, "--largest-component") == 0
    frame = pd.read_csv(out / "predictions.csv", dtype={"case": str})
    for row in frame.itertuples():
        labels = np.asarray(nib.load(str(out / row.segmentation)).dataobj)
        assert ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))[1] <= 1
    assert "--largest-component" in (out / "predict.json").read_text()


def test_predict_classifier_cli(run_command, tmp_path) -> None:
    out = tmp_path / "out"
    assert run_command("predict", "classifier", out) == 0
    frame = pd.read_csv(out / "predictions.csv")
    probs = frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert not (out / "segmentations").exists()


@pytest.mark.parametrize(
    "which,extra,message",
    [
        ("autoencoder", [], "cannot predict"),
        ("classifier", ["--batch-size", "0"], "--batch-size must be >= 1"),
        ("classifier", ["--overlap", "1.5"], "--overlap must be in"),
        ("classifier", ["--num-workers", "-1"], "--num-workers must be >= 0"),
    ],
)
def test_predict_bad_input_one_line_exit_2(run_command, tmp_path, capsys, which, extra, message) -> None:
    assert run_command("predict", which, tmp_path / "o", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrfound predict: error:") and message in err and "\n" not in err


def test_predict_missing_file_stops_or_skips(
    inference_setup, inference_builders, run_command, tmp_path, capsys
) -> None:
    frame = inference_builders.absolute_frame(inference_setup["manifest"])
    case = frame["case"][1]
    col = next(c for c in ("t2", "dwi", "t1_pv") if frame.loc[1, c])
    frame.loc[1, col] = str(tmp_path / "gone.nii.gz")
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    assert run_command("predict", "classifier", tmp_path / "stop", manifest=bad) == 2
    err = capsys.readouterr().err.strip()
    assert f"case '{case}', column '{col}'" in err and "--on-error skip" in err and "\n" not in err
    assert not (tmp_path / "stop" / "predictions.csv").exists()
    assert run_command("predict", "classifier", tmp_path / "skip", "--on-error", "skip", manifest=bad) == 0
    assert f"{case}:" in capsys.readouterr().out
    kept = pd.read_csv(tmp_path / "skip" / "predictions.csv", dtype=str)["case"]
    assert case not in set(kept) and len(kept) == 2
    # bad rows are set aside before prediction, with their reason, in rejected.csv
    assert list(pd.read_csv(tmp_path / "skip" / "rejected.csv", dtype=str)["case"]) == [case]


@pytest.mark.slow
def test_two_concurrent_runs_on_one_out_do_not_mix(inference_setup, inference_builders, tmp_path) -> None:
    """Two processes finish computing while the test holds the output lock, then publish one by one."""
    from filelock import FileLock

    out = tmp_path / "shared"
    out.mkdir()
    frame = inference_builders.absolute_frame(inference_setup["manifest"])
    parts = []
    for i, rows in enumerate((frame.iloc[:2], frame.iloc[2:])):
        path = tmp_path / f"part{i}.csv"
        rows.to_csv(path, index=False)
        parts.append(path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    lock = FileLock(str(out / ".predict.lock"))
    with lock:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mrfound",
                    "predict",
                    "--checkpoint",
                    str(inference_setup["segmenter"]),
                    "--manifest",
                    str(p),
                    "--out",
                    str(out),
                    "--merge",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for p in parts
        ]
        deadline = time.time() + 240
        while len(list(out.glob(".predict-*/predictions.csv"))) < 2:  # both runs complete, both waiting
            assert time.time() < deadline, [p.poll() for p in procs]
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.2)
        assert not (out / "predictions.csv").exists()  # nothing published while the lock is held
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    table = pd.read_csv(out / "predictions.csv", dtype=str)
    assert sorted(table["case"]) == sorted(frame["case"])  # both runs' rows, each once
    for row in table.itertuples():
        labels = np.asarray(nib.load(str(out / row.segmentation)).dataobj)  # every file complete
        assert set(np.unique(labels)) <= {0, 1, 2}
    assert not list(out.glob(".predict-*")) and not list((out / "segmentations").glob(".*"))
