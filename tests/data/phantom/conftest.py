"""Shared phantom cohorts for the phantom tests (small, coarse, written once per session)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mrfound.data.phantom import CENTERS, PhantomConfig, generate_cohort

# A complete axial protocol at moderate resolution (1.3-2.2 mm in-plane, 3.5-6 mm slices): fast, yet fine
# enough for the 3-6 cm lesions of the signature test to show rims, centres and scars.
_U = CENTERS["uni_3t"].protocols
SIGNATURE_CENTER = dataclasses.replace(
    CENTERS["uni_3t"], name="test_complete", p_missing=0.0,
    protocols={
        "t2": dataclasses.replace(_U["t2"], inplane_mm=1.4, slice_mm=5.0),
        "dwi": _U["dwi"],
        "t1_in": dataclasses.replace(_U["t1_in"], inplane_mm=1.7),
        "t1_opp": dataclasses.replace(_U["t1_opp"], inplane_mm=1.7),
        **{s: dataclasses.replace(_U[s], inplane_mm=1.8, slice_mm=3.5)
           for s in ("t1_pre", "t1_art", "t1_pv", "t1_del")},
    },
)
SIGNATURE_CONFIG = PhantomConfig(centers=(SIGNATURE_CENTER,), balanced=True, textbook=True, p_missing=0.0,
                                 diameter_range=(30.0, 60.0), world_spacing=2.0, p_second_exam=0.0,
                                 variation=0.35)
SIGNATURE_CASES_PER_CLASS = 5

TINY_CONFIG = PhantomConfig(spacing_scale=3.0, world_spacing=4.0, diameter_range=(25.0, 40.0))


@pytest.fixture(scope="session")
def signature_cohort(tmp_path_factory) -> Path:
    """Manifest of 5 cases per class, complete protocols, typical presentations (no variants)."""
    out = tmp_path_factory.mktemp("phantom_sig") / "cohort"
    return generate_cohort(out, 8 * SIGNATURE_CASES_PER_CLASS, 11, SIGNATURE_CONFIG, workers=2,
                           progress=False)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """Manifest of 6 tiny cases from all centres (1 worker), half of them unlabeled."""
    out = tmp_path_factory.mktemp("phantom_tiny") / "cohort"
    cfg = dataclasses.replace(TINY_CONFIG, unlabeled_fraction=0.5)
    return generate_cohort(out, 6, 9, cfg, workers=1, progress=False)
