"""``mrfound evaluate``: metrics and figures from a predictions CSV and a labelled manifest."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mrfound.cli import main
from mrfound.data.sequences import CLASSES, MALIGNANT
from mrfound.finetune.metrics import classification_metrics


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["hcc", "cyst", "fnh", "hcc", "metastasis", "cyst"] * 5 + [""]  # last case unlabeled
    rows, truth = [], []
    for i, lab in enumerate(labels):
        p = rng.dirichlet(np.ones(len(CLASSES)))
        if lab:
            p[CLASSES.index(lab)] += 1.0
            truth.append(lab)
        p /= p.sum()
        rows.append(
            {
                "case": f"c{i}",
                "label_pred": CLASSES[int(p.argmax())],
                **{f"p_{c}": p[j] for j, c in enumerate(CLASSES)},
            }
        )
    pred = pd.DataFrame(rows)
    pred.loc[len(pred)] = {
        "case": "not_in_manifest",
        "label_pred": "hcc",
        **{f"p_{c}": 1 / 8 for c in CLASSES},
    }
    pred.to_csv(tmp_path / "predictions.csv", index=False)
    man = pd.DataFrame(
        {
            "case": [f"c{i}" for i in range(len(labels))],
            "label": labels,
            "t2": [f"c{i}_t2.nii.gz" for i in range(len(labels))],
        }
    )
    man.to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path, pred, truth


def test_evaluate_writes_metrics_and_figures(files) -> None:
    tmp, pred, truth = files
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(tmp / "predictions.csv"),
                "--manifest",
                str(tmp / "manifest.csv"),
                "--n-boot",
                "100",
                "--out",
                str(tmp / "eval"),
            ]
        )
        == 0
    )
    doc = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert doc["n_labelled"] == 30 and doc["n_unlabelled"] == 1 and doc["n_unmatched"] == 1
    proba = pred.iloc[:30][[f"p_{c}" for c in CLASSES]].to_numpy()
    ref = classification_metrics(truth, proba, CLASSES, MALIGNANT, n_boot=100, seed=0)
    for key in ("auc_macro", "balanced_accuracy", "f1_macro", "kappa", "auc_benign_malignant"):
        assert doc["metrics"][key] == pytest.approx(ref[key])
    assert np.array(doc["metrics"]["confusion_matrix"]).sum() == 30
    for name in ("roc.png", "confusion.png"):
        data = (tmp / "eval" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_evaluate_per_protocol(files) -> None:
    tmp, pred, _ = files
    two = pd.concat([pred.assign(protocol="all"), pred.assign(protocol="t2_only")])
    two.to_csv(tmp / "p2.csv", index=False)
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(tmp / "p2.csv"),
                "--manifest",
                str(tmp / "manifest.csv"),
                "--n-boot",
                "0",
                "--out",
                str(tmp / "e2"),
            ]
        )
        == 0
    )
    doc = json.loads((tmp / "e2" / "metrics.json").read_text())
    assert set(doc["protocols"]) == {"all", "t2_only"} and doc["shown_protocol"] == "all"


def test_evaluate_errors(files, capsys) -> None:
    tmp, pred, _ = files
    pred.drop(columns=["p_fnh"]).to_csv(tmp / "bad.csv", index=False)
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(tmp / "bad.csv"),
                "--manifest",
                str(tmp / "manifest.csv"),
                "--out",
                str(tmp / "e3"),
            ]
        )
        == 2
    )
    assert "p_<class> column" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(tmp / "missing.csv"),
                "--manifest",
                str(tmp / "manifest.csv"),
                "--out",
                str(tmp / "e3"),
            ]
        )
        == 2
    )
    assert "predictions file not found" in capsys.readouterr().err
