"""Tests of ``mrfound impute`` (mrfound/commands/impute.py)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from testutils import load_module

from mrfound.cli import main

REPO = Path(__file__).resolve().parents[2]


def _helpers():
    """``tests/test_inference.py`` (cohort and checkpoint builders), loaded by path (importlib mode)."""
    return load_module("tests/test_inference.py")


@pytest.fixture(scope="module")
def setup(inference_setup) -> dict[str, Path]:
    """The session's 3-case cohort and checkpoints (tests/commands/conftest.py)."""
    return inference_setup


def test_impute_writes_volumes_on_reference_grids(setup, tmp_path, capsys) -> None:
    out = tmp_path / "synth"
    rc = main(
        [
            "impute",
            "--checkpoint",
            str(setup["autoencoder"]),
            "--manifest",
            str(setup["manifest"]),
            "--sequence",
            "C+A",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "synthesised 3 volume(s)" in capsys.readouterr().out
    table = pd.read_csv(out / "imputed_t1_art.csv", dtype=str, keep_default_na=False)
    manifest = pd.read_csv(setup["manifest"], dtype=str, keep_default_na=False)
    for row in table.itertuples():
        src = manifest.loc[manifest["case"] == row.case].iloc[0]
        ref = nib.load(str(setup["manifest"].parent / src[row.reference_sequence]))
        img = nib.load(str(out / f"{row.case}_t1_art.nii.gz"))
        assert row.file == f"{row.case}_t1_art.nii.gz"
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
        assert np.isfinite(np.asarray(img.dataobj)).all()
        first = next(s for s in ("t2", "dwi", "t1_in", "t1_opp", "t1_pre", "t1_art") if src[s])
        assert row.reference_sequence == first


@pytest.mark.parametrize(
    "which,extra,message",
    [
        ("segmenter", ["--sequence", "t2"], "cannot impute"),
        ("autoencoder", ["--sequence", "flair"], "unknown sequence 'flair'"),
        ("autoencoder", ["--sequence", "t2", "--sw-batch-size", "0"], "--sw-batch-size must be >= 1"),
    ],
)
def test_impute_bad_input_one_line_exit_2(setup, tmp_path, capsys, which, extra, message) -> None:
    rc = main(
        [
            "impute",
            "--checkpoint",
            str(setup[which]),
            "--manifest",
            str(setup["manifest"]),
            "--out",
            str(tmp_path / "o"),
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("mrfound impute: error:") and message in err and "\n" not in err


def test_impute_case_with_only_the_target(setup, tmp_path, capsys) -> None:
    frame = _helpers().absolute_frame(setup["manifest"])
    only = frame.iloc[[0]].copy()
    keep = next(c for c in ("t2", "dwi", "t1_pv") if only.iloc[0][c])
    for col in ("t2", "dwi", "t1_in", "t1_opp", "t1_pre", "t1_art", "t1_pv", "t1_del"):
        if col != keep:
            only[col] = ""
    only["case"] = "lonely"
    path = tmp_path / "m.csv"
    pd.concat([only, frame.iloc[[1]]]).to_csv(path, index=False)
    args = ["impute", "--checkpoint", str(setup["autoencoder"]), "--manifest", str(path), "--sequence", keep]
    assert main([*args, "--out", str(tmp_path / "stop")]) == 2
    err = capsys.readouterr().err
    assert "case 'lonely'" in err and "at least one other sequence" in err
    assert main([*args, "--out", str(tmp_path / "skip"), "--on-error", "skip"]) == 0
    table = pd.read_csv(tmp_path / "skip" / f"imputed_{keep}.csv", dtype=str, keep_default_na=False)
    assert table.set_index("case").loc["lonely", "error"] != ""
    assert not (tmp_path / "skip" / f"lonely_{keep}.nii.gz").exists()
