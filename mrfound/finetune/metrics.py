"""Evaluation metrics of DESIGN §7: classification with bootstrap CIs, segmentation Dice/HD95.

Point estimates come from :mod:`sklearn.metrics` (classification) and :mod:`monai.metrics`
(segmentation). The bootstrap (1000 resamples of the cases by default) is vectorised: a resample is a
vector of case multiplicities, and every metric is computed from count-weighted confusion matrices
and weighted rank statistics, so 1000 resamples of a few hundred cases cost milliseconds instead of
the seconds that 1000 x (K + 3) sklearn calls would take per protocol. ``tests/finetune/test_metrics``
checks that unit weights reproduce the sklearn values exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from mrfound.errors import ConfigError

SCALAR_METRICS: tuple[str, ...] = (
    "auc_macro",
    "balanced_accuracy",
    "f1_macro",
    "kappa",
    "f1_kappa_mean",
    "auc_benign_malignant",
    "accuracy",
)
"""Scalars reported by :func:`classification_metrics`, each as ``{value, ci_low, ci_high}``."""

SEGMENTATION_CLASSES: dict[int, str] = {1: "liver", 2: "lesion"}
"""Default label -> name map of the segmentation head (0 is background)."""


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def encode_labels(y_true: Iterable[Any], classes: Sequence[str]) -> np.ndarray:
    """Map class names (or integer indices) to indices into ``classes``.

    Args:
        y_true: Class names or integer indices.
        classes: The class vocabulary (column order of the probabilities).

    Returns:
        int64 array of indices.

    Raises:
        ConfigError: a label is not in ``classes`` or an index is out of range.
    """
    values = list(y_true)
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            if not 0 <= int(v) < len(classes):
                raise ConfigError(f"label index {v} out of range for {len(classes)} classes")
            out[i] = int(v)
        elif str(v) in index:
            out[i] = index[str(v)]
        else:
            raise ConfigError(f"label {v!r} is not one of the classes {', '.join(classes)}")
    return out


# --------------------------------------------------------------------------- weighted (bootstrap) metrics


def _weighted_confusion(w: np.ndarray, y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices (B, K, K) with rows = truth, columns = prediction, cases weighted by ``w``."""
    cell = y * k + pred  # (N,)
    onehot = np.zeros((len(y), k * k))
    onehot[np.arange(len(y)), cell] = 1.0
    return (w @ onehot).reshape(len(w), k, k)


def _confusion_scores(c: np.ndarray) -> dict[str, np.ndarray]:
    """Balanced accuracy, macro F1 (over classes seen in truth or prediction), kappa, accuracy."""
    with np.errstate(divide="ignore", invalid="ignore"):
        tp = np.diagonal(c, axis1=1, axis2=2)
        rows = c.sum(axis=2)
        cols = c.sum(axis=1)
        n = rows.sum(axis=1)
        recall = np.where(rows > 0, tp / rows, np.nan)
        bal = (
            np.nanmean(np.where(rows > 0, recall, np.nan), axis=1) if recall.size else np.full(len(c), np.nan)
        )
        seen = (rows + cols) > 0
        f1 = np.where(seen, 2 * tp / (rows + cols), np.nan)
        f1_macro = np.nanmean(f1, axis=1)
        po = tp.sum(axis=1) / n
        pe = (rows * cols).sum(axis=1) / n**2
        kappa = (po - pe) / (1 - pe)
    return {"balanced_accuracy": bal, "f1_macro": f1_macro, "kappa": kappa, "accuracy": po}


def _weighted_auc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per weight row (ties count 1/2); NaN where a side has no weight."""
    _, group = np.unique(score, return_inverse=True)  # ascending score groups
    g = int(group.max()) + 1 if len(group) else 0
    onehot = np.zeros((len(score), g))
    onehot[np.arange(len(score)), group] = 1.0
    pos_g = (w * positive) @ onehot  # (B, G) positive weight per tie group
    neg_g = (w * ~positive) @ onehot
    below = np.cumsum(neg_g, axis=1) - neg_g  # negatives strictly below each group
    num = (pos_g * (below + 0.5 * neg_g)).sum(axis=1)
    den = pos_g.sum(axis=1) * neg_g.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _weighted_scores(
    w: np.ndarray, y: np.ndarray, proba: np.ndarray, malignant_mask: np.ndarray
) -> dict[str, np.ndarray]:
    k = proba.shape[1]
    pred = proba.argmax(axis=1)
    out = _confusion_scores(_weighted_confusion(w, y, pred, k))
    out["f1_kappa_mean"] = (out["f1_macro"] + out["kappa"]) / 2
    aucs = np.stack([_weighted_auc(w, y == j, proba[:, j]) for j in range(k)], axis=1)  # (B, K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN
        out["auc_macro"] = np.nanmean(aucs, axis=1)
    if malignant_mask.any():
        out["auc_benign_malignant"] = _weighted_auc(
            w, malignant_mask[y], proba[:, malignant_mask].sum(axis=1)
        )
    else:
        out["auc_benign_malignant"] = np.full(len(w), np.nan)
    return out


def _checked_proba(proba: np.ndarray, n: int, k: int, name: str = "proba") -> np.ndarray:
    """``proba`` as float64 (n, k), finite; ConfigError naming ``name`` otherwise."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (n, k):
        raise ConfigError(f"{name} has shape {proba.shape}, expected ({n}, {k})")
    if not np.isfinite(proba).all():
        raise ConfigError(f"{name} contains NaN or infinite values")
    return proba


def _bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) case multiplicities of ``n_boot`` resamples of ``n`` cases with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _percentile_ci(vals: np.ndarray, ci: float) -> tuple[float, float]:
    """Central ``ci`` percentile interval of ``vals``."""
    lo, hi = np.percentile(vals, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return float(lo), float(hi)


def _check_paired(metric: str, n_boot: int) -> None:
    if metric not in SCALAR_METRICS:
        raise ConfigError(f"metric must be one of {list(SCALAR_METRICS)}, got {metric!r}")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")


def _paired_interval(value: float, diffs: np.ndarray, ci: float) -> tuple[dict[str, Any], float | None]:
    """``{"value", "ci_low", "ci_high"}`` of a paired difference from its bootstrap resamples ``diffs``,
    and the share of (finite) resamples in which it is <= 0."""
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = _percentile_ci(diffs, ci) if len(diffs) else (np.nan, np.nan)
    interval = {k: _finite_or_none(v) for k, v in {"value": value, "ci_low": lo, "ci_high": hi}.items()}
    return interval, float((diffs <= 0).mean()) if len(diffs) else None


# --------------------------------------------------------------------------- classification


def classification_metrics(
    y_true: Iterable[Any],
    proba: np.ndarray,
    classes: Sequence[str],
    malignant: Iterable[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Classification metrics of DESIGN §7 with percentile-bootstrap confidence intervals over cases.

    Macro one-vs-rest AUC averages the binary AUCs of the classes present in ``y_true`` (a class absent
    from the truth has no AUC and is left out, as is a class that every case has); macro F1 averages
    over the classes seen in the truth or the predictions (sklearn's default); balanced accuracy over
    the classes present in the truth. The predicted label is ``proba.argmax(1)``.

    Args:
        y_true: True class names (or indices into ``classes``), one per case.
        proba: (N, K) class probabilities, columns in ``classes`` order.
        classes: Class vocabulary.
        malignant: Classes counted as malignant; P(malignant) = the sum of their probabilities.
        n_boot: Bootstrap resamples (0 disables the CIs).
        seed: Seed of the resampling.
        ci: Coverage of the interval.

    Returns:
        ``{metric: {"value", "ci_low", "ci_high"}}`` for each of :data:`SCALAR_METRICS` (``None`` where
        undefined), plus ``auc_per_class`` ({class: AUC or None}), ``confusion_matrix`` (K x K list,
        rows truth, columns prediction), ``classes``, ``n_cases``, ``n_per_class``, ``n_boot``, ``ci``.
    """
    classes = [str(c) for c in classes]
    y = encode_labels(y_true, classes)
    proba = _checked_proba(proba, len(y), len(classes))
    if len(y) == 0:
        raise ConfigError("no cases to score")
    k = len(classes)
    malignant_mask = np.array([c in set(malignant) for c in classes])
    pred = proba.argmax(axis=1)

    # Point estimates with sklearn.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" and friends
        per_class: dict[str, float | None] = {}
        for j, c in enumerate(classes):
            pos = y == j
            per_class[c] = float(skm.roc_auc_score(pos, proba[:, j])) if 0 < pos.sum() < len(y) else None
        defined = [v for v in per_class.values() if v is not None]
        kappa = float(skm.cohen_kappa_score(y, pred)) if len(np.unique(np.r_[y, pred])) > 1 else float("nan")
        point = {
            "auc_macro": float(np.mean(defined)) if defined else float("nan"),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
            "f1_macro": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
            "kappa": kappa,
            "accuracy": float(skm.accuracy_score(y, pred)),
        }
        point["f1_kappa_mean"] = (point["f1_macro"] + point["kappa"]) / 2
        bm = malignant_mask[y]
        point["auc_benign_malignant"] = (
            float(skm.roc_auc_score(bm, proba[:, malignant_mask].sum(axis=1)))
            if malignant_mask.any() and 0 < bm.sum() < len(y)
            else float("nan")
        )

    boot: dict[str, np.ndarray] = {}
    if n_boot > 0:
        boot = _weighted_scores(_bootstrap_weights(len(y), n_boot, seed), y, proba, malignant_mask)
    out: dict[str, Any] = {}
    for name in SCALAR_METRICS:
        entry: dict[str, float | None] = {
            "value": _finite_or_none(point[name]),
            "ci_low": None,
            "ci_high": None,
        }
        vals = boot.get(name)
        if vals is not None and entry["value"] is not None:
            vals = vals[np.isfinite(vals)]
            if len(vals):
                entry["ci_low"], entry["ci_high"] = _percentile_ci(vals, ci)
        out[name] = entry
    out["auc_per_class"] = per_class
    out["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=list(range(k))).tolist()
    out["classes"] = classes
    out["n_cases"] = int(len(y))
    out["n_per_class"] = {c: int((y == j).sum()) for j, c in enumerate(classes)}
    out["n_boot"] = int(n_boot)
    out["ci"] = ci
    return out


def paired_difference(
    y_true: Iterable[Any],
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    classes: Sequence[str],
    malignant: Iterable[str] = (),
    metric: str = "auc_macro",
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap of ``metric(a) - metric(b)`` for two models scored on the same cases.

    Both models are scored on the same resample of the cases each time, so the interval reflects how
    far apart the two models are on this cohort, not the (larger) spread of each model alone: two
    unpaired CIs that overlap can still hide a difference whose paired CI excludes 0.

    Args:
        y_true: True class names (or indices into ``classes``), one per case.
        proba_a: (N, K) probabilities of model A, columns in ``classes`` order.
        proba_b: (N, K) probabilities of model B for the same cases in the same order.
        classes: Class vocabulary.
        malignant: Classes counted as malignant (for ``auc_benign_malignant``).
        metric: One of :data:`SCALAR_METRICS`.
        n_boot: Bootstrap resamples (>= 1).
        seed: Seed of the resampling.
        ci: Coverage of the interval.

    Returns:
        ``{"metric", "a", "b", "difference": {"value", "ci_low", "ci_high"}, "p_a_not_better",
        "n_cases", "n_boot", "ci"}``; ``a`` and ``b`` are the point values, ``p_a_not_better`` the share
        of resamples in which A does not beat B (a one-sided bootstrap p-value for "A > B").
    """
    _check_paired(metric, n_boot)
    classes = [str(c) for c in classes]
    y = encode_labels(y_true, classes)
    n = len(y)
    pa = _checked_proba(proba_a, n, len(classes), "proba_a")
    pb = _checked_proba(proba_b, n, len(classes), "proba_b")
    if n == 0:
        raise ConfigError("no cases to score")
    malignant_mask = np.array([c in set(malignant) for c in classes])
    unit = np.ones((1, n))
    a, b = (float(_weighted_scores(unit, y, p, malignant_mask)[metric][0]) for p in (pa, pb))
    w = _bootstrap_weights(n, n_boot, seed)
    score_a, score_b = (_weighted_scores(w, y, p, malignant_mask)[metric] for p in (pa, pb))
    difference, p_not = _paired_interval(a - b, score_a - score_b, ci)
    return {
        "metric": metric,
        "a": _finite_or_none(a),
        "b": _finite_or_none(b),
        "difference": difference,
        "p_a_not_better": p_not,
        "n_cases": int(n),
        "n_boot": int(n_boot),
        "ci": ci,
    }


def paired_drop_difference(
    y_ref: Iterable[Any],
    ref_a: np.ndarray,
    ref_b: np.ndarray,
    subset: Sequence[int] | np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    classes: Sequence[str],
    malignant: Iterable[str] = (),
    metric: str = "auc_macro",
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap of how much less model A degrades than model B from a reference protocol.

    The drop of a model is ``metric(reference) - metric(protocol)``: e.g. its macro AUC with every
    sequence minus that without contrast. Each resample draws the reference cases once and scores both
    models under both protocols on it (a case outside the protocol, one left with none of its sequences,
    only counts in the reference), so the interval is that of ``drop_b - drop_a`` itself; comparing the
    two drops' own CIs would count the cohort's sampling noise four times.

    Args:
        y_ref: True classes of the reference cases.
        ref_a: (N, K) probabilities of A under the reference protocol.
        ref_b: (N, K) probabilities of B under the reference protocol.
        subset: Indices into the reference cases of the M cases scored under the protocol, in the order
            of ``proba_a`` / ``proba_b``.
        proba_a: (M, K) probabilities of A under the protocol.
        proba_b: (M, K) probabilities of B under the protocol.
        classes, malignant, metric, n_boot, seed, ci: As in :func:`paired_difference`.

    Returns:
        ``{"metric", "drop_a", "drop_b", "difference": {"value", "ci_low", "ci_high"},
        "p_a_not_less", "n_cases", "n_reference", "n_boot", "ci"}``; a positive difference means A loses
        less than B; ``p_a_not_less`` is the share of resamples in which it does not.
    """
    _check_paired(metric, n_boot)
    classes = [str(c) for c in classes]
    y = encode_labels(y_ref, classes)
    n, k = len(y), len(classes)
    idx = np.asarray(subset, dtype=np.int64).reshape(-1)
    if n == 0 or len(idx) == 0:
        raise ConfigError("no cases to score")
    if idx.min() < 0 or idx.max() >= n or len(np.unique(idx)) != len(idx):
        raise ConfigError(f"subset must hold distinct indices into the {n} reference cases")
    ra, rb = _checked_proba(ref_a, n, k, "ref_a"), _checked_proba(ref_b, n, k, "ref_b")
    pa, pb = _checked_proba(proba_a, len(idx), k, "proba_a"), _checked_proba(proba_b, len(idx), k, "proba_b")
    malignant_mask = np.array([c in set(malignant) for c in classes])

    def drops(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for ref, sub in ((ra, pa), (rb, pb)):
            full = _weighted_scores(w, y, ref, malignant_mask)[metric]
            part = _weighted_scores(w[:, idx], y[idx], sub, malignant_mask)[metric]
            out.append(full - part)
        return out[0], out[1]

    da, db = (float(v[0]) for v in drops(np.ones((1, n))))
    boot_a, boot_b = drops(_bootstrap_weights(n, n_boot, seed))
    difference, p_not = _paired_interval(db - da, boot_b - boot_a, ci)
    return {
        "metric": metric,
        "drop_a": _finite_or_none(da),
        "drop_b": _finite_or_none(db),
        "difference": difference,
        "p_a_not_less": p_not,
        "n_cases": int(len(idx)),
        "n_reference": int(n),
        "n_boot": int(n_boot),
        "ci": ci,
    }


def roc_curves(
    y_true: Iterable[Any], proba: np.ndarray, classes: Sequence[str], malignant: Iterable[str] = ()
) -> dict[str, dict[str, list[float]]]:
    """One-vs-rest ROC curves (fpr, tpr, auc) per class present in ``y_true`` and benign-vs-malignant.

    Returns:
        ``{name: {"fpr": [...], "tpr": [...], "auc": float}}``; the benign/malignant curve is keyed
        ``"malignant"``.
    """
    y = encode_labels(y_true, classes)
    proba = np.asarray(proba, dtype=np.float64)
    curves: dict[str, dict[str, list[float]]] = {}
    columns = [(c, y == j, proba[:, j]) for j, c in enumerate(classes)]
    mal = np.array([c in set(malignant) for c in classes])
    if mal.any():
        columns.append(("malignant", mal[y], proba[:, mal].sum(axis=1)))
    for name, pos, score in columns:
        if 0 < pos.sum() < len(y):
            fpr, tpr, _ = skm.roc_curve(pos, score)
            curves[name] = {
                "fpr": fpr.tolist(),
                "tpr": tpr.tolist(),
                "auc": float(skm.roc_auc_score(pos, score)),
            }
    return curves


# --------------------------------------------------------------------------- segmentation


def _as_label_batch(x: Any) -> Any:
    import torch

    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).long()
    if t.ndim == 3:  # (X, Y, Z)
        t = t[None, None]
    elif t.ndim == 4:  # (1, X, Y, Z)
        t = t[None]
    if t.ndim != 5 or t.shape[1] != 1:
        raise ConfigError(f"a label map must be (X,Y,Z), (1,X,Y,Z) or (B,1,X,Y,Z); got {tuple(t.shape)}")
    return t


def segmentation_metrics(
    pred: Any,
    target: Any,
    spacing: float | Sequence[float] | None = None,
    class_names: Mapping[int, str] = SEGMENTATION_CLASSES,
) -> dict[str, Any]:
    """Dice and 95th-percentile Hausdorff distance (mm) per foreground class with MONAI metrics.

    Labels not in ``class_names`` (e.g. 3 "other lesions" in a manifest mask) count as background.
    A class absent from a case's ground truth is ignored for that case (MONAI ``ignore_empty``); a class
    missing from the prediction but present in the truth gives Dice 0 and no HD95.

    Args:
        pred: Predicted label map(s): (X,Y,Z), (1,X,Y,Z) or (B,1,X,Y,Z), numpy or torch.
        target: Ground-truth label map(s), same shape.
        spacing: Voxel size in mm (scalar or per axis); ``None`` = 1 mm.
        class_names: Foreground label -> name.

    Returns:
        ``{name: {"dice", "hd95", "dice_per_case", "hd95_per_case"}, "n_cases": B}``; the means skip
        undefined cases and are ``None`` if none is defined.
    """
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    p, t = _as_label_batch(pred), _as_label_batch(target)
    if p.shape != t.shape:
        raise ConfigError(f"prediction shape {tuple(p.shape)} differs from target shape {tuple(t.shape)}")
    labels = sorted(class_names)
    num = len(labels) + 1

    def onehot(x: torch.Tensor) -> torch.Tensor:
        remap = torch.zeros_like(x)
        for i, lab in enumerate(labels, start=1):
            remap[x == lab] = i
        return torch.nn.functional.one_hot(remap[:, 0], num).permute(0, 4, 1, 2, 3).float()

    po, to = onehot(p), onehot(t)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(po, to)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns (and returns NaN/inf) for empty classes
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            po, to, spacing=spacing
        )
    dice, hd = dice.cpu().numpy(), hd.cpu().numpy()
    # An empty prediction against a present target is undefined for HD, not infinite.
    hd = np.where(np.isfinite(hd), hd, np.nan)
    present = to[:, 1:].flatten(2).sum(-1).cpu().numpy() > 0
    out: dict[str, Any] = {"n_cases": int(p.shape[0])}
    for i, lab in enumerate(labels):
        d = np.where(present[:, i], dice[:, i], np.nan)
        h = np.where(present[:, i], hd[:, i], np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[class_names[lab]] = {
                "dice": _finite_or_none(np.nanmean(d)) if np.isfinite(d).any() else None,
                "hd95": _finite_or_none(np.nanmean(h)) if np.isfinite(h).any() else None,
                "dice_per_case": [_finite_or_none(v) for v in d],
                "hd95_per_case": [_finite_or_none(v) for v in h],
            }
    return out
