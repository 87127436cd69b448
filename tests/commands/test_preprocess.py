"""``mrfound preprocess`` (cache fill, second run all hits) and the CHAOS real-data flow."""

from __future__ import annotations

import numpy as np
import pytest

from mrfound.cli import main
from mrfound.data.cache import PreprocessCache
from mrfound.data.manifest import read_manifest
from mrfound.data.preprocess import PreprocessConfig
from mrfound.data.readers import write_nifti


def _tiny_cohort(folder, n=3):
    rows = ["case,t2,t1_pv"]
    for i in range(n):
        img = np.zeros((16, 16, 10), np.float32)
        img[3:13, 3:13, 2:8] = 100 + i
        img[7:9, 7:9, 4:6] = 300
        write_nifti(folder / f"c{i}_t2.nii.gz", img, np.diag([2.0, 2.0, 3.0, 1.0]))
        write_nifti(folder / f"c{i}_pv.nii.gz", img * 2, np.diag([-2.5, -2.5, 3.0, 1.0]))
        rows.append(f"c{i},c{i}_t2.nii.gz,c{i}_pv.nii.gz")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def test_second_run_is_all_cache_hits(tmp_path, capsys):
    m = _tiny_cohort(tmp_path)
    cache = tmp_path / "cache"
    assert main(["preprocess", "--manifest", str(m), "--out", str(cache), "--spacing", "3"]) == 0
    assert "0 cache hit(s), 3 preprocessed, 0 failed" in capsys.readouterr().out
    assert main(["preprocess", "--manifest", str(m), "--out", str(cache), "--spacing", "3"]) == 0
    assert "3 cache hit(s), 0 preprocessed" in capsys.readouterr().out
    c = PreprocessCache(cache, PreprocessConfig(spacing=3.0))
    assert c.config.foreground == "log_otsu" and all(c.has(case) for case in read_manifest(m))
    # another foreground threshold is another cache entry
    args = [
        "preprocess",
        "--manifest",
        str(m),
        "--out",
        str(cache),
        "--spacing",
        "3",
        "--foreground",
        "otsu",
    ]
    assert main(args) == 0
    assert "0 cache hit(s), 3 preprocessed" in capsys.readouterr().out
    raw_cache = PreprocessCache(cache, PreprocessConfig(spacing=3.0, foreground="otsu"))
    assert all(raw_cache.has(case) for case in read_manifest(m))


def test_failures_are_reported_per_case(tmp_path, capsys):
    m = _tiny_cohort(tmp_path, n=2)
    (tmp_path / "c1_pv.nii.gz").write_text("broken")
    # default (--on-error raise): checked before anything is written, one line, nothing in --out
    assert main(["preprocess", "--manifest", str(m), "--out", str(tmp_path / "cache"), "--spacing", "3"]) == 2
    captured = capsys.readouterr()
    assert "case 'c1', column 't1_pv'" in captured.err and "not a NIfTI" in captured.err
    assert not (tmp_path / "cache").exists()
    # --on-error skip: the bad case is listed in rejected.csv, the other one preprocessed
    args = ["preprocess", "--manifest", str(m), "--out", str(tmp_path / "cache"), "--spacing", "3"]
    assert main([*args, "--on-error", "skip"]) == 0
    assert "1 preprocessed, 0 failed" in capsys.readouterr().out
    assert "not a NIfTI" in (tmp_path / "cache" / "rejected.csv").read_text()


def test_workers(tmp_path, capsys):
    m = _tiny_cohort(tmp_path, n=2)
    assert (
        main(
            [
                "preprocess",
                "--manifest",
                str(m),
                "--out",
                str(tmp_path / "cache"),
                "--spacing",
                "3",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    assert "2 preprocessed" in capsys.readouterr().out


def test_chaos_manifest_validate_preprocess(shared_data, tmp_path, capsys):
    chaos = shared_data / "chaos_t2"
    if not chaos.is_dir():
        pytest.skip(f"{chaos} is absent")
    m = tmp_path / "chaos" / "manifest.csv"
    assert (
        main(
            [
                "manifest",
                "--root",
                str(chaos),
                "--pattern",
                "images/chaos_{case}_t2.nii.gz",
                "--mask-pattern",
                "labels/chaos_{case}_labels.nii.gz",
                "--mask-map",
                "1:1,2:0,3:0,4:0",
                "--sequence",
                "t2",
                "--out",
                str(m),
            ]
        )
        == 0
    )
    manifest = read_manifest(m)
    assert len(manifest) == 15 and all(c.mask.parent == m.parent / "manifest_masks" for c in manifest)
    assert main(["validate", "--manifest", str(m)]) == 0
    assert "no problems found" in capsys.readouterr().out
    cache = tmp_path / "cache"
    # a 3 mm grid keeps this test fast; benchmarks/preprocess.py measures the default 1.5 mm
    assert main(["preprocess", "--manifest", str(m), "--out", str(cache), "--spacing", "3"]) == 0
    assert "15 preprocessed, 0 failed" in capsys.readouterr().out
    assert main(["preprocess", "--manifest", str(m), "--out", str(cache), "--spacing", "3"]) == 0
    assert "15 cache hit(s)" in capsys.readouterr().out
    sample = PreprocessCache(cache, PreprocessConfig(spacing=3.0)).get(manifest.cases[0])
    assert sample["available"].tolist() == [True] + [False] * 7
    assert set(np.unique(sample["mask"])) == {0, 1} and sample["body"].mean() > 0.2
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.5


def test_help_shows_examples(capsys):
    for command in ("preprocess", "validate"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"mrfound {command} --manifest" in out
