"""Tests of ``mrfound impute`` (mrfound/commands/impute.py)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest


def test_impute_writes_volumes_on_reference_grids(inference_setup, run_command, tmp_path, capsys) -> None:
    out = tmp_path / "synth"
    assert run_command("impute", "autoencoder", out, "--sequence", "C+A") == 0
    assert "synthesised 3 volume(s)" in capsys.readouterr().out
    table = pd.read_csv(out / "imputed_t1_art.csv", dtype=str, keep_default_na=False)
    manifest = pd.read_csv(inference_setup["manifest"], dtype=str, keep_default_na=False)
    for row in table.itertuples():
        src = manifest.loc[manifest["case"] == row.case].iloc[0]
        ref = nib.load(str(inference_setup["manifest"].parent / src[row.reference_sequence]))
        img = nib.load(str(out / f"{row.case}_t1_art.nii.gz"))
        assert row.file == f"{row.case}_t1_art.nii.gz"
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
        assert np.isfinite(np.asarray(img.dataobj)).all()
        first = next(s for s in ("t2", "dwi", "t1_in", "t1_opp", "t1_pre", "t1_art") if src[s])
        assert row.reference_sequence == first


def test_impute_local_contrast_option_changes_the_volumes(inference_setup, run_command, tmp_path) -> None:
    plain, shrunk = tmp_path / "plain", tmp_path / "shrunk"
    assert run_command("impute", "autoencoder", plain, "--sequence", "t1_art") == 0
    lc = ("--local-contrast", "0.6", "12")
    assert run_command("impute", "autoencoder", shrunk, "--sequence", "t1_art", *lc) == 0
    for f in sorted(plain.glob("*.nii.gz")):
        a, b = np.asarray(nib.load(str(f)).dataobj), np.asarray(nib.load(str(shrunk / f.name)).dataobj)
        assert a.shape == b.shape and not np.allclose(a, b)


@pytest.mark.parametrize(
    "which,extra,message",
    [
        ("segmenter", ["--sequence", "t2"], "cannot impute"),
        ("autoencoder", ["--sequence", "flair"], "unknown sequence 'flair'"),
        ("autoencoder", ["--sequence", "t2", "--sw-batch-size", "0"], "--sw-batch-size must be >= 1"),
        ("autoencoder", ["--sequence", "t2", "--overlap", "1.5"], "--overlap must be in"),
        ("autoencoder", ["--sequence", "t2", "--local-contrast", "1.5", "12"], "gain must be in [0, 1]"),
        ("autoencoder", ["--sequence", "t2", "--local-contrast", "0.5", "12", "1", "2"], "mm[, level]"),
        ("autoencoder", ["--sequence", "t2", "--local-contrast", "0.5", "12", "0"], "level must be in"),
    ],
)
def test_impute_bad_input_one_line_exit_2(run_command, tmp_path, capsys, which, extra, message) -> None:
    assert run_command("impute", which, tmp_path / "o", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrfound impute: error:") and message in err and "\n" not in err


def test_impute_case_with_only_the_target(
    inference_setup, inference_builders, run_command, tmp_path, capsys
) -> None:
    frame = inference_builders.absolute_frame(inference_setup["manifest"])
    only = frame.iloc[[0]].copy()
    keep = next(c for c in ("t2", "dwi", "t1_pv") if only.iloc[0][c])
    for col in ("t2", "dwi", "t1_in", "t1_opp", "t1_pre", "t1_art", "t1_pv", "t1_del"):
        if col != keep:
            only[col] = ""
    only["case"] = "lonely"
    path = tmp_path / "m.csv"
    pd.concat([only, frame.iloc[[1]]]).to_csv(path, index=False)
    args = ("--sequence", keep)
    assert run_command("impute", "autoencoder", tmp_path / "stop", *args, manifest=path) == 2
    err = capsys.readouterr().err
    assert "case 'lonely'" in err and "at least one other sequence" in err
    skip = ("--on-error", "skip")
    assert run_command("impute", "autoencoder", tmp_path / "skip", *args, *skip, manifest=path) == 0
    table = pd.read_csv(tmp_path / "skip" / f"imputed_{keep}.csv", dtype=str, keep_default_na=False)
    assert table.set_index("case").loc["lonely", "error"] != ""
    assert not (tmp_path / "skip" / f"lonely_{keep}.nii.gz").exists()
