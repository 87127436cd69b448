"""``mrfound phantom`` command line."""

from __future__ import annotations

import csv

from mrfound.cli import main


def test_phantom_command_writes_a_cohort(tmp_path, capsys):
    out = tmp_path / "cohort"
    rc = main(["phantom", "--out", str(out), "--cases", "2", "--seed", "3", "--spacing-scale", "3",
               "--workers", "1", "--centers", "surveillance,community_15t", "--id-prefix", "u"])
    assert rc == 0
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["uph00000", "uph00001"]
    assert all(r["subject"].startswith("usub") and r["t2"].startswith(f"cases/{r['case']}/") for r in rows)
    assert {r["center"] for r in rows} <= {"surveillance", "community_15t"}
    assert "wrote 2 cases" in capsys.readouterr().out


def test_phantom_command_bad_input_is_one_line(tmp_path, capsys):
    rc = main(["phantom", "--out", str(tmp_path / "x"), "--cases", "1", "--centers", "mars"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrfound phantom: error:") and "unknown centre 'mars'" in err and "\n" not in err


def test_phantom_help_has_examples(capsys):
    try:
        main(["phantom", "--help"])
    except SystemExit:
        pass
    assert "--unlabeled-fraction" in capsys.readouterr().out
