"""Subject-grouped, class-stratified folds."""

from __future__ import annotations

import pytest

from mrfound.data.manifest import Case, Manifest
from mrfound.data.splits import load_splits, make_splits, save_splits
from mrfound.errors import ConfigError


def _manifest(n_subjects=20, unlabeled=3):
    classes = ["hcc", "cyst", "fnh", "metastasis"]
    cases = []
    for s in range(n_subjects):
        for lesion in range(1 + s % 2):  # some subjects have two lesions
            cases.append(
                Case(f"s{s}_l{lesion}", subject=f"s{s}", label=classes[s % 4], sequences={"t2": "/x.nii.gz"})
            )
    cases += [Case(f"u{i}", sequences={"t2": "/x.nii.gz"}) for i in range(unlabeled)]
    return Manifest.from_cases(cases, "/")


def test_folds_group_subjects_and_skip_unlabeled(tmp_path):
    m = _manifest()
    df = make_splits(m, n_folds=5, seed=0)
    assert list(df.columns) == ["case", "subject", "fold"] and len(df) == len(m)
    assert (df.loc[df["case"].str.startswith("u"), "fold"] == -1).all()
    lab = df[df["fold"] >= 0]
    assert set(lab["fold"]) == set(range(5))
    assert lab.groupby("subject")["fold"].nunique().max() == 1  # no subject on two sides
    assert make_splits(m, 5, seed=0).equals(df) and not make_splits(m, 5, seed=1)["fold"].equals(df["fold"])
    path = save_splits(df, tmp_path / "splits.csv")
    back = load_splits(path)
    assert back.equals(df)


def test_too_few_subjects():
    with pytest.raises(ConfigError, match="labelled subjects"):
        make_splits(_manifest(n_subjects=3), n_folds=5)
