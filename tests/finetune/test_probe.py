"""Tests of the linear probe on synthetic feature tables (no model needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mrfound.data.manifest import Case, Manifest
from mrfound.data.sequences import CLASSES, MALIGNANT, protocol_sequences
from mrfound.finetune.probe import (
    extract_protocol_features,
    feature_columns,
    per_protocol,
    restrict_manifest,
    run_probe,
    stratified_group_folds,
)


def _table(n: int, signal: float, seed: int, n_feat: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    classes = list(CLASSES[:4])
    labels = rng.choice(classes, n)
    y = np.array([classes.index(c) for c in labels])
    x = rng.normal(size=(n, n_feat))
    x[np.arange(n), y] += signal
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(n_feat)])
    frame.insert(0, "case", [f"c{i:03d}" for i in range(n)])
    frame["subject"] = [f"s{i // 2:03d}" for i in range(n)]  # two cases per subject
    frame["label"] = labels
    return frame


def test_separable_features_give_auc_near_one_and_noise_near_half() -> None:
    train = _table(100, signal=4.0, seed=0)
    noise = train.copy()
    noise[feature_columns(train)] = np.random.default_rng(9).normal(size=(100, 12))
    res = run_probe(
        train,
        {"all": train, "noise": noise},
        classes=CLASSES,
        malignant=MALIGNANT,
        cross_validate=True,
        folds=4,
        seed=0,
        n_boot=100,
        cs=(0.01, 1.0),
        inner_folds=2,
    )
    assert res.metrics["all"]["auc_macro"]["value"] > 0.97
    assert 0.35 < res.metrics["noise"]["auc_macro"]["value"] < 0.65
    assert res.metrics["all"]["n_cases"] == 100
    # out-of-fold: every case predicted once per protocol, by the model that did not see its fold
    assert len(res.predictions) == 200 and set(res.predictions["protocol"]) == {"all", "noise"}
    assert {f"p_{c}" for c in CLASSES} <= set(res.predictions.columns)
    assert np.allclose(res.predictions[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1.0)
    # splits: subjects never straddle folds; every fold holds every class
    s = res.splits
    assert s.groupby("subject")["fold"].nunique().max() == 1
    assert (s.groupby("fold")["label"].nunique() == 4).all()
    assert set(res.chosen_c) == {0, 1, 2, 3}


def test_train_test_mode_and_unlabelled_rows_dropped() -> None:
    train = _table(60, signal=3.0, seed=1)
    test = _table(40, signal=3.0, seed=2)
    test.loc[:4, "label"] = ""  # unlabeled test cases are not scored
    res = run_probe(train, {"all": test}, classes=CLASSES, malignant=MALIGNANT, n_boot=0, cs=(1.0,))
    assert res.splits is None and res.chosen_c == {-1: 1.0}
    assert res.metrics["all"]["n_cases"] == 35
    assert res.metrics["all"]["auc_macro"]["value"] > 0.9


def test_folds_are_deterministic_and_grouped() -> None:
    labels = ["hcc", "cyst"] * 20
    groups = [f"s{i // 4}" for i in range(40)]
    a = stratified_group_folds(labels, groups, 5, seed=3)
    b = stratified_group_folds(labels, groups, 5, seed=3)
    assert (a == b).all() and set(a) == set(range(5))
    assert all(len(set(a[[j for j, g in enumerate(groups) if g == s]])) == 1 for s in set(groups))


def _manifest(tmp_path) -> Manifest:
    cases = [
        Case(
            "a", label="hcc", sequences={"t2": tmp_path / "a_t2.nii.gz", "t1_art": tmp_path / "a_art.nii.gz"}
        ),
        Case("b", label="cyst", sequences={"t1_pv": tmp_path / "b_pv.nii.gz"}),
        Case("c", label="fnh", sequences={"t2": tmp_path / "c_t2.nii.gz", "dwi": tmp_path / "c_dwi.nii.gz"}),
    ]
    return Manifest.from_cases(cases, tmp_path)


def test_protocols_remove_the_right_sequences(tmp_path) -> None:
    m = _manifest(tmp_path)
    sub, excluded = restrict_manifest(m, protocol_sequences("t2_only"))
    assert [c.case for c in sub.cases] == ["a", "c"] and excluded == ["b"]
    assert all(set(c.sequences) == {"t2"} for c in sub.cases)
    sub, excluded = restrict_manifest(m, protocol_sequences("no_contrast"))
    assert {c.case: set(c.sequences) for c in sub.cases} == {"a": {"t2"}, "c": {"t2", "dwi"}}
    sub, excluded = restrict_manifest(m, protocol_sequences("without_t2"))
    assert {c.case: set(c.sequences) for c in sub.cases} == {"a": {"t1_art"}, "b": {"t1_pv"}, "c": {"dwi"}}
    assert excluded == []


def test_extract_protocol_features_caches_per_protocol(tmp_path) -> None:
    m = _manifest(tmp_path)
    seen: list[dict[str, set[str]]] = []

    def fn(man) -> pd.DataFrame:
        seen.append({c.case: set(c.sequences) for c in man.cases})
        return pd.DataFrame(
            {"case": [c.case for c in man.cases], "f0": [len(c.sequences) for c in man.cases]}
        )

    kw = {"model_key": "modelx", "cache_dir": tmp_path / "cache"}
    tables, excluded = extract_protocol_features(m, per_protocol(fn), ["all", "t2_only"], **kw)
    assert tables["all"]["f0"].tolist() == [2, 1, 2] and tables["t2_only"]["f0"].tolist() == [1, 1]
    assert excluded == {"all": [], "t2_only": ["b"]}
    assert seen[1] == {"a": {"t2"}, "c": {"t2"}}
    again, _ = extract_protocol_features(m, per_protocol(fn), ["all", "t2_only"], **kw)
    assert len(seen) == 2  # second call read the .npz cache
    pd.testing.assert_frame_equal(again["t2_only"], tables["t2_only"], check_dtype=False)
    extract_protocol_features(m, per_protocol(fn), ["all"], model_key="other", cache_dir=tmp_path / "cache")
    assert len(seen) == 3  # another model: new extraction


def test_missing_feature_values_are_imputed() -> None:
    train = _table(60, signal=3.0, seed=4)
    train.loc[::3, "f5"] = np.nan  # radiomics of a missing sequence
    test = train.copy()
    test["f0"] = np.nan
    res = run_probe(train, {"all": test}, classes=CLASSES, n_boot=0, cs=(1.0,))
    assert np.isfinite(res.predictions[[f"p_{c}" for c in CLASSES]].to_numpy()).all()


def test_unknown_label_raises() -> None:
    from mrfound.errors import ConfigError

    train = _table(20, 1.0, 0)
    train.loc[0, "label"] = "tumour"
    with pytest.raises(ConfigError, match="not in the class vocabulary"):
        run_probe(train, {"all": train}, classes=CLASSES, n_boot=0, cs=(1.0,))


def test_encoder_features_with_absent_sequences_imputed(tmp_path, preprocess_cache) -> None:
    import torch
    from testutils import load_module

    from mrfound.data.dataset import MRDataset, collate_cases
    from mrfound.data.guard import checked_manifest
    from mrfound.errors import ConfigError
    from mrfound.finetune.common import load_encoder
    from mrfound.finetune.probe import encoder_feature_fn

    mod = load_module("tests/finetune/cohort_data.py")
    manifest = checked_manifest(mod.write_cohort(tmp_path / "cohort", n_cases=6), on_error="raise")
    src = load_encoder(mod.write_mae_checkpoint(tmp_path / "mae"), with_decoder=True)
    keep = {"all": src.vocabulary.sequences, "t2_only": ("t2",)}
    kw = {"cache_dir": preprocess_cache, "batch_size": 4}
    dropped = encoder_feature_fn(src.encoder, src.preprocess, **kw)(manifest, keep)
    imputed = encoder_feature_fn(src.encoder, src.preprocess, completer=src.completer, **kw)(manifest, keep)
    cols = [f"f{i}" for i in range(src.encoder.embed_dim)]
    # the cohort has three of the eight sequences, so even `all` is completed
    for p in keep:
        assert dropped[p]["case"].tolist() == imputed[p]["case"].tolist()
        assert not np.allclose(dropped[p][cols], imputed[p][cols])
    # what the features are: the encoder on every sequence after the decoder synthesised the absent ones
    batch = collate_cases([MRDataset(manifest, src.preprocess, mode="lesion", cache_dir=preprocess_cache)[0]])
    t2 = torch.tensor([s == "t2" for s in src.encoder.config.sequences]).unsqueeze(0)
    with torch.no_grad():
        full = src.completer.reconstruct(batch["image"], t2, ~t2)
        expected = src.encoder.embed(full, torch.ones_like(t2)).numpy()[0]
    got = imputed["t2_only"].set_index("case").loc[batch["case"][0], cols].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="completer must be the autoencoder"):
        encoder_feature_fn(load_encoder(tmp_path / "mae").encoder, src.preprocess, completer=src.completer)
