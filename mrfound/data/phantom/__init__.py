"""Multi-centre, multi-sequence liver MRI simulator (the embedded default cohort).

Quick use::

    from mrfound.data.phantom import PhantomConfig, generate_cohort, simulate_case
    case = simulate_case(0, seed=1)                      # in memory: case.images["t2"] = (array, affine)
    manifest = generate_cohort("cohort", n_cases=80, seed=1)   # NIfTI files + manifest.csv

Modules: :mod:`.anatomy` (tissues, synthetic or real anatomy), :mod:`.lesions` (the signature table),
:mod:`.acquisition` (centres, grids, noise), :mod:`.cohort` (seeding, cases, writing),
:mod:`.measure` (lesion statistics from files), :mod:`.preview` (montage).
"""

from mrfound.data.phantom.acquisition import CENTERS, CenterProfile, SequenceProtocol, get_centers
from mrfound.data.phantom.cohort import (
    MANIFEST_COLUMNS,
    CaseSpec,
    PhantomCase,
    PhantomConfig,
    generate_cohort,
    plan_case,
    plan_cohort,
    simulate_case,
    simulate_cohort,
)
from mrfound.data.phantom.lesions import SIGNATURES
from mrfound.data.phantom.measure import lesion_statistics

__all__ = [
    "CENTERS",
    "MANIFEST_COLUMNS",
    "SIGNATURES",
    "CaseSpec",
    "CenterProfile",
    "PhantomCase",
    "PhantomConfig",
    "SequenceProtocol",
    "generate_cohort",
    "get_centers",
    "lesion_statistics",
    "plan_case",
    "plan_cohort",
    "simulate_case",
    "simulate_cohort",
]
