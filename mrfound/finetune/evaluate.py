"""Score a predictions table against a labelled manifest; ROC and confusion-matrix figures.

A predictions CSV (as written by ``mrfound predict`` or ``mrfound probe``) has ``case``,
``label_pred`` and one ``p_<class>`` column per class; an optional ``protocol`` column (probe output)
splits it into groups scored separately. Labels always come from the manifest (the truth), never from
a ``label`` column of the predictions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mrfound.errors import ConfigError, ManifestError
from mrfound.finetune.metrics import classification_metrics, roc_curves
from mrfound.utils.io import atomic_write_with


def probability_columns(frame: pd.DataFrame) -> list[str]:
    """Class names of the ``p_<class>`` columns, in column order."""
    return [c[2:] for c in frame.columns if str(c).startswith("p_") and len(str(c)) > 2]


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a predictions CSV and check its columns.

    Raises:
        ManifestError: missing file, no ``case`` column, no ``p_<class>`` columns or non-numeric values.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError("predictions file not found", path=str(p))
    try:
        frame = pd.read_csv(p, dtype={"case": str, "protocol": str, "label_pred": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(
            f"cannot parse predictions CSV ({' '.join(str(e).split())})", path=str(p)
        ) from None
    if "case" not in frame.columns:
        raise ManifestError("predictions have no 'case' column", path=str(p))
    classes = probability_columns(frame)
    if not classes:
        raise ManifestError("predictions have no probability columns p_<class>", path=str(p))
    for c in classes:
        col = pd.to_numeric(frame[f"p_{c}"], errors="coerce")
        bad = frame["case"][col.isna()]
        if len(bad):
            raise ManifestError(
                f"non-numeric or empty probability in column p_{c}",
                case=str(bad.iloc[0]),
                column=f"p_{c}",
                path=str(p),
            )
        frame[f"p_{c}"] = col.astype(float)
    return frame


def evaluate_predictions(
    predictions: pd.DataFrame,
    labels: Mapping[str, str | None],
    *,
    malignant: Iterable[str] = (),
    classes: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Classification metrics of predictions against true labels, per protocol if there is a column.

    Args:
        predictions: Table with ``case`` and ``p_<class>`` columns (optional ``protocol``).
        labels: ``case -> class name`` (``None``/empty = unlabeled, skipped).
        malignant: Malignant classes (benign-vs-malignant AUC).
        classes: Class order (default: the ``p_<class>`` columns).
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        ``{"groups": {name: metrics}, "n_predictions", "n_labelled", "n_unlabelled", "n_unmatched",
        "classes"}``; ``name`` is the protocol or ``"all"``. Each metrics dict also holds ``roc`` curves.

    Raises:
        ConfigError: a true label is not among the prediction's classes, or nothing is labelled.
    """
    classes = list(classes or probability_columns(predictions))
    if predictions["case"].duplicated().any() and "protocol" not in predictions.columns:
        dup = predictions["case"][predictions["case"].duplicated()].iloc[0]
        raise ConfigError(
            f"case {dup!r} appears more than once in the predictions (and there is no protocol column)"
        )
    truth = predictions["case"].map(lambda c: labels.get(str(c)) if str(c) in labels else "\0missing")
    unmatched = int((truth == "\0missing").sum())
    keep = truth.notna() & (truth != "") & (truth != "\0missing")
    unknown = sorted(set(truth[keep]) - set(classes))
    if unknown:
        raise ConfigError(
            f"manifest labels {unknown} have no p_<class> column in the predictions "
            f"(columns: {', '.join('p_' + c for c in classes)})"
        )
    frame = predictions[keep].assign(_truth=truth[keep])
    if frame.empty:
        raise ConfigError("no prediction matches a labelled manifest case")
    groups: dict[str, Any] = {}
    grouped = frame.groupby("protocol", sort=False) if "protocol" in frame.columns else [("all", frame)]
    for name, g in grouped:
        proba = g[[f"p_{c}" for c in classes]].to_numpy(float)
        m = classification_metrics(g["_truth"].tolist(), proba, classes, malignant, n_boot=n_boot, seed=seed)
        m["roc"] = roc_curves(g["_truth"].tolist(), proba, classes, malignant)
        groups[str(name)] = m
    n_unlab = int((~keep & (truth != "\0missing")).sum())
    return {
        "groups": groups,
        "n_predictions": int(len(predictions)),
        "n_labelled": int(keep.sum()),
        "n_unlabelled": n_unlab,
        "n_unmatched": unmatched,
        "classes": classes,
    }


# --------------------------------------------------------------------------- figures


def _save_figure(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    try:
        return atomic_write_with(path, lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_roc(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike,
    title: str = "ROC curves (one-vs-rest)",
) -> Path:
    """One-vs-rest ROC curves per class (and benign-vs-malignant, dashed) with AUCs in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, c in curves.items():
        style = (
            {"linestyle": "--", "linewidth": 2.2, "color": "black"}
            if name == "malignant"
            else {"linewidth": 1.5}
        )
        label = "malignant vs benign" if name == "malignant" else name
        ax.plot(c["fpr"], c["tpr"], label=f"{label} (AUC {c['auc']:.2f})", **style)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def plot_confusion(
    matrix: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | os.PathLike,
    title: str = "Confusion matrix",
) -> Path:
    """Row-normalised confusion matrix (colour) with counts (text); rows truth, columns prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.65 * k, 0.8 + 0.6 * k))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if cm[i, j] > 0:
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("Fraction of the true class (row)")
    return _save_figure(fig, path)
