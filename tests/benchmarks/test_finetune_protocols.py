"""Tests of benchmarks/finetune_protocols.py on the tiny synthetic cohort (a few fine-tuning steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from testutils import load_module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftp")
    data = load_module("tests/finetune/cohort_data.py")
    manifest = data.write_cohort(root / "cohort")
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.iloc[:16].to_csv(root / "cohort" / "train.csv", index=False)
    frame.iloc[16:].to_csv(root / "cohort" / "test.csv", index=False)
    return root, data.write_checkpoint(root / "a"), data.write_checkpoint(root / "b")


def test_fine_tunes_each_checkpoint_scores_protocols_and_compares(setup) -> None:
    root, a, b = setup
    fp = load_module("benchmarks/finetune_protocols.py")
    argv = [
        "--checkpoint", f"first={a}", "--checkpoint", f"twin={b}",
        "--train-manifest", str(root / "cohort" / "train.csv"),
        "--test-manifest", str(root / "cohort" / "test.csv"),
        "--budget", "tiny", "--protocols", "all,t2_only", "--threads", "1",
        "--work", str(root / "work"), "--out", str(root / "out"),
    ]  # fmt: skip
    doc = fp.main(argv)
    assert json.loads((root / "out" / "finetune_protocols.json").read_text())["runs"] == doc["runs"]
    assert set(doc["runs"]) == {"first_seed0", "twin_seed0"}
    for tag, run in doc["runs"].items():
        assert run["steps"] == 2 and not run["from_scratch"]
        pred = pd.read_csv(root / "out" / tag / "predictions.csv")
        assert set(pred["protocol"]) == {"all", "t2_only"}
        assert len(pred[pred["protocol"] == "all"]) == 8 and len(pred[pred["protocol"] == "t2_only"]) == 7
        assert {"case", "label", "p_hcc", "p_cyst"} <= set(pred.columns)
    # two copies of one checkpoint, fine-tuned with one seed: the same model, a zero paired difference
    cmp = json.loads((root / "out" / "compare_first_vs_twin_seed0.json").read_text())
    assert cmp["a"] == "first_seed0" and cmp["summary"] == doc["comparisons"]["first_vs_twin_seed0"]
    for row in cmp["protocols"].values():
        assert row["difference"]["value"] == 0.0
    # a rerun reuses the fine-tuned runs
    runs = sorted(p.name for p in (root / "work").glob("ft_*"))
    fp.main(argv)
    assert sorted(p.name for p in (root / "work").glob("ft_*")) == runs
    # another head pooling: new runs, and the checkpoints know their pooling
    doc = fp.main([*argv[:-2], "--out", str(root / "out_centre"), "--pooling", "centre"])
    assert doc["settings"]["pooling"] == "centre" and doc["runs"]["first_seed0"]["pooling"] == "centre"
    new = sorted(p.name for p in (root / "work").glob("ft_*") if p.name not in runs)
    assert len(new) == 2
    cfg = json.loads((root / "work" / new[0] / "final" / "config.json").read_text())
    assert "centre" in json.dumps(cfg.get("head", cfg))
    # per-sequence head, linear-probe-then-fine-tune: new runs that record both
    lpft = [*argv[:-2], "--out", str(root / "out_lpft"), "--pooling", "centre_per_sequence"]
    doc = fp.main([*lpft, "--head-only-steps", "1"])
    assert doc["settings"]["head_only_steps"] == 1 and doc["runs"]["first_seed0"]["head_only_steps"] == 1
    run = Path(doc["runs"]["first_seed0"]["run"])
    assert run.name not in runs + new
    assert json.loads((run / "config.json").read_text())["head_only_steps"] == 1
    with pytest.raises(SystemExit, match="head-only-steps"):
        fp.main([*lpft, "--head-only-steps", "-1"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [("nameless", "NAME=PATH"), ("x=/no/such/folder", "not a checkpoint folder")],
)
def test_bad_checkpoint_spec_is_one_clear_line(setup, spec: str, message: str) -> None:
    root, _, _ = setup
    fp = load_module("benchmarks/finetune_protocols.py")
    argv = ["--checkpoint", spec, "--train-manifest", "t.csv", "--test-manifest", "t.csv"]
    with pytest.raises(SystemExit, match=message):
        fp.main([*argv, "--work", str(root / "w"), "--out", str(root / "o")])
