"""``mrfound validate``: every problem on its own line, exit codes, --on-error skip."""

from __future__ import annotations

import pandas as pd
from testutils import load_module

from mrfound.cli import main


def _cohort_module():
    """The problem cohort builder of the data-layer test (``tests/data/test_validate.py``)."""
    return load_module("tests/data/test_validate.py")


def test_validate_reports_every_problem_and_exits_2(tmp_path, monkeypatch, capsys):
    cohort = _cohort_module()
    cohort.deny_locked(monkeypatch)
    manifest, expected, n_rows = cohort.write_problem_cohort(tmp_path / "c")
    rc = main(["validate", "--manifest", str(manifest)])
    out = capsys.readouterr().out
    assert rc == 2
    lines = out.splitlines()
    assert any(line.split()[:3] == ["A", str(n_rows - 1), "16"] for line in lines)  # availability table
    assert "classes:" in out and "hcc 1" in out
    for case, column, _code in expected:
        prefix = ", ".join(
            x for x in (f"case {case}" if case else "", f"column {column}" if column else "") if x
        )
        assert any(line.strip().startswith("error") and f"{prefix}:" in line for line in lines), (prefix, out)


def test_on_error_skip_splits_rows(tmp_path, monkeypatch, capsys):
    cohort = _cohort_module()
    cohort.deny_locked(monkeypatch)
    manifest, _, n_rows = cohort.write_problem_cohort(tmp_path / "c")
    out_dir = tmp_path / "checked"
    rc = main(["validate", "--manifest", str(manifest), "--on-error", "skip", "--out", str(out_dir)])
    assert rc == 0
    clean = pd.read_csv(out_dir / "clean.csv", dtype=str, keep_default_na=False)
    rejected = pd.read_csv(out_dir / "rejected.csv", dtype=str, keep_default_na=False)
    assert len(clean) + len(rejected) == n_rows
    assert set(clean["case"]) == {"good1", "good2"} and (rejected["reason"] != "").all()
    assert "2 clean row(s)" in capsys.readouterr().out
    # the clean rows have no row-level error left; the misspelt column stays a column-level error
    from mrfound.data.validate import validate_manifest

    again = validate_manifest(out_dir / "clean.csv", progress=False)
    assert [p.code for p in again.errors] == ["misspelt_column"]


def test_default_out_is_the_manifest_folder(tmp_path, capsys):
    import numpy as np

    from mrfound.data.readers import write_nifti

    write_nifti(tmp_path / "a.nii.gz", np.random.default_rng(0).random((6, 6, 6)) + 1, np.eye(4))
    (tmp_path / "m.csv").write_text("case,t2\na,a.nii.gz\nb,missing.nii.gz\n")
    assert main(["validate", "--manifest", str(tmp_path / "m.csv")]) == 2
    assert main(["validate", "--manifest", str(tmp_path / "m.csv"), "--on-error", "skip"]) == 0
    assert (tmp_path / "clean.csv").read_text().count("\n") == 2
    assert "missing.nii.gz" in (tmp_path / "rejected.csv").read_text()
    (tmp_path / "none.csv").write_text("case,t2\nb,missing.nii.gz\n")
    assert main(["validate", "--manifest", str(tmp_path / "none.csv"), "--on-error", "skip"]) == 2


def test_missing_manifest_is_a_one_line_error(tmp_path, capsys):
    assert main(["validate", "--manifest", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrfound validate: error:") and err.count("\n") == 1 and "Traceback" not in err
