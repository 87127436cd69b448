"""Tests of benchmarks/compare_probes.py: paired comparison of two predictions tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from testutils import load_module

CLASSES = ["hcc", "icca", "cyst"]


def _write(path: Path, y: np.ndarray, proba: dict[str, np.ndarray]) -> Path:
    rows = []
    for protocol, p in proba.items():
        for i, (label, row) in enumerate(zip(y, p)):
            rows.append(
                {"case": f"c{i:03d}", "protocol": protocol, "fold": -1, "label": CLASSES[label]}
                | {f"p_{c}": v for c, v in zip(CLASSES, row)}
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_compare_reports_paired_gaps_and_degradation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cp = load_module("benchmarks/compare_probes.py")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 80)
    good = np.eye(3)[y] * 2 + rng.random((80, 3))
    noise = rng.random((80, 3))
    # A is good with every sequence and loses everything without contrast; B is noise throughout
    a = _write(tmp_path / "a" / "predictions.csv", y, {"all": good, "no_contrast": noise})
    b = _write(tmp_path / "b" / "predictions.csv", y, {"all": noise, "no_contrast": noise})
    out = tmp_path / "cmp.json"
    res = cp.main(["--a", str(a.parent), "--b", str(b), "--n-boot", "300", "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == res["summary"]
    top, nc = res["protocols"]["all"], res["protocols"]["no_contrast"]
    assert top["difference"]["ci_low"] > 0 and top["p_a_not_better"] == 0.0
    assert nc["difference"]["value"] == 0.0 and nc["a_degrades_less"] is False
    assert nc["drop_a"] == pytest.approx(top["a"] - nc["a"]) and nc["drop_b"] == pytest.approx(0.0)
    # the paired test of the drops: A loses far more than B, in every resample
    deg = nc["degradation"]
    assert deg["drop_a"] == pytest.approx(nc["drop_a"]) and deg["drop_b"] == pytest.approx(nc["drop_b"])
    assert deg["difference"]["ci_high"] < 0 and deg["p_a_not_less"] == 1.0
    assert "degradation" not in top
    s = res["summary"]
    assert (s["protocols"], s["a_ahead"], s["a_ahead_ci_excludes_0"], s["a_degrades_less"]) == (2, 1, 1, 0)
    assert (s["a_degrades_less_ci_excludes_0"], s["b_degrades_less_ci_excludes_0"]) == (0, 1)
    # swapped: B's side of the same test
    swapped = cp.compare(cp.read_predictions(b), cp.read_predictions(a), n_boot=300)
    assert swapped["summary"]["a_degrades_less_ci_excludes_0"] == 1
    # --summarise: one line per written comparison, the numbers of the JSON
    named = tmp_path / "compare_good_vs_noise.json"
    out.rename(named)
    assert cp.main(["--summarise", str(named)]) == {}
    line = capsys.readouterr().out.strip().splitlines()[-1]
    d = top["difference"]
    scores = f"A {top['a']:.3f} / {nc['a']:.3f} | B {top['b']:.3f} / {nc['b']:.3f}"
    assert line.startswith(f"good_vs_noise: {scores}")
    assert f"all {d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" in line
    mean = f"{s['mean_difference']:+.3f}"
    assert line.endswith(f"| A ahead 1 of 2 (1 / 0), mean {mean} | degrades less 0 (0 / 1)")
    with pytest.raises(SystemExit) as e:
        cp.main(["--summarise", str(a)])  # a predictions table, not a comparison
    assert e.value.code == 2 and "not a comparison written by this script" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cp.main(["--a", str(a)])
    assert "give --a and --b (or --summarise)" in capsys.readouterr().err


def test_compare_rejects_mismatched_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cp = load_module("benchmarks/compare_probes.py")
    y = np.array([0, 1, 2, 0])
    p = np.full((4, 3), 1 / 3)
    a = _write(tmp_path / "a.csv", y, {"all": p})
    b = _write(tmp_path / "b.csv", np.array([0, 1, 2, 1]), {"all": p})
    with pytest.raises(SystemExit) as e:
        cp.main(["--a", str(a), "--b", str(b)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "compare_probes: error: protocol all, case c003: the two files disagree on the true label"
    with pytest.raises(SystemExit):
        cp.main(["--a", str(a), "--b", str(tmp_path / "missing.csv")])
    assert "missing.csv: no such predictions file" in capsys.readouterr().err


def test_table_without_protocol_column_counts_as_all(tmp_path: Path) -> None:
    cp = load_module("benchmarks/compare_probes.py")
    y = np.array([0, 1, 2, 0, 1, 2])
    path = _write(tmp_path / "p.csv", y, {"all": np.eye(3)[y]})
    pd.read_csv(path).drop(columns=["protocol", "fold"]).to_csv(path, index=False)
    res = cp.compare(cp.read_predictions(path), cp.read_predictions(path), n_boot=20)
    assert list(res["protocols"]) == ["all"] and res["protocols"]["all"]["a"] == 1.0
