"""Tests of the linear probe on synthetic feature tables (no model needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mrfound.data.manifest import Case, Manifest
from mrfound.data.sequences import CLASSES, MALIGNANT, protocol_sequences
from mrfound.errors import ConfigError
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


def _binary(n: int, seed: int) -> pd.DataFrame:
    """Two classes; f0 carries the label strongly and f1 weakly (one case per subject)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame(
        {
            "case": [f"c{i:03d}" for i in range(n)],
            "subject": [f"s{i:03d}" for i in range(n)],
            "label": np.array(["hcc", "cyst"])[y],
            "f0": 3.0 * y + rng.normal(scale=0.5, size=n),
            "f1": 1.5 * y + rng.normal(scale=0.5, size=n),
        }
    )
    return frame


def _without_f0(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same cases with f0 replaced by noise: a protocol that lost f0's sequence."""
    out = table.copy()
    out["f0"] = np.random.default_rng(seed).normal(scale=3.0, size=len(out))
    return out


def test_protocol_augmentation_teaches_the_probe_a_protocol_it_would_otherwise_fail() -> None:
    train, test = _binary(200, seed=0), _binary(200, seed=1)
    evaluate = {"all": test, "lost_f0": _without_f0(test, seed=2)}
    kw = {"classes": ["hcc", "cyst"], "n_boot": 0, "cs": (0.01, 0.1, 1.0, 10.0), "inner_folds": 3}
    plain = run_probe(train, evaluate, **kw)
    augmented = run_probe(train, evaluate, augment={"lost_f0": _without_f0(train, seed=3)}, **kw)
    auc = {k: r.metrics["lost_f0"]["auc_macro"]["value"] for k, r in (("plain", plain), ("aug", augmented))}
    # trained on complete rows only, the probe leans on f0, which is noise under the protocol
    assert auc["aug"] > auc["plain"] + 0.1 and auc["aug"] > 0.85, auc
    # on complete rows the augmented probe is still good
    assert augmented.metrics["all"]["auc_macro"]["value"] > 0.95


def test_protocol_augmentation_rows_follow_their_case_fold() -> None:
    """Under CV the held-out cases are unseen under every protocol: memorising their augmentation rows
    would predict them perfectly; kept out, their random features carry no label."""
    rng = np.random.default_rng(0)
    n, d = 60, 120
    frame = pd.DataFrame(rng.normal(size=(n, d)), columns=[f"f{i}" for i in range(d)])
    frame.insert(0, "case", [f"c{i:03d}" for i in range(n)])
    frame["subject"] = [f"s{i:03d}" for i in range(n)]
    frame["label"] = np.array(["hcc", "cyst"])[rng.integers(0, 2, n)]
    noise = frame.copy()
    noise[feature_columns(frame)] = rng.normal(size=(n, d))  # the complete-exam rows: unrelated noise
    kw = {"classes": ["hcc", "cyst"], "n_boot": 0, "cs": (1e4,), "inner_folds": 2, "seed": 0}
    cv = run_probe(noise, {"p": frame}, augment={"p": frame}, cross_validate=True, folds=5, **kw)
    leaky = run_probe(noise, {"p": frame}, augment={"p": frame}, **kw)  # trained on the scored rows
    assert leaky.metrics["p"]["auc_macro"]["value"] > 0.95  # memorisation is possible here
    assert cv.metrics["p"]["auc_macro"]["value"] < 0.8
    assert len(cv.splits) == n  # folds drawn on one row per case


def test_protocol_augmentation_ignores_other_cases_and_checks_columns() -> None:
    train = _binary(40, seed=0)
    other = _binary(40, seed=5)
    other["case"] = "x" + other["case"]  # not training cases: ignored
    other["label"] = "hcc"
    kw = {"classes": ["hcc", "cyst"], "n_boot": 0, "cs": (1.0,)}
    a = run_probe(train, {"all": train}, **kw)
    b = run_probe(train, {"all": train}, augment={"p": other}, **kw)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    with pytest.raises(ConfigError, match="protocol 'p': feature columns"):
        run_probe(train, {"all": train}, augment={"p": train.drop(columns="f1")}, **kw)


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
