"""``mrfound probe`` end to end on a tiny synthetic cohort (encoder, random-init and radiomics features)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from testutils import load_module

from mrfound.cli import main


def _cohort_module():
    return load_module("tests/finetune/cohort_data.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    mod = _cohort_module()
    return mod.write_cohort(root / "cohort"), mod.write_checkpoint(root / "ckpt"), root


def test_probe_cv_with_protocols_and_feature_cache(setup, capsys) -> None:
    manifest, ckpt, root = setup
    out = root / "out"
    args = [
        "probe",
        "--checkpoint",
        str(ckpt),
        "--train-manifest",
        str(manifest),
        "--protocols",
        "named,only_t1_pv",
        "--folds",
        "3",
        "--n-boot",
        "50",
        "--cache-dir",
        str(root / "pp"),
        "--feature-cache",
        str(root / "fc"),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["protocols"]) == ["all", "no_contrast", "t2_only", "contrast_only", "only_t1_pv"]
    assert doc["n_train"] == doc["n_test"] == 24 and doc["seed"] == 0 and doc["folds"] == 3
    assert doc["command"].startswith("mrfound probe --checkpoint")
    t2 = doc["protocols"]["t2_only"]
    assert t2["n_excluded"] == 2 and t2["n_cases"] == 22 and t2["sequences"] == ["t2"]
    assert doc["protocols"]["only_t1_pv"]["n_excluded"] == 2
    for key in ("auc_macro", "balanced_accuracy", "f1_macro", "kappa", "auc_benign_malignant"):
        entry = doc["protocols"]["all"][key]
        assert set(entry) == {"value", "ci_low", "ci_high"}
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 24 + 22 + 22 + 24 + 22
    assert {"case", "protocol", "fold", "label", "label_pred", "p_hcc", "p_cyst"} <= set(pred.columns)
    splits = pd.read_csv(out / "splits.csv")
    assert splits.groupby("subject")["fold"].nunique().max() == 1 and set(splits["fold"]) == {0, 1, 2}
    n_cached = len(list((root / "fc").glob("*.npz")))
    assert n_cached == 5
    assert "t2_only" in capsys.readouterr().out
    # a second run reads every table from the feature cache and gives the same numbers
    assert main(args[:-1] + [str(root / "out2")]) == 0
    assert len(list((root / "fc").glob("*.npz"))) == n_cached
    doc2 = json.loads((root / "out2" / "metrics.json").read_text())
    assert doc2["protocols"]["all"]["auc_macro"] == doc["protocols"]["all"]["auc_macro"]


def test_probe_random_init_test_manifest_and_radiomics(setup) -> None:
    manifest, ckpt, root = setup
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.iloc[:16].to_csv(manifest.parent / "train.csv", index=False)
    frame.iloc[16:].to_csv(manifest.parent / "test.csv", index=False)
    common = [
        "--train-manifest",
        str(manifest.parent / "train.csv"),
        "--test-manifest",
        str(manifest.parent / "test.csv"),
        "--protocols",
        "all,t2_only",
        "--n-boot",
        "20",
        "--cache-dir",
        str(root / "pp"),
        "--feature-cache",
        str(root / "fc"),
    ]
    assert (
        main(["probe", "--checkpoint", str(ckpt), "--random-init", *common, "--out", str(root / "rnd")]) == 0
    )
    doc = json.loads((root / "rnd" / "metrics.json").read_text())
    assert doc["n_train"] == 16 and doc["n_test"] == 8 and "folds" not in doc
    assert "random init" in doc["source"]
    assert not (root / "rnd" / "splits.csv").exists()
    # centre pooling: other features, so their own feature-cache entries
    before = {f.name for f in (root / "fc").iterdir()}
    argv = ["probe", "--checkpoint", str(ckpt), "--random-init", *common, "--pooling", "centre"]
    assert main([*argv, "--out", str(root / "ctr")]) == 0
    ctr = json.loads((root / "ctr" / "metrics.json").read_text())
    assert "centre token pooling" in ctr["source"] and ctr["n_test"] == 8
    added = {f.name for f in (root / "fc").iterdir()} - before
    assert added and all("-pooling-centre-" in name for name in added)
    # per-sequence central pooling: S * C features, absent sequences' blocks imputed by the probe
    argv = ["probe", "--checkpoint", str(ckpt), "--random-init", *common, "--pooling", "centre_per_sequence"]
    assert main([*argv, "--out", str(root / "cps")]) == 0
    cps = json.loads((root / "cps" / "metrics.json").read_text())
    assert "centre_per_sequence token pooling" in cps["source"]
    assert cps["protocols"]["t2_only"]["n_cases"] == 7  # c17 lacks T2
    for protocol in cps["protocols"].values():
        assert 0.0 <= protocol["auc_macro"]["value"] <= 1.0
    tables = [f for f in (root / "fc").iterdir() if "-pooling-centre_per_sequence-" in f.name]
    assert tables
    with np.load(tables[0]) as table:
        assert table["features"].shape[1] == 8 * 32
    radiomics_centre = ["probe", "--features", "radiomics", *common, "--pooling", "centre"]
    assert main([*radiomics_centre, "--out", str(root / "x")]) == 2
    assert main(["probe", "--features", "radiomics", *common, "--out", str(root / "rad")]) == 0
    rad = json.loads((root / "rad" / "metrics.json").read_text())
    # the radiomics baseline separates the two enhancement patterns of the synthetic cohort
    assert rad["protocols"]["all"]["auc_macro"]["value"] > 0.9
    assert rad["protocols"]["t2_only"]["n_cases"] == 7  # c17 lacks T2
    assert rad["train_protocols"] == ["all"]
    # protocol augmentation: the training cases are extracted (and cached) under every protocol too
    before = {f.name for f in (root / "fc").iterdir()}
    argv = ["probe", "--features", "radiomics", *common, "--train-protocols", "each"]
    assert main([*argv, "--out", str(root / "rad_each")]) == 0
    each = json.loads((root / "rad_each" / "metrics.json").read_text())
    assert each["train_protocols"] == ["all", "t2_only"] and each["n_train"] == 16
    assert "--train-protocols each" in each["command"]
    added = {f.name for f in (root / "fc").iterdir()} - before
    assert len(added) == 1 and added.pop().endswith("-t2_only.npz")  # the training manifest under t2_only
    assert each["protocols"]["t2_only"]["n_cases"] == 7
    # the extra T2-only training rows change the probe: same cases scored, other probabilities
    p_all, p_each = (pd.read_csv(root / d / "predictions.csv") for d in ("rad", "rad_each"))
    assert p_all[["case", "protocol"]].equals(p_each[["case", "protocol"]])
    assert not np.allclose(p_all["p_hcc"], p_each["p_hcc"])


def test_probe_with_absent_sequences_imputed(setup, capsys) -> None:
    manifest, ckpt, root = setup
    mae = _cohort_module().write_mae_checkpoint(root / "mae")
    common = [
        "--train-manifest",
        str(manifest),
        "--protocols",
        "all,t2_only",
        "--folds",
        "3",
        "--n-boot",
        "20",
        "--cache-dir",
        str(root / "pp"),
        "--feature-cache",
        str(root / "fc_imp"),
        "--absent",
        "impute",
    ]
    for extra, name in (([], "imp"), (["--random-init"], "imp_rnd")):
        assert main(["probe", "--checkpoint", str(mae), *extra, *common, "--out", str(root / name)]) == 0
        doc = json.loads((root / name / "metrics.json").read_text())
        assert "absent sequences imputed by its decoder" in doc["source"]
        assert doc["protocols"]["t2_only"]["n_cases"] == 22  # a case without T2 has nothing to impute from
        assert "--absent impute" in doc["command"]
    names = [f.name for f in (root / "fc_imp").iterdir()]
    assert len(names) == 4 and all("-absent-impute-" in n for n in names)
    # a bare encoder has no decoder: one clear line, exit 2
    capsys.readouterr()
    assert main(["probe", "--checkpoint", str(ckpt), *common, "--out", str(root / "x")]) == 2
    assert "no decoder to synthesise absent sequences" in capsys.readouterr().err
    assert not (root / "x" / "metrics.json").exists()


def test_probe_bad_input_exits_2(setup, capsys) -> None:
    manifest, _, root = setup
    assert main(["probe", "--train-manifest", str(manifest), "--out", str(root / "x")]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    assert (
        main(
            [
                "probe",
                "--checkpoint",
                "random:tiny",
                "--train-manifest",
                str(manifest),
                "--protocols",
                "t3_only",
                "--out",
                str(root / "x"),
            ]
        )
        == 2
    )
    assert "unknown protocol" in capsys.readouterr().err
