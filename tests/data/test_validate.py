"""Validation: every problem of a manifest found, each naming row, case and column.

``write_problem_cohort`` (also used by tests/commands/test_validate.py) writes a manifest holding one
example of every row-level problem, plus clean rows.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrfound.data.readers import write_nifti
from mrfound.data.validate import require_valid, validate_manifest
from mrfound.errors import ManifestError

AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def _vol(seed: int = 0, shape=(8, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32) + 1.0


def write_problem_cohort(root: Path) -> tuple[Path, list[tuple[str, str | None, str]], int]:
    """Returns (manifest, expected (case, column, code) triples, number of data rows)."""
    root.mkdir(parents=True, exist_ok=True)
    f = root / "files"
    f.mkdir()
    ok = write_nifti(f / "ok.nii.gz", _vol(), AFF)
    ok4 = f / "ok4d.nii.gz"
    nib.save(nib.Nifti1Image(_vol(1)[..., None], AFF), str(ok4))  # 4D, last dim 1: accepted
    write_nifti(f / "mask_ok.nii.gz", np.ones((8, 8, 8), np.uint8), AFF, dtype=np.uint8)
    write_nifti(f / "trunc.nii.gz", _vol(2, (16, 16, 16)), AFF)
    raw = gzip.decompress((f / "trunc.nii.gz").read_bytes())
    (f / "trunc.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2])[:-8])
    (f / "text.nii.gz").write_text("hello")
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32) * np.arange(8), AFF), str(f / "flat.nii.gz"))
    nan = _vol(3)
    nan[1, 1, 1] = np.nan
    nan[2, 2, 2] = np.inf
    write_nifti(f / "nan.nii.gz", nan, AFF)
    write_nifti(f / "const.nii.gz", np.full((8, 8, 8), 7.0, np.float32), AFF)
    sing = nib.Nifti1Image(_vol(4), None)
    sing.header.set_sform(np.diag([2.0, 0.0, 2.0, 1.0]), code=1)
    nib.save(sing, str(f / "singular.nii.gz"))
    bad_vals = np.zeros((8, 8, 8), np.uint8)
    bad_vals[2, 2, 2] = 5
    write_nifti(f / "mask_vals.nii.gz", bad_vals, AFF, dtype=np.uint8)
    far = AFF.copy()
    far[:3, 3] = 1000.0
    write_nifti(f / "mask_far.nii.gz", np.ones((8, 8, 8), np.uint8), far, dtype=np.uint8)
    (f / "plainfolder").mkdir()
    write_nifti(f / "locked.nii.gz", _vol(5), AFF)

    header = "case,center,label,t2,C+A,t1_artt,mask,lesion_x,lesion_y,lesion_z"
    rows = [
        # case, center, label, t2, C+A (alias of t1_art), t1_artt (misspelt), mask, lesion xyz
        (
            "good1",
            "A",
            "hcc",
            "files/ok.nii.gz",
            "files/ok4d.nii.gz",
            "",
            "files/mask_ok.nii.gz",
            "2",
            "2",
            "2",
        ),
        ("good2", "B", "", str(ok), "", "", "", "", "", ""),
        ("missing", "A", "cyst", "files/nope.nii.gz", "", "", "", "", "", ""),
        ("corrupt", "A", "", "files/trunc.nii.gz", "", "", "", "", "", ""),
        ("notnifti", "A", "", "files/text.nii.gz", "", "", "", "", "", ""),
        ("not3d", "A", "", "files/flat.nii.gz", "", "", "", "", "", ""),
        ("nan", "A", "", "files/nan.nii.gz", "", "", "", "", "", ""),
        ("const", "A", "", "files/const.nii.gz", "", "", "", "", "", ""),
        ("singular", "A", "", "files/singular.nii.gz", "", "", "", "", "", ""),
        ("maskvals", "A", "", "files/ok.nii.gz", "", "", "files/mask_vals.nii.gz", "", "", ""),
        ("maskfar", "A", "", "files/ok.nii.gz", "", "", "files/mask_far.nii.gz", "", "", ""),
        ("lesionout", "A", "", "files/ok.nii.gz", "", "", "", "500", "0", "0"),
        ("badlabel", "A", "tumour", "files/ok.nii.gz", "", "", "", "", "", ""),
        ("dup", "A", "", "files/ok.nii.gz", "", "", "", "", "", ""),
        ("dup", "A", "", "files/ok.nii.gz", "", "", "", "", "", ""),
        ("noseq", "A", "", "", "", "files/ok.nii.gz", "", "", "", ""),
        ("folder", "A", "", "files/plainfolder", "", "", "", "", "", ""),
        ("locked", "A", "", "files/locked.nii.gz", "", "", "", "", "", ""),
    ]
    manifest = root / "manifest.csv"
    manifest.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    expected = [
        ("missing", "t2", "missing_file"),
        ("corrupt", "t2", "corrupt"),
        ("notnifti", "t2", "not_nifti"),
        ("not3d", "t2", "not_3d"),
        ("nan", "t2", "nan_inf"),
        ("const", "t2", "constant"),
        ("singular", "t2", "bad_affine"),
        ("maskvals", "mask", "mask_values"),
        ("maskfar", "mask", "mask_no_overlap"),
        ("lesionout", "lesion_x", "lesion_outside"),
        ("badlabel", "label", "unknown_label"),
        ("dup", "case", "duplicate_case"),
        ("noseq", None, "no_sequence"),
        ("folder", "t2", "is_folder"),
        ("locked", "t2", "permission"),
        ("", "t1_artt", "misspelt_column"),
    ]
    return manifest, expected, len(rows)


def deny_locked(monkeypatch) -> None:
    """Make ``locked.nii.gz`` unreadable (chmod does not stop root, which runs these tests in CI)."""
    real = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode, *a, **k: False if str(p).endswith("locked.nii.gz") else real(p, mode, *a, **k),
    )


def test_every_problem_is_reported(tmp_path, monkeypatch):
    deny_locked(monkeypatch)
    manifest, expected, n_rows = write_problem_cohort(tmp_path / "c")
    report = validate_manifest(manifest, progress=False)
    found = {(p.case, p.column, p.code) for p in report.problems}
    for exp in expected:
        assert exp in found, (exp, [str(p) for p in report.problems])
    # the clean rows have no errors; the alias column is reported as info, not error
    assert not [p for p in report.errors if p.case in ("good1", "good2")]
    assert any(
        p.code == "alias_column" and p.severity == "info" and p.column == "C+A" for p in report.problems
    )
    assert not report.ok and report.column_map == {"t2": "t2", "C+A": "t1_art"}
    # one line each, naming case and column
    for p in report.errors:
        line = str(p)
        assert "\n" not in line and (p.case in line if p.case else True) and (p.column or "") in line
    # summary: availability per centre and class counts
    assert report.availability.loc["A", "cases"] == n_rows - 1 and report.availability.loc["B", "t2"] == 1
    assert report.availability.loc["A", "t1_art"] == 1
    assert report.class_counts["hcc"] == 1 and report.class_counts["tumour"] == 1
    assert report.class_counts["unlabeled"] == n_rows - 3
    # split: clean + rejected = input, with a reason per rejected row
    clean, rejected, n_clean, n_rej = report.write_split(tmp_path / "out")
    assert n_clean == 2 and n_clean + n_rej == n_rows
    import pandas as pd

    rej = pd.read_csv(rejected, dtype=str, keep_default_na=False)
    assert (rej["reason"] != "").all() and "missing" in set(rej["case"])
    cl = pd.read_csv(clean, dtype=str, keep_default_na=False)
    # paths were rebased onto the output folder and still resolve
    for v in cl["t2"]:
        assert (tmp_path / "out" / v).exists()


@pytest.mark.parametrize(
    "content,code",
    [
        (b"", "empty"),
        (b"case,t2\n", "header_only"),
        (b"case;t2\na;x.nii.gz\n", "separator"),
        ("case,t2,center\na,x.nii.gz,Z\xfcrich\n".encode("latin-1"), "not_utf8"),
    ],
)
def test_file_level_problems(tmp_path, content, code):
    p = tmp_path / "m.csv"
    p.write_bytes(content)
    report = validate_manifest(p, progress=False)
    assert code in {q.code for q in report.problems} and not report.ok
    if code in ("separator", "not_utf8"):  # still read: the row's missing file is found too
        assert "missing_file" in {q.code for q in report.problems}


def test_clean_manifest_and_require_valid(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", _vol(), AFF)
    p = tmp_path / "m.csv"
    p.write_text("case,T2WI,label\na,a.nii.gz,HCC\n")
    report = validate_manifest(p, progress=False)
    assert report.ok and [q.code for q in report.problems] == ["alias_column"]
    require_valid(p)
    p.write_text("case,t2\na,a.nii.gz\nb,b.nii.gz\nc,c.nii.gz\n")
    with pytest.raises(ManifestError, match="file not found.*and 1 more"):
        require_valid(p)


def test_dicom_series_folder_is_accepted(shared_data, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("SimpleITK")
    src = shared_data / "misc_real_mr" / "siemens_abdomen_t1_post_contrast.dcm"
    if not src.exists():
        pytest.skip(f"{src} is absent")
    series = tmp_path / "pre_series"
    series.mkdir()
    for k in range(2):
        ds = pydicom.dcmread(str(src))
        ds.ImagePositionPatient = [
            float(v) + (4.0 * k if i == 2 else 0) for i, v in enumerate(ds.ImagePositionPatient)
        ]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k + 1}"
        ds.save_as(str(series / f"{k}.dcm"))
    (tmp_path / "m.csv").write_text(f"case,t1_pre,t1_pv\na,pre_series,{src}\n")
    report = validate_manifest(tmp_path / "m.csv", progress=False)
    assert report.ok, [str(p) for p in report.problems]
