"""Fixtures of the fine-tuning tests (data from ``cohort_data.py``, loaded by path: importlib mode)."""

from __future__ import annotations

from pathlib import Path

import pytest
from testutils import load_module


def load_cohort_module():
    """``tests/finetune/cohort_data.py`` as a module."""
    return load_module("tests/finetune/cohort_data.py")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """Manifest of the 24-case synthetic cohort."""
    return load_cohort_module().write_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight encoder checkpoint (ROI 16 at 2 mm, patch 8, width 32, depth 2)."""
    return load_cohort_module().write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def preprocess_cache(tmp_path_factory) -> Path:
    """A preprocessing cache shared by the tests of a session."""
    return tmp_path_factory.mktemp("ppcache")
