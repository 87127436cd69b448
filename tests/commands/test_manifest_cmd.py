"""``mrfound manifest``: pattern and LLD-MMRI importers from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrfound.cli import main
from mrfound.data.manifest import read_manifest
from mrfound.data.readers import write_nifti

AFF = np.diag([2.0, 2.0, 3.0, 1.0])


def _img(seed=0):
    return np.random.default_rng(seed).random((8, 8, 5)).astype(np.float32) + 1


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["manifest", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--lld-mmri" in out and "--mask-map" in out


def test_pattern_command(tmp_path, capsys):
    for case in ("a", "b"):
        for name in ("T2WI", "C+V", "readme"):
            write_nifti(tmp_path / "in" / case / f"{name}.nii.gz", _img(), AFF)
    out = tmp_path / "m.csv"
    rc = main(
        [
            "manifest",
            "--root",
            str(tmp_path / "in"),
            "--pattern",
            "{case}/{sequence}.nii.gz",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "2 cases" in text and "skipped 2 file(s)" in text
    m = read_manifest(out)
    assert [set(c.sequences) for c in m] == [{"t2", "t1_pv"}] * 2
    assert main(["validate", "--manifest", str(out)]) == 0


def test_lld_command(tmp_path, capsys):
    root = tmp_path / "lld"
    items = []
    for pi, phase in enumerate(("T2WI", "DWI", "In Phase", "Out Phase", "C-pre", "C+A", "C+V", "C+Delay")):
        write_nifti(root / "MR-1" / f"{phase}.nii.gz", _img(pi), AFF)
        items.append(
            {
                "phase": phase,
                "annotation": {
                    "lesion": {
                        "0": {
                            "category": "Hepatic_hemangioma",
                            "bbox": {
                                "3D_box": {
                                    "x_min": 2,
                                    "x_max": 4,
                                    "y_min": 2,
                                    "y_max": 4,
                                    "z_min": 1,
                                    "z_max": 3,
                                }
                            },
                        }
                    }
                },
            }
        )
    (root / "Annotation.json").write_text(json.dumps({"Annotation_info": {"MR-1": items}}))
    out = tmp_path / "lld.csv"
    assert main(["manifest", "--lld-mmri", str(root), "--out", str(out)]) == 0
    (case,) = read_manifest(out).cases
    assert len(case.sequences) == 8 and case.label == "hemangioma"
    assert np.allclose(case.lesion_xyz, [6.0, 6.0, 6.0])
    assert main(["validate", "--manifest", str(out)]) == 0


def test_usage_errors_are_one_line(tmp_path, capsys):
    assert main(["manifest", "--out", str(tmp_path / "m.csv")]) == 2
    assert (
        main(
            ["manifest", "--root", str(tmp_path), "--pattern", "{case}.nii", "--out", str(tmp_path / "m.csv")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("mrfound manifest: error:") for line in err)
    assert "--sequence" in err[1]
