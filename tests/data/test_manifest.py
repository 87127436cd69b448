"""Manifest parsing: columns through the vocabulary, relative paths, structural errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrfound.data.manifest import Case, Manifest, read_manifest
from mrfound.data.sequences import Vocabulary
from mrfound.errors import ManifestError


def _write(tmp_path: Path, text: str, name: str = "m.csv", encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_aliases_relative_paths_and_fields(tmp_path):
    sub = tmp_path / "cohort"
    sub.mkdir()
    p = _write(
        sub,
        "case,subject,center,label,T2WI,C+A,t1_pv,mask,lesion_x,lesion_y,lesion_z,notes\n"
        "a,p1,A,HCC,a/t2.nii.gz,,/abs/pv.nii.gz,a/mask.nii.gz,1,2.5,-3,first\n"
        "b,,B,,b/t2.nii.gz,b/art.nii.gz,,,,,,\n",
    )
    m = read_manifest(p)
    assert len(m) == 2 and m.root == sub and m.path == p
    a, b = m.cases
    assert a.sequences == {"t2": sub / "a/t2.nii.gz", "t1_pv": Path("/abs/pv.nii.gz")}
    assert list(b.sequences) == ["t2", "t1_art"]  # vocabulary order
    assert a.label == "hcc" and b.label is None
    assert a.subject == "p1" and b.subject == "b" and a.center == "A"
    assert a.mask == sub / "a/mask.nii.gz" and b.mask is None
    assert a.lesion_xyz == (1.0, 2.5, -3.0) and b.lesion_xyz is None
    assert a.extra == {"notes": "first"} and [c.case for c in m] == ["a", "b"]
    f = m.frame
    assert list(f.columns[:4]) == ["case", "subject", "center", "label"] and "t1_art" in f and "notes" in f
    assert f.loc[0, "t2"] == str(sub / "a/t2.nii.gz") and f.loc[1, "t1_pv"] == ""


def test_to_csv_roundtrip(tmp_path):
    (tmp_path / "d").mkdir()
    cases = [
        Case(
            "x",
            sequences={"t2": tmp_path / "d/x.nii.gz"},
            label="cyst",
            lesion_xyz=(1, 2, 3),
            extra={"note": "n"},
        )
    ]
    m = Manifest.from_cases(cases, tmp_path)
    out = m.to_csv(tmp_path / "d" / "m.csv")
    text = out.read_text()
    assert "x.nii.gz" in text and str(tmp_path) not in text  # relative inside the manifest's folder
    back = read_manifest(out)
    assert back.cases[0].sequences == cases[0].sequences and back.cases[0].lesion_xyz == (1, 2, 3)
    assert back.cases[0].label == "cyst" and back.cases[0].extra == {"note": "n"}


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "empty"),
        ("case,t2\n", "header but no rows"),
        ("case;t2\na;a.nii.gz\n", "semicolon-separated"),
        ("id,t2\na,a.nii.gz\n", "no 'case' column"),
        ("case,t2\na,a.nii.gz\na,b.nii.gz\n", "duplicate case id"),
        ("case,t2,dwi\na,,\n", "no sequence"),
        ("case,t2,label\na,a.nii.gz,tumour\n", "unknown label"),
        ("case,t2,lesion_x,lesion_y,lesion_z\na,a.nii.gz,1,,3\n", "all set or all empty"),
        ("case,t2,T2WI\na,a.nii.gz,b.nii.gz\n", "all name sequence"),
        ("case,notes\na,x\n", "no sequence column"),
    ],
)
def test_structural_errors(tmp_path, text, needle):
    with pytest.raises(ManifestError, match=needle) as e:
        read_manifest(_write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_non_utf8_is_rejected(tmp_path):
    p = _write(tmp_path, "case,t2,center\na,a.nii.gz,Zürich\n", encoding="latin-1")
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(p)


def test_bom_and_custom_vocabulary(tmp_path):
    p = _write(tmp_path, "\ufeffcase,adc,t2\na,a_adc.nii.gz,\n")
    vocab = Vocabulary(sequences=("t2", "adc"))
    m = read_manifest(p, vocab)
    assert m.cases[0].sequences == {"adc": tmp_path / "a_adc.nii.gz"}
    assert list(m.frame.columns[4:6]) == ["t2", "adc"] and np.isnan(m.frame.loc[0, "lesion_x"])
