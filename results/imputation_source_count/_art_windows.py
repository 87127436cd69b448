"""What ``source_count_diag.py`` and ``window_diag.py`` share: the run, its cases, random windows on the
liver and a one-pass t1_art synthesis of a window."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import imputation as im  # noqa: E402

from mrfound import load_pretrained  # noqa: E402
from mrfound.data.preprocess import preprocess_case  # noqa: E402
from mrfound.data.sequences import SEQUENCES  # noqa: E402

ROI = 32
ART = SEQUENCES.index("t1_art")


def load_run(work: Path, run: str, cases: int) -> tuple[Any, Any, Any]:
    """The benchmark's split of a ``cases``-case cohort, and the run's model (eval) and preprocessing."""
    torch.set_num_threads(1)
    split = im.phantom_split(im.BUDGETS["full"] | {"cases": cases}, work, seed=0)
    wrapped = load_pretrained(work / run / "final")
    return split, wrapped.model.eval(), wrapped.preprocessing


def art_cases(cases: list[Any], pp: Any) -> Iterator[tuple[Any, dict[str, Any], np.ndarray]]:
    """``(case, preprocessed, liver)`` for the cases with t1_art and >= 1000 liver voxels in its view."""
    for c in cases:
        s = preprocess_case(c, pp)
        if not s["available"][ART]:
            continue
        liver = (s["mask"][0] > 0) & im.fov_mask(c.sequences["t1_art"], s["affine"], s["mask"][0].shape)
        if liver.sum() >= 1000:
            yield c, s, liver


def random_window(rng: np.random.Generator, liver: np.ndarray) -> tuple[slice, ...]:
    """A ROI^3 window around a random liver voxel, shifted inside the volume."""
    idx = np.argwhere(liver)
    lo = np.clip(idx[rng.integers(len(idx))] - ROI // 2, 0, np.array(liver.shape) - ROI)
    return tuple(slice(int(v), int(v) + ROI) for v in lo)


def synthesise_window(
    mae: Any, image: np.ndarray, sources: torch.Tensor, win: tuple[slice, ...], clip: tuple[float, float]
) -> np.ndarray:
    """t1_art over ``win`` from the (S,) bool ``sources`` in one forward pass, clipped."""
    img = torch.as_tensor(image)[(slice(None), *win)].clone()
    img[~sources] = 0
    target = torch.zeros(len(SEQUENCES), dtype=torch.bool)
    target[ART] = True
    with torch.no_grad():
        pred = mae.reconstruct(img[None], sources[None], target)[0, ART].numpy()
    return np.clip(pred, *clip)
