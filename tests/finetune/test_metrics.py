"""Tests of mrfound.finetune.metrics against hand-computed values and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from mrfound.errors import ConfigError
from mrfound.finetune.metrics import (
    _weighted_scores,
    classification_metrics,
    paired_difference,
    paired_drop_difference,
    roc_curves,
    segmentation_metrics,
)

CLASSES = ["hcc", "icca", "cyst"]
MALIGNANT = {"hcc", "icca"}


def test_hand_computed_small_case() -> None:
    y = ["hcc", "hcc", "icca", "cyst"]
    proba = np.array(
        [
            [0.8, 0.1, 0.1],  # hcc -> hcc
            [0.3, 0.6, 0.1],  # hcc -> icca
            [0.2, 0.7, 0.1],  # icca -> icca
            [0.1, 0.2, 0.7],  # cyst -> cyst
        ]
    )
    m = classification_metrics(y, proba, CLASSES, MALIGNANT, n_boot=0)
    # accuracy 3/4; recalls hcc 1/2, icca 1, cyst 1 -> balanced 5/6
    assert m["accuracy"]["value"] == pytest.approx(0.75)
    assert m["balanced_accuracy"]["value"] == pytest.approx(5 / 6)
    # F1: hcc 2*1/(2+0+1)=2/3, icca 2*1/(2+1+0)=2/3, cyst 1 -> 7/9
    assert m["f1_macro"]["value"] == pytest.approx(7 / 9)
    # kappa: po=3/4; row sums (2,1,1), col sums (1,2,1) -> pe=(2+2+1)/16=5/16 -> (12/16-5/16)/(11/16)=7/11
    assert m["kappa"]["value"] == pytest.approx(7 / 11)
    assert m["f1_kappa_mean"]["value"] == pytest.approx((7 / 9 + 7 / 11) / 2)
    # per-class AUCs: hcc scores pos (.8,.3) vs neg (.2,.1) -> 1; icca pos .7 vs (.1,.6,.2) -> 1; cyst 1
    assert m["auc_macro"]["value"] == pytest.approx(1.0)
    # malignant = hcc+icca: (0.9, 0.9, 0.9) vs cyst 0.3 -> 1
    assert m["auc_benign_malignant"]["value"] == pytest.approx(1.0)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert m["n_cases"] == 4 and m["n_per_class"] == {"hcc": 2, "icca": 1, "cyst": 1}
    assert m["balanced_accuracy"]["ci_low"] is None  # n_boot=0: no interval


def test_absent_class_is_left_out_of_macro_auc() -> None:
    y = ["hcc", "hcc", "cyst", "cyst"]  # no icca
    proba = np.array([[0.6, 0.3, 0.1], [0.4, 0.5, 0.1], [0.2, 0.1, 0.7], [0.5, 0.1, 0.4]])
    m = classification_metrics(y, proba, CLASSES, MALIGNANT, n_boot=0)
    assert m["auc_per_class"]["icca"] is None
    expected = np.mean(
        [skm.roc_auc_score([1, 1, 0, 0], proba[:, 0]), skm.roc_auc_score([0, 0, 1, 1], proba[:, 2])]
    )
    assert m["auc_macro"]["value"] == pytest.approx(expected)


def test_vectorised_bootstrap_matches_sklearn_on_a_resample() -> None:
    rng = np.random.default_rng(3)
    n, k = 80, 3
    y = rng.integers(0, k, n)
    logits = np.round(rng.normal(size=(n, k)) + 1.2 * np.eye(k)[y], 1)  # rounding creates score ties
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    idx = rng.integers(0, n, n)
    w = np.bincount(idx, minlength=n)[None].astype(float)
    fast = _weighted_scores(w, y, proba, np.array([True, True, False]))
    ref = classification_metrics(y[idx], proba[idx], CLASSES, MALIGNANT, n_boot=0)
    for name in ("auc_macro", "balanced_accuracy", "f1_macro", "kappa", "auc_benign_malignant", "accuracy"):
        assert fast[name][0] == pytest.approx(ref[name]["value"], abs=1e-12), name


def test_bootstrap_ci_contains_point_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    n = 120
    y = rng.integers(0, 3, n)
    proba = rng.dirichlet(np.ones(3), n) + 0.8 * np.eye(3)[y]
    proba /= proba.sum(1, keepdims=True)
    labels = [CLASSES[i] for i in y]
    a = classification_metrics(labels, proba, CLASSES, MALIGNANT, n_boot=300, seed=1)
    b = classification_metrics(labels, proba, CLASSES, MALIGNANT, n_boot=300, seed=1)
    for name in (
        "auc_macro",
        "balanced_accuracy",
        "f1_macro",
        "kappa",
        "f1_kappa_mean",
        "auc_benign_malignant",
    ):
        e = a[name]
        assert e["ci_low"] <= e["value"] <= e["ci_high"], name
        assert e["ci_high"] - e["ci_low"] < 0.5
        assert e == b[name]


def test_bad_inputs_raise() -> None:
    with pytest.raises(ConfigError, match="not one of the classes"):
        classification_metrics(["hcc", "fnh"], np.full((2, 3), 1 / 3), CLASSES)
    with pytest.raises(ConfigError, match="shape"):
        classification_metrics(["hcc"], np.full((1, 2), 0.5), CLASSES)


def test_roc_curves_include_malignant() -> None:
    y = ["hcc", "icca", "cyst", "cyst"]
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    curves = roc_curves(y, proba, CLASSES, MALIGNANT)
    assert set(curves) == {"hcc", "icca", "cyst", "malignant"}
    assert curves["malignant"]["auc"] == pytest.approx(1.0)


def test_segmentation_metrics_dice_and_hd95_with_spacing() -> None:
    target = np.zeros((20, 20, 20), np.int64)
    target[2:18, 2:18, 2:18] = 1
    target[8:12, 8:12, 8:12] = 2
    pred = target.copy()
    pred[8:12, 8:12, 8:10] = 1  # half the lesion predicted as liver
    m = segmentation_metrics(pred, target, spacing=2.0)
    assert m["lesion"]["dice"] == pytest.approx(2 * 32 / (32 + 64))
    liver_t, liver_p = (target == 1).sum(), (pred == 1).sum()
    assert m["liver"]["dice"] == pytest.approx(2 * liver_t / (liver_t + liver_p))
    assert m["lesion"]["hd95"] == pytest.approx(4.0)  # 2 voxels at 2 mm
    same = segmentation_metrics(target, target, spacing=(1.5, 1.5, 1.5))
    assert same["liver"]["dice"] == pytest.approx(1.0) and same["liver"]["hd95"] == pytest.approx(0.0)


def test_segmentation_metrics_empty_class_and_other_lesion_label() -> None:
    target = np.zeros((1, 1, 12, 12, 12), np.int64)
    target[0, 0, 2:10, 2:10, 2:10] = 1
    pred = target.copy()
    pred[0, 0, 0, 0, 0] = 3  # label 3 is not scored (background)
    m = segmentation_metrics(pred, target)
    assert m["lesion"]["dice"] is None and m["lesion"]["hd95"] is None
    assert m["liver"]["dice"] == pytest.approx(1.0)
    assert m["n_cases"] == 1


def test_paired_difference_matches_the_unpaired_values_and_brackets_the_gap() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 90)
    good = np.eye(3)[y] * 2 + rng.random((90, 3))  # the true class scores highest most of the time
    noise = rng.random((90, 3))
    good, noise = good / good.sum(1, keepdims=True), noise / noise.sum(1, keepdims=True)
    d = paired_difference(y, good, noise, CLASSES, MALIGNANT, n_boot=500, seed=1)
    for key, proba in (("a", good), ("b", noise)):
        ref = classification_metrics(y, proba, CLASSES, MALIGNANT, n_boot=0)["auc_macro"]["value"]
        assert d[key] == pytest.approx(ref)
    diff = d["difference"]
    assert diff["value"] == pytest.approx(d["a"] - d["b"])
    assert 0 < diff["ci_low"] < diff["value"] < diff["ci_high"]
    assert d["p_a_not_better"] == 0.0 and d["n_cases"] == 90 and d["n_boot"] == 500
    # the same model twice: no difference in any resample
    same = paired_difference(y, noise, noise, CLASSES, metric="kappa", n_boot=50)
    assert same["difference"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert same["p_a_not_better"] == 1.0


def test_paired_drop_difference_is_the_difference_of_the_two_drops() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 120)
    good = np.eye(3)[y] * 2 + rng.random((120, 3))
    good /= good.sum(1, keepdims=True)
    subset = np.sort(rng.choice(120, 100, replace=False))  # 20 cases excluded under the protocol
    noise = rng.random((100, 3))
    noise /= noise.sum(1, keepdims=True)
    # A keeps its predictions without the protocol's sequences, B falls to chance
    d = paired_drop_difference(y, good, good, subset, good[subset], noise, CLASSES, MALIGNANT, n_boot=400)

    def auc(labels, proba):
        return classification_metrics(labels, proba, CLASSES, MALIGNANT, n_boot=0)["auc_macro"]["value"]

    assert d["drop_a"] == pytest.approx(auc(y, good) - auc(y[subset], good[subset]))
    assert d["drop_b"] == pytest.approx(auc(y, good) - auc(y[subset], noise))
    diff = d["difference"]
    assert diff["value"] == pytest.approx(d["drop_b"] - d["drop_a"])
    assert 0 < diff["ci_low"] < diff["value"] < diff["ci_high"] and d["p_a_not_less"] == 0.0
    assert d["n_cases"] == 100 and d["n_reference"] == 120 and d["n_boot"] == 400
    # the same model twice: the drops are equal in every resample
    same = paired_drop_difference(y, good, good, subset, noise, noise, CLASSES, metric="kappa", n_boot=30)
    assert same["difference"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    with pytest.raises(ConfigError, match="distinct indices into the 120 reference cases"):
        paired_drop_difference(y, good, good, [0, 0], good[:2], good[:2], CLASSES)
    with pytest.raises(ConfigError, match=r"proba_b has shape \(99, 3\)"):
        paired_drop_difference(y, good, good, subset, noise, noise[:99], CLASSES)


def test_paired_difference_rejects_bad_input() -> None:
    y = ["hcc", "icca", "cyst"]
    p = np.eye(3)
    with pytest.raises(ConfigError, match="metric must be one of"):
        paired_difference(y, p, p, CLASSES, metric="auroc")
    with pytest.raises(ConfigError, match=r"proba_b has shape \(2, 3\)"):
        paired_difference(y, p, p[:2], CLASSES)
    with pytest.raises(ConfigError, match="n_boot must be >= 1"):
        paired_difference(y, p, p, CLASSES, n_boot=0)
