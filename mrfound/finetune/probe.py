"""Linear probe of frozen features under missing-sequence protocols (DESIGN §4 heads, §7).

The probe is scikit-learn: ``Pipeline(SimpleImputer, StandardScaler, LogisticRegression)`` with
class-balanced weights and an inner grouped cross-validation over ``C``. It is trained on features
of the full protocol (every available sequence) and tested on features re-extracted with only the
protocol's sequences, so a protocol measures how a model trained on complete exams behaves when an
exam lacks sequences. Cases left with none of a protocol's sequences are excluded and counted.
With ``train_protocols="each"`` the probe is instead trained on the training cases' features under every
evaluated protocol (protocol augmentation: one row per case and protocol, all rows of a subject in one
fold), so it has seen each protocol's feature distribution; DESIGN §7's default remains ``"all"``.

Without a test cohort the training cohort is split by ``StratifiedGroupKFold`` over subjects (seed
fixed); out-of-fold predictions of all folds are pooled and scored together, and the fold of each
case is returned so it can be stored with the results.

Features come from a feature function that computes every protocol in one pass over the data: the
frozen encoder (:func:`encoder_feature_fn`: each ROI is read once and encoded once per protocol with
only the kept sequences' tokens) or hand-crafted radiomics (:mod:`mrfound.finetune.radiomics`); any
``manifest -> DataFrame`` function (e.g. ``mrfound.pipeline.extract_features``) fits through
:func:`per_protocol`. :func:`extract_protocol_features` caches each (model, manifest, protocol)
table on disk as ``.npz`` (no pickle).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mrfound.data.sequences import protocol_sequences
from mrfound.errors import ConfigError
from mrfound.finetune.metrics import classification_metrics
from mrfound.utils.io import atomic_write_with

META_COLUMNS = frozenset({"case", "subject", "center", "label", "fold", "protocol", "sequences_used"})
TRAIN_PROTOCOLS = ("all", "each")
"""Probe training data: complete exams (``all``, DESIGN §7) or the cases under every protocol (``each``)."""
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))
"""Inverse regularisation strengths searched by the inner CV."""

FeatureFn = Callable[[Any, Mapping[str, Sequence[str]]], Mapping[str, pd.DataFrame]]
"""``fn(manifest, {protocol: kept sequences}) -> {protocol: DataFrame}`` (``case`` + feature columns)."""


# --------------------------------------------------------------------------- feature tables


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Feature columns: ``f0..fN`` in numeric order if present, else every numeric non-meta column."""
    fcols = [c for c in frame.columns if re.fullmatch(r"f\d+", str(c))]
    if fcols:
        return sorted(fcols, key=lambda c: int(c[1:]))
    return [c for c in frame.columns if c not in META_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])]


def restrict_manifest(manifest: Any, keep: Iterable[str]) -> tuple[Any, list[str]]:
    """A copy of ``manifest`` whose cases keep only the sequences in ``keep``.

    Args:
        manifest: A :class:`mrfound.data.manifest.Manifest`.
        keep: Sequence names to keep.

    Returns:
        ``(restricted manifest, excluded case ids)``: cases left with no sequence are dropped.
    """
    keep = set(keep)
    cases, excluded = [], []
    for case in manifest.cases:
        seqs = {s: p for s, p in case.sequences.items() if s in keep}
        if seqs:
            cases.append(dataclasses.replace(case, sequences=seqs))
        else:
            excluded.append(case.case)
    return type(manifest).from_cases(cases, manifest.root, manifest.vocabulary), excluded


def _file_fingerprint(path: Path) -> str:
    try:
        st = path.stat()
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{path}:missing"


def manifest_fingerprint(manifest: Any) -> str:
    """Hash of a manifest's cases and the size/mtime of every file they point to."""
    h = hashlib.sha256()
    for case in manifest.cases:
        h.update(f"{case.case}|{case.subject}|{case.label}|".encode())
        for seq in sorted(case.sequences):
            p = Path(case.sequences[seq])
            if p.is_dir():  # DICOM folder: every file in it
                parts = [_file_fingerprint(f) for f in sorted(p.rglob("*")) if f.is_file()]
            else:
                parts = [_file_fingerprint(p)]
            h.update(f"{seq}={';'.join(parts)}|".encode())
        if case.mask is not None:
            h.update(_file_fingerprint(Path(case.mask)).encode())
        h.update(str(case.lesion_xyz).encode())
    return h.hexdigest()[:20]


def _save_table(path: Path, frame: pd.DataFrame) -> None:
    fcols = feature_columns(frame)

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                case=frame["case"].astype(str).to_numpy(dtype=str),
                columns=np.array(fcols, dtype=str),
                features=frame[fcols].to_numpy(dtype=np.float32),
            )

    atomic_write_with(path, writer)


def _load_table(path: Path) -> pd.DataFrame:
    with np.load(path, allow_pickle=False) as z:
        frame = pd.DataFrame(z["features"], columns=[str(c) for c in z["columns"]])
        frame.insert(0, "case", [str(c) for c in z["case"]])
    return frame


def protocol_keep_sets(protocols: Sequence[str], sequences: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``{protocol: kept sequences}`` for a vocabulary (raises ``ConfigError`` for unknown names)."""
    return {p: protocol_sequences(p, sequences) for p in protocols}


def excluded_cases(manifest: Any, keep: Iterable[str]) -> list[str]:
    """Cases of ``manifest`` that have none of the sequences in ``keep``."""
    keep = set(keep)
    return [c.case for c in manifest.cases if not keep & set(c.sequences)]


def extract_protocol_features(
    manifest: Any,
    feature_fn: FeatureFn,
    protocols: Sequence[str],
    *,
    model_key: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    sequences: Sequence[str] | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, list[str]]]:
    """Feature tables of ``manifest`` under each protocol, cached per (model, manifest, protocol).

    Args:
        manifest: The cohort.
        feature_fn: ``feature_fn(manifest, keep) -> {protocol: DataFrame}`` where ``keep`` maps each
            protocol to the sequences it keeps; each table has ``case`` + feature columns, one row per
            case that has at least one kept sequence. One call computes every requested protocol, so
            the data are read (and preprocessed) once.
        protocols: Protocol names (:func:`mrfound.data.sequences.protocol_sequences`).
        model_key: Identifies the model (e.g. a checkpoint hash); caching is off when ``None``.
        cache_dir: Folder for ``<model>-<manifest>-<protocol>.npz`` files; caching is off when ``None``.
        sequences: The model's sequence vocabulary (default: the manifest's).

    Returns:
        ``(tables, excluded)``: feature tables (``case`` + feature columns) and, per protocol, the
        cases that have none of its sequences (not in the table).
    """
    seqs = tuple(sequences or manifest.vocabulary.sequences)
    keep = protocol_keep_sets(protocols, seqs)
    excluded = {p: excluded_cases(manifest, k) for p, k in keep.items()}
    tables: dict[str, pd.DataFrame] = {}
    paths: dict[str, Path] = {}
    if cache_dir and model_key:
        mkey = manifest_fingerprint(manifest)
        for p in protocols:
            paths[p] = Path(cache_dir) / f"{model_key}-{mkey}-{p}.npz"
            if paths[p].is_file():
                tables[p] = _load_table(paths[p])
    todo = {p: k for p, k in keep.items() if p not in tables}
    if todo and len(manifest) > 0:
        computed = feature_fn(manifest, todo)
        for p in todo:
            frame = computed[p]
            frame = frame[["case", *feature_columns(frame)]].copy()
            frame["case"] = frame["case"].astype(str)
            if p in paths:
                _save_table(paths[p], frame)
            tables[p] = frame
    for p in protocols:
        tables.setdefault(p, pd.DataFrame({"case": pd.Series([], dtype=str)}))
    return {p: tables[p] for p in protocols}, excluded


def per_protocol(fn: Callable[[Any], pd.DataFrame]) -> FeatureFn:
    """Adapt a plain ``manifest -> DataFrame`` function: one call per protocol on a restricted manifest."""

    def wrapped(manifest: Any, keep: Mapping[str, Sequence[str]]) -> dict[str, pd.DataFrame]:
        out = {}
        for p, k in keep.items():
            sub, _ = restrict_manifest(manifest, k)
            out[p] = fn(sub) if len(sub) else pd.DataFrame({"case": pd.Series([], dtype=str)})
        return out

    return wrapped


def encoder_feature_fn(
    encoder: Any,
    preprocess: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    device: Any = None,
    num_workers: int = 0,
    pooling: str = "mean",
    completer: Any = None,
) -> FeatureFn:
    """Frozen-encoder features: the pooled tokens (``encoder.embed``) of each lesion-centred ROI.

    Each case is read and cropped once; for every protocol the encoder sees only the tokens of the
    case's sequences that the protocol keeps (the other sequences are absent, not zero-filled). With a
    ``completer`` the absent sequences are first synthesised from the kept ones and the encoder sees
    all S sequences: what masked-modality pretraining learns to do, used at test time.

    Args:
        encoder: A :class:`mrfound.models.encoder.MultiSequenceViT`.
        preprocess: The :class:`mrfound.data.preprocess.PreprocessConfig` of the checkpoint.
        cache_dir: Preprocessing cache folder.
        batch_size: Cases per forward pass.
        device: Torch device (default: the encoder's).
        num_workers: DataLoader workers.
        pooling: Token pooling of :meth:`mrfound.models.encoder.MultiSequenceViT.embed` (``"mean"``,
            ``"centre"`` or ``"centre_per_sequence"``); encoders without a ``pooling`` argument only
            support ``"mean"``.
        completer: A model with ``complete(image, available)`` (the checkpoint's
            :class:`mrfound.models.mae.MaskedModalityAutoencoder`, ``EncoderSource.completer``) whose
            encoder is ``encoder``; ``None`` (default) leaves absent sequences out.

    Returns:
        A feature function for :func:`extract_protocol_features` (columns ``f0..f{C-1}``; S * C of
        them for ``"centre_per_sequence"``, NaN in the blocks of absent sequences unless completed).
    """
    embed_kw = {} if pooling == "mean" else {"pooling": pooling}
    if completer is not None and getattr(completer, "encoder", None) is not encoder:
        raise ConfigError("the completer must be the autoencoder whose encoder is probed")

    def fn(manifest: Any, keep: Mapping[str, Sequence[str]]) -> dict[str, pd.DataFrame]:
        import torch
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from mrfound.data.dataset import MRDataset, collate_cases

        seqs = list(encoder.config.sequences)
        masks = {p: torch.tensor([s in set(k) for s in seqs]) for p, k in keep.items()}
        ds = MRDataset(manifest, preprocess, mode="lesion", cache_dir=cache_dir)
        dl = DataLoader(
            ds, batch_size=batch_size, shuffle=False, collate_fn=collate_cases, num_workers=num_workers
        )
        dev = device or next(encoder.parameters()).device
        rows: dict[str, list[tuple[str, Any]]] = {p: [] for p in keep}
        model = completer if completer is not None else encoder
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in tqdm(dl, desc="features", disable=None, leave=False):
                    image = batch["image"].to(dev)
                    for p, m in masks.items():
                        avail = batch["available"] & m
                        use = avail.any(dim=1)
                        if not bool(use.any()):
                            continue
                        img, av = image[use], avail[use].to(dev)
                        if completer is not None:
                            img, av = completer.complete(img, av)
                        feats = encoder.embed(img, av, **embed_kw)
                        feats = feats.float().cpu().numpy()
                        names = [c for c, u in zip(batch["case"], use.tolist()) if u]
                        rows[p].extend(zip(names, feats))
        finally:
            model.train(was)
        dim = encoder.embed_dim_of(pooling) if hasattr(encoder, "embed_dim_of") else encoder.config.embed_dim
        out = {}
        for p, r in rows.items():
            x = np.stack([f for _, f in r]) if r else np.zeros((0, dim), np.float32)
            frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(dim)])
            frame.insert(0, "case", [c for c, _ in r])
            out[p] = frame
        return out

    return fn


# --------------------------------------------------------------------------- the probe


def _macro_auc_scorer(estimator: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Macro OvR AUC over the classes present in ``y`` (robust to classes missing from a fold)."""
    from sklearn.metrics import roc_auc_score

    proba = estimator.predict_proba(x)
    aucs = []
    for j, c in enumerate(estimator.classes_):
        pos = y == c
        if 0 < pos.sum() < len(y):
            aucs.append(roc_auc_score(pos, proba[:, j]))
    return float(np.mean(aucs)) if aucs else float("nan")


def make_probe(
    cs: Sequence[float] = DEFAULT_CS, inner_folds: int = 3, seed: int = 0, groups_available: bool = True
) -> Pipeline | GridSearchCV:
    """The probe estimator: imputer -> scaler -> class-balanced logistic regression, with C searched.

    Returns:
        A ``GridSearchCV`` over ``logreg__C`` (fit it with ``groups=``), or the bare pipeline when
        ``len(cs) == 1``.
    """
    pipe = Pipeline(
        [
            ("impute", SimpleImputer(strategy="mean", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=float(cs[0]), class_weight="balanced", max_iter=2000)),
        ]
    )
    if len(cs) == 1:
        return pipe
    return GridSearchCV(
        pipe,
        {"logreg__C": list(cs)},
        cv=StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed),
        scoring=_macro_auc_scorer,
        error_score=np.nan,
        refit=True,
    )


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    cs: Sequence[float] = DEFAULT_CS,
    inner_folds: int = 3,
    seed: int = 0,
) -> Any:
    """Fit the probe on features ``x`` and integer labels ``y``; returns a fitted estimator.

    The inner CV uses at most ``inner_folds`` subject-grouped folds, fewer if the training set has
    fewer subjects or the rarest class fewer members; with < 2 possible folds ``C = 1``.
    """
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    n_groups = len(np.unique(groups))
    counts = np.bincount(np.unique(y, return_inverse=True)[1])
    min_class = int(counts.min())
    # a stratified split needs at least one class with k members (one case per class: no inner CV)
    k = min(inner_folds, n_groups, max(min_class, 2), int(counts.max()))
    if len(cs) == 1 or k < 2 or len(np.unique(y)) < 2:
        est = make_probe(cs=(1.0,) if len(cs) != 1 else cs)
        est.fit(x, y)
        return est
    est = make_probe(cs=cs, inner_folds=k, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members"
        warnings.simplefilter("ignore", RuntimeWarning)
        est.fit(x, y, groups=groups)
    return est


def _full_proba(est: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` widened to every class of the vocabulary (0 for classes unseen in training)."""
    p = est.predict_proba(x)
    out = np.zeros((len(x), n_classes))
    out[:, np.asarray(est.classes_, dtype=int)] = p
    return out


@dataclasses.dataclass
class ProbeResult:
    """Output of :func:`run_probe`.

    Attributes:
        metrics: ``{protocol: classification_metrics(...) + n_excluded, n_cases}``.
        predictions: One row per (protocol, case): case, subject, protocol, fold, label,
            label_pred, p_<class> for every class.
        splits: case, subject, label, fold (cross-validation) or None.
        chosen_c: C picked per fold (``-1`` = the single model trained on the whole training set).
    """

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    splits: pd.DataFrame | None
    chosen_c: dict[int, float]


def stratified_group_folds(
    labels: Sequence[str], groups: Sequence[str], n_folds: int, seed: int
) -> np.ndarray:
    """Fold index of each case from ``StratifiedGroupKFold`` (subjects never straddle folds).

    Raises:
        ConfigError: fewer subjects than folds.
    """
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ConfigError(
            f"{n_folds}-fold cross-validation needs at least {n_folds} labelled subjects; "
            f"the training manifest has {n_groups}"
        )
    fold = np.full(len(groups), -1, dtype=np.int64)
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for f, (_, test_idx) in enumerate(skf.split(np.zeros(len(groups)), np.asarray(labels), groups)):
            fold[test_idx] = f
    return fold


def run_probe(
    train: pd.DataFrame,
    evaluate: Mapping[str, pd.DataFrame],
    *,
    classes: Sequence[str],
    malignant: Iterable[str] = (),
    cross_validate: bool = False,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    cs: Sequence[float] = DEFAULT_CS,
    inner_folds: int = 3,
    excluded: Mapping[str, Sequence[str]] | None = None,
    augment: Mapping[str, pd.DataFrame] | None = None,
) -> ProbeResult:
    """Train the probe on ``train`` and score it on each protocol's table in ``evaluate``.

    Args:
        train: Training features under the full protocol: ``case``, ``label`` (class names; empty/NaN =
            unlabeled, dropped), optional ``subject``, feature columns (:func:`feature_columns`).
        evaluate: ``{protocol: table}`` with ``case``, ``label``, optional ``subject`` and the same
            feature columns. With ``cross_validate`` these are the training cases' own features
            under each protocol, scored out-of-fold.
        classes: Class vocabulary (probability columns).
        malignant: Malignant classes for the benign-vs-malignant AUC.
        cross_validate: Split ``train`` into ``folds`` stratified subject-grouped folds.
        folds: Number of outer folds.
        seed: Seed of the folds, inner CV and bootstrap.
        n_boot: Bootstrap resamples for the CIs.
        cs: C grid of the inner search.
        inner_folds: Inner CV folds.
        excluded: Per protocol, case ids excluded because they have none of its sequences.
        augment: Extra training rows, ``{protocol: table}`` of the training cases' features under other
            protocols (protocol augmentation). Only rows of cases in ``train`` are used, each with its
            case's fold, so under ``cross_validate`` a held-out case is unseen under every protocol.

    Returns:
        A :class:`ProbeResult`.
    """
    classes = list(classes)
    train = _labelled(train, classes)
    if len(train) == 0:
        raise ConfigError("the training table has no labelled cases")
    fcols = feature_columns(train)
    if not fcols:
        raise ConfigError("the training table has no feature columns (f0..fN or numeric)")
    n_train = len(train)  # the full-protocol rows, one per case: the folds are drawn on these
    if augment:
        cases = set(train["case"])
        extra = [_require_columns(p, _labelled(t, classes), fcols) for p, t in augment.items()]
        train = pd.concat([train, *(t[t["case"].isin(cases)] for t in extra)], ignore_index=True)
    y = train["label"].map(classes.index).to_numpy()
    subj = train["subject"].astype(str).to_numpy()

    splits = None
    chosen: dict[int, float] = {}
    models: dict[int, Any] = {}
    if cross_validate:
        base = train.iloc[:n_train]
        fold0 = stratified_group_folds(base["label"].tolist(), subj[:n_train], folds, seed)
        splits = pd.DataFrame({"case": base["case"], "subject": subj[:n_train], "label": base["label"]})
        splits["fold"] = fold0
        case_fold = dict(zip(base["case"], fold0))
        fold = train["case"].map(case_fold).to_numpy()  # augmentation rows follow their case
        for f in range(folds):
            m = fold != f
            models[f] = fit_probe(
                train.loc[m, fcols].to_numpy(float), y[m], subj[m], cs=cs, inner_folds=inner_folds, seed=seed
            )
    else:
        case_fold = {}
        models[-1] = fit_probe(
            train[fcols].to_numpy(float), y, subj, cs=cs, inner_folds=inner_folds, seed=seed
        )
    for f, est in models.items():
        chosen[f] = (
            float(est.best_params_["logreg__C"])
            if hasattr(est, "best_params_")
            else float(est.named_steps["logreg"].C)
        )

    metrics: dict[str, Any] = {}
    rows = []
    for protocol, table in evaluate.items():
        table = _require_columns(protocol, _labelled(table, classes), fcols)
        if cross_validate:
            table = table[table["case"].isin(case_fold)].copy()
            table["fold"] = table["case"].map(case_fold).astype(int)
        else:
            table = table.copy()
            table["fold"] = -1
        n_excl = len(excluded.get(protocol, ())) if excluded else 0
        if len(table) == 0:
            metrics[protocol] = {"n_cases": 0, "n_excluded": n_excl}
            continue
        proba = np.zeros((len(table), len(classes)))
        for f, est in models.items():
            m = (table["fold"] == f).to_numpy()
            if m.any():
                proba[m] = _full_proba(est, table.loc[m, fcols].to_numpy(float), len(classes))
        res = classification_metrics(
            table["label"].tolist(), proba, classes, malignant, n_boot=n_boot, seed=seed
        )
        res["n_excluded"] = n_excl
        metrics[protocol] = res
        pred = pd.DataFrame(
            {
                "case": table["case"].to_numpy(),
                "subject": table["subject"].astype(str).to_numpy(),
                "protocol": protocol,
                "fold": table["fold"].to_numpy(),
                "label": table["label"].to_numpy(),
                "label_pred": [classes[i] for i in proba.argmax(1)],
            }
        )
        for j, c in enumerate(classes):
            pred[f"p_{c}"] = proba[:, j]
        rows.append(pred)
    predictions = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return ProbeResult(metrics=metrics, predictions=predictions, splits=splits, chosen_c=chosen)


def _require_columns(protocol: str, table: pd.DataFrame, fcols: Sequence[str]) -> pd.DataFrame:
    """``table`` unchanged, or ``ConfigError`` if it lacks feature columns of the training table."""
    missing = [c for c in fcols if c not in table.columns]
    if missing:
        raise ConfigError(f"protocol {protocol!r}: feature columns {missing[:3]} missing from its table")
    return table


def _labelled(table: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Rows with a label in ``classes``; fills ``subject`` from ``case`` when absent."""
    t = table.copy()
    if "subject" not in t.columns:
        t["subject"] = t["case"]
    t["subject"] = t["subject"].fillna(t["case"]).astype(str)
    t["case"] = t["case"].astype(str)
    if "label" not in t.columns:
        raise ConfigError("the feature table has no 'label' column")
    lab = t["label"]
    t = t[lab.notna() & (lab.astype(str) != "")]
    unknown = sorted(set(t["label"].astype(str)) - set(classes))
    if unknown:
        raise ConfigError(f"labels {unknown} are not in the class vocabulary {', '.join(classes)}")
    t["label"] = t["label"].astype(str)
    return t.reset_index(drop=True)


def attach_case_info(tables: Mapping[str, pd.DataFrame], manifest: Any) -> dict[str, pd.DataFrame]:
    """Add ``subject``, ``center`` and ``label`` from the manifest to feature tables keyed by ``case``."""
    info = pd.DataFrame(
        {
            "case": [c.case for c in manifest.cases],
            "subject": [c.subject for c in manifest.cases],
            "center": [c.center for c in manifest.cases],
            "label": [c.label if c.label else None for c in manifest.cases],
        }
    )
    out = {}
    for protocol, t in tables.items():
        t = t.drop(columns=[c for c in ("subject", "center", "label") if c in t.columns])
        out[protocol] = info.merge(t, on="case", how="inner")
    return out


# --------------------------------------------------------------------------- end to end


def resolve_protocols(spec: str | Sequence[str], sequences: Sequence[str]) -> list[str]:
    """Protocol names from a comma list; ``full`` = every DESIGN §7 protocol, ``named`` = the four named.

    Raises:
        ConfigError: an unknown protocol name.
    """
    from mrfound.data.sequences import NAMED_PROTOCOLS, all_protocols

    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[str] = []
    for item in items or ["full"]:
        names = (
            all_protocols(sequences)
            if item == "full"
            else list(NAMED_PROTOCOLS)
            if item == "named"
            else [item]
        )
        for n in names:
            protocol_sequences(n, sequences)  # validates
            if n not in out:
                out.append(n)
    if "all" not in out:
        out.insert(0, "all")  # the probe is trained on the full protocol
    return out


@dataclasses.dataclass
class ProbeRun:
    """Output of :func:`probe_cohort`: the :class:`ProbeResult` plus what is needed to report it."""

    result: ProbeResult
    protocols: list[str]
    protocol_sequences: dict[str, list[str]]
    n_train: int
    n_test: int
    excluded: dict[str, list[str]]
    source: str
    cross_validated: bool
    train_protocols: list[str] = dataclasses.field(default_factory=lambda: ["all"])

    def metrics_json(self, *, seed: int, command: str, folds: int | None) -> dict[str, Any]:
        """The ``metrics.json`` document of ``mrfound probe``."""
        protocols = {}
        for p in self.protocols:
            m = dict(self.result.metrics.get(p, {"n_cases": 0}))
            m["n_excluded"] = len(self.excluded.get(p, []))
            m["sequences"] = self.protocol_sequences[p]
            protocols[p] = m
        doc: dict[str, Any] = {
            "protocols": protocols,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "seed": seed,
            "command": command,
            "source": self.source,
            "evaluation": f"{folds}-fold stratified subject-grouped CV"
            if self.cross_validated
            else "test manifest",
            "chosen_C": {str(k): v for k, v in self.result.chosen_c.items()},
            "train_protocols": list(self.train_protocols),
        }
        if self.cross_validated:
            doc["folds"] = folds
        return doc


def probe_cohort(
    train_manifest: Any,
    feature_fn: FeatureFn,
    *,
    test_manifest: Any = None,
    protocols: str | Sequence[str] = "full",
    sequences: Sequence[str],
    classes: Sequence[str],
    malignant: Iterable[str] = (),
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    cs: Sequence[float] = DEFAULT_CS,
    model_key: str | None = None,
    feature_cache: str | os.PathLike | None = None,
    source: str = "",
    train_protocols: str = "all",
) -> ProbeRun:
    """Extract (cached) features under every protocol and probe them (train on ``all``, test on each).

    Args:
        train_manifest: Training cohort (labelled cases are used).
        feature_fn: See :func:`extract_protocol_features` (e.g. :func:`encoder_feature_fn`).
        test_manifest: Test cohort; ``None`` = stratified subject-grouped ``folds``-fold CV on the
            training cohort.
        protocols: Comma list or names (see :func:`resolve_protocols`).
        sequences: The model's sequence vocabulary.
        classes: Class vocabulary.
        malignant: Malignant classes.
        folds: Outer folds without a test cohort.
        seed: Seed of folds, inner CV and bootstrap.
        n_boot: Bootstrap resamples.
        cs: C grid.
        model_key: Feature-cache key of the model (``None`` = no cache).
        feature_cache: Feature-cache folder.
        source: Description of the features' origin (reported).
        train_protocols: ``all`` (default): train on the full protocol only; ``each``: train on the
            training cases under every protocol in ``protocols`` (see :func:`run_probe`'s ``augment``;
            with a test cohort this extracts the training cohort's features under each protocol too).
    """
    if train_protocols not in TRAIN_PROTOCOLS:
        raise ConfigError(
            f"train_protocols must be one of {', '.join(TRAIN_PROTOCOLS)}, got {train_protocols!r}"
        )
    protos = resolve_protocols(protocols, sequences)
    keep = protocol_keep_sets(protos, sequences)
    kw = {"model_key": model_key, "cache_dir": feature_cache, "sequences": sequences}
    cv = test_manifest is None
    each = train_protocols == "each"
    if cv:
        tables, excluded = extract_protocol_features(train_manifest, feature_fn, protos, **kw)
        eval_tables = attach_case_info(tables, train_manifest)
        train_tables = eval_tables
    else:
        train_protos = protos if each else ["all"]
        train_raw, _ = extract_protocol_features(train_manifest, feature_fn, train_protos, **kw)
        train_tables = attach_case_info(train_raw, train_manifest)
        tables, excluded = extract_protocol_features(test_manifest, feature_fn, protos, **kw)
        eval_tables = attach_case_info(tables, test_manifest)
    train = train_tables["all"]
    augment = {p: t for p, t in train_tables.items() if p != "all"} if each else None
    result = run_probe(
        train,
        eval_tables,
        classes=classes,
        malignant=malignant,
        cross_validate=cv,
        folds=folds,
        seed=seed,
        n_boot=n_boot,
        cs=cs,
        excluded=excluded,
        augment=augment,
    )
    labelled_train = int((train["label"].notna() & (train["label"].astype(str) != "")).sum())
    test_source = train_manifest if test_manifest is None else test_manifest
    n_test = sum(1 for c in test_source.cases if c.label) if test_manifest is not None else labelled_train
    return ProbeRun(
        result=result,
        protocols=protos,
        protocol_sequences={p: list(k) for p, k in keep.items()},
        n_train=labelled_train,
        n_test=n_test,
        excluded=excluded,
        source=source,
        cross_validated=cv,
        train_protocols=protos if each else ["all"],
    )
