"""Cross-validation splits by subject, stratified by class (scikit-learn ``StratifiedGroupKFold``).

Labelled rows get folds ``0 .. n_folds-1``; no subject appears in two folds. Unlabelled rows (usable for
pretraining only) get fold ``-1`` and stay in the table, so a training loop can add them to every
training split for self-supervision while never scoring them. If a subject has both labelled and
unlabelled rows, its unlabelled rows still get ``-1`` (they hold no label to leak).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mrfound.data.manifest import Manifest, as_manifest
from mrfound.errors import ConfigError, ManifestError

SPLIT_COLUMNS = ("case", "subject", "fold")


def make_splits(manifest: Manifest | str | os.PathLike, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Assign each case to a fold.

    Args:
        manifest: A :class:`Manifest` or a CSV path.
        n_folds: Number of folds (>= 2).
        seed: Shuffle seed.

    Returns:
        DataFrame with columns ``case``, ``subject``, ``fold`` (int; -1 for unlabelled rows), in manifest
        order.

    Raises:
        ConfigError: fewer labelled subjects than folds, or ``n_folds < 2``.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    m = as_manifest(manifest)
    if n_folds < 2:
        raise ConfigError(f"n_folds must be >= 2, got {n_folds}")
    cases = [c.case for c in m]
    subjects = [c.subject for c in m]
    labels = [c.label for c in m]
    folds = np.full(len(cases), -1, dtype=int)
    idx = np.array([i for i, lab in enumerate(labels) if lab is not None], dtype=int)
    n_subjects = len({subjects[i] for i in idx})
    if n_subjects < n_folds:
        raise ConfigError(f"{n_subjects} labelled subjects cannot fill {n_folds} folds; use fewer folds")
    y = np.array([labels[i] for i in idx])
    groups = np.array([subjects[i] for i in idx])
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only k members"
        for fold, (_, test) in enumerate(splitter.split(np.zeros(len(idx)), y, groups)):
            folds[idx[test]] = fold
    return pd.DataFrame({"case": cases, "subject": subjects, "fold": folds})


def save_splits(splits: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a splits table as CSV atomically."""
    from mrfound.utils.io import atomic_write_text

    missing = [c for c in SPLIT_COLUMNS if c not in splits.columns]
    if missing:
        raise ConfigError(f"splits table lacks columns {missing}")
    return atomic_write_text(path, splits[list(SPLIT_COLUMNS)].to_csv(index=False))


def load_splits(path: str | os.PathLike) -> pd.DataFrame:
    """Read a splits CSV written by :func:`save_splits` (``fold`` as int, ids as str)."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError("splits file not found", path=str(p))
    df = pd.read_csv(p, dtype={"case": str, "subject": str}, keep_default_na=False)
    missing = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"splits file lacks columns {missing}", path=str(p))
    df["fold"] = df["fold"].astype(int)
    return df[list(SPLIT_COLUMNS)]
