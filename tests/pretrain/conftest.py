"""Fixtures of the pretraining tests: the toy model/data (``_pretrain_toy``) and a tiny NIfTI cohort."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test starts without a leftover Accelerate singleton (mixed precision, grad accumulation)."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def write_tiny_cohort(folder: Path, n_cases: int = 6, size: int = 24, seed: int = 0) -> Path:
    """A small multi-sequence NIfTI cohort: a textured ellipsoid 'body' seen by 3 sequences.

    Sequences share the anatomy (so one predicts another) with different contrasts; case 0 lacks t1_pv
    and odd cases have two cases per subject. Returns the manifest path.
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["case,subject,t2,t1_pre,t1_pv"]
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    for i in range(n_cases):
        body = ((g / np.array([0.85, 0.7, 0.8])[:, None, None, None]) ** 2).sum(0) < 1
        blob_c = rng.uniform(-0.4, 0.4, 3)
        blob = ((g - blob_c[:, None, None, None]) ** 2).sum(0) < 0.08
        tissue = rng.normal(0, 0.05, (size,) * 3)
        contrasts = {"t2": (1.0, 2.5), "t1_pre": (1.5, 0.6), "t1_pv": (1.2, 1.8)}
        paths = {}
        for name, (base, lesion) in contrasts.items():
            if name == "t1_pv" and i == 0:
                paths[name] = ""
                continue
            vol = (body * (base + tissue) + blob * body * (lesion - base)) * 100 + rng.normal(
                0, 2, body.shape
            )
            p = folder / f"c{i:02d}_{name}.nii.gz"
            nib.save(nib.Nifti1Image(vol.astype(np.float32), affine), str(p))
            paths[name] = p.name
        rows.append(f"case_{i:02d},subj_{i // 2:02d},{paths['t2']},{paths['t1_pre']},{paths['t1_pv']}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """Manifest of a 6-case, 3-sequence NIfTI cohort (24^3 voxels at 1.5 mm)."""
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"))


TINY_MODEL_SETS = [
    "model_overrides.patch_size=8",
    "model_overrides.embed_dim=32",
    "model_overrides.depth=1",
    "model_overrides.num_heads=2",
    "mae.decoder_dim=32",
    "mae.decoder_depth=1",
    "mae.decoder_heads=2",
]
"""``--set`` options shrinking the ``tiny`` model for tests (with ``--roi-size 16``)."""
