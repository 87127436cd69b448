"""How well can *any* method impute t1_art on the phantom? A simulation oracle for the held-out cases.

The phantom draws part of each case's arterial phase from randomness that no other sequence sees: the
bolus timing (``arterial_timing``, drawn per case), the subject's arterial lesion gain, the arterial
breath-hold's shift and the arterial acquisition's noise. Everything else (anatomy, liver texture,
lesions, bias field of the dynamic coil, the other sequences) is shared. This script re-simulates each
held-out case K times with only those t1_art draws replaced (the simulator's own code, with its random
draws for t1_art redirected to another generator; every other draw is consumed as before, so the other
sequences come out bit-identical), preprocesses every realisation as the benchmark does, and averages
their t1_art. That average approximates E[t1_art | everything but the arterial draws]: the best
prediction, in mean squared error, that any imputation could make, even one that knew the anatomy,
lesions and texture exactly. Its liver PSNR against the real held-out t1_art is the ceiling.

Three modes pick which draws are replaced: ``noise`` (the arterial noise only), ``noise_shift`` (plus the
breath-hold shift) and ``all`` (plus the bolus timing and the arterial lesion gain). With K realisations
the average keeps 1/K of the replaced variance, so the MSE is ``(1 + 1/K)`` times the ceiling's in
expectation; ``psnr_oracle_corrected`` removes that factor.

Per case it records the oracle's PSNR and liver mean next to the truth's; with ``--diag`` (an
``art_diag.py`` ``cases_test.json``) it joins mrfound's and the mean image's PSNR on the same cases.

Usage::

    python results/imputation_t1_art_ceiling/ceiling.py WORK/full --run RUN [--mode all] [--k 6]
        [--cases 240] [--diag results/imputation_source_count/art_diag_features16_240cases/cases_test.json]
        [--limit N] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import imputation as im  # noqa: E402

from mrfound import load_pretrained  # noqa: E402
from mrfound.data.manifest import read_manifest  # noqa: E402
from mrfound.data.phantom import PhantomConfig  # noqa: E402
from mrfound.data.phantom import acquisition as acq  # noqa: E402
from mrfound.data.phantom import cohort as co  # noqa: E402
from mrfound.data.preprocess import preprocess_case  # noqa: E402
from mrfound.data.sequences import SEQUENCES  # noqa: E402

MODES = ("noise", "noise_shift", "all")
TARGET = "t1_art"


@contextlib.contextmanager
def redirected_draws(mode: str, alt: np.random.Generator, center: acq.CenterProfile, present: set[str]):
    """Patch the simulator so that ``mode``'s t1_art draws come from ``alt`` (others unchanged).

    ``present`` names the case's acquired sequences: the simulator maps each of them but t1_opp (which
    shares t1_in's grid) to its scanner grid in the order of ``center.sequences``, the mask last; the
    dynamic phases share one protocol object, so the call's position, not its protocol, says which is
    the arterial one.
    """
    state = {"seq": None, "n_mats": 0}
    order = [s for s in center.sequences if s in present and s != "t1_opp"]
    real = (co._Physiology, co._world_signal, acq.rician, acq.grid_matrices)
    real_phys, real_world, real_rician, real_mats = real

    def phys(**kw: Any) -> Any:
        if mode == "all":
            kw["timing"] = float(np.clip(alt.normal(*center.arterial_timing), 0.0, 1.4))
            kw["gain"] = dict(kw["gain"]) | {TARGET: float(math.exp(alt.normal(0, 0.12)))}
        return real_phys(**kw)

    def world(seq: str, *a: Any, **kw: Any) -> Any:
        state["seq"] = seq  # the rician calls that follow belong to this sequence
        return real_world(seq, *a, **kw)

    def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
        if state["seq"] != TARGET:
            return real_rician(signal, sigma, rng)
        real_rician(signal.copy(), sigma, rng)  # consume the case generator's draws as before
        return real_rician(signal, sigma, alt)

    def mats(sgrid: Any, grid: Any, shift: np.ndarray, proto: Any) -> Any:
        seq = order[state["n_mats"]] if state["n_mats"] < len(order) else None
        state["n_mats"] += 1
        if mode != "noise" and seq == TARGET:
            shift = np.clip(alt.normal(0, 1, 3), -2, 2) * np.array(proto.shift_mm)
        return real_mats(sgrid, grid, shift, proto)

    co._Physiology, co._world_signal, acq.rician, acq.grid_matrices = phys, world, rician, mats
    try:
        yield
    finally:
        co._Physiology, co._world_signal, acq.rician, acq.grid_matrices = real


def realisations(
    index: int, seed: int, config: PhantomConfig, mode: str, k: int, root: Path, present: set[str]
) -> list[Any]:
    """K re-simulations of case ``index`` with ``mode``'s t1_art draws replaced, as manifest cases."""
    spec = co.plan_case(index, seed, config)
    center = co._center(config, spec.center)
    rows = []
    for r in range(k):
        alt = np.random.default_rng([seed, index, r, MODES.index(mode), 7919])
        with redirected_draws(mode, alt, center, present):
            case = co._simulate(spec, seed, config)
        case = dataclasses.replace(case, case=f"{case.case}_r{r}")
        rows.append(co.write_case(case, root))
    (root / "manifest.csv").write_text(co.manifest_text(rows))
    return read_manifest(root / "manifest.csv").cases


def on_grid(
    img: np.ndarray, affine: np.ndarray, ref_affine: np.ndarray, ref_shape: tuple[int, ...]
) -> np.ndarray:
    """``img`` placed on the reference grid (same spacing and axes; crops differ by whole voxels)."""
    off = np.rint(np.linalg.solve(ref_affine, affine[:, 3])[:3]).astype(int)
    out = np.full(ref_shape, np.nan, np.float32)
    src = [slice(max(0, -o), min(n, r - o)) for o, n, r in zip(off, img.shape, ref_shape)]
    dst = [slice(s.start + o, s.stop + o) for s, o in zip(src, off)]
    out[tuple(dst)] = img[tuple(src)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path, help="the imputation benchmark's work folder (WORK/full)")
    ap.add_argument("--run", required=True, help="a pretraining run folder there (for its preprocessing)")
    ap.add_argument("--mode", choices=MODES, default="all")
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--cases", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="only the first N held-out cases (checks)")
    ap.add_argument("--diag", type=Path, default=None, help="art_diag.py cases_test.json to join")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    t0 = time.time()
    b = im.BUDGETS["full"] | {"cases": args.cases}
    split = im.phantom_split(b, args.work, seed=args.seed)
    pp = load_pretrained(args.work / args.run / "final").preprocessing
    config = PhantomConfig(spacing_scale=b["spacing_scale"])
    t = SEQUENCES.index(TARGET)
    diag = {r["case"]: r for r in json.loads(args.diag.read_text())} if args.diag else {}
    rows = []
    for c in split.test_cases[: args.limit]:
        s = preprocess_case(c, pp)
        if not s["available"][t]:
            continue
        liver = s["mask"][0] > 0
        region = liver & im.fov_mask(c.sequences[TARGET], s["affine"], liver.shape)
        if region.sum() < 10:
            continue
        truth = s["image"][t]
        with tempfile.TemporaryDirectory() as tmp:
            reals = realisations(
                int(c.case[2:]), args.seed, config, args.mode, args.k, Path(tmp), set(c.sequences)
            )
            stack = []
            for rc in reals:
                sr = preprocess_case(rc, pp)
                stack.append(on_grid(sr["image"][t], sr["affine"], s["affine"], truth.shape))
        stack = np.stack(stack)
        oracle = np.where(np.isnan(stack), np.nan, stack).mean(0)
        ok = region & np.isfinite(oracle)
        mse = float(((oracle - truth)[ok] ** 2).mean())
        corrected = mse * args.k / (args.k + 1)
        row = {
            "case": c.case,
            "n_voxels": int(ok.sum()),
            "truth_liver_mean": float(truth[ok].mean()),
            "oracle_liver_mean": float(oracle[ok].mean()),
            "realisation_liver_sd": float(np.nanmean(stack[:, ok], axis=1).std()),
            "psnr_oracle": im.psnr(oracle, truth, ok),
            "psnr_oracle_corrected": float(10 * np.log10(1.0 / corrected)),
            "mse_oracle": mse,
        }
        if c.case in diag:
            row |= {k: diag[c.case][k] for k in ("mrfound_psnr", "mean_image_psnr") if k in diag[c.case]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def mean(key: str) -> float | None:
        v = [r[key] for r in rows if key in r]
        return float(np.mean(v)) if v else None

    summary = {
        "command": "python " + " ".join(sys.argv),
        "mode": args.mode,
        "k": args.k,
        "n_cases": len(rows),
        "seconds": round(time.time() - t0, 1),
        **{f"mean_{k}": mean(k) for k in ("psnr_oracle", "psnr_oracle_corrected", "mrfound_psnr",
                                           "mean_image_psnr", "truth_liver_mean", "oracle_liver_mean",
                                           "realisation_liver_sd")},
        "cases": rows,
    }
    text = json.dumps(summary, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(json.dumps({k: v for k, v in summary.items() if k != "cases"}, indent=1))


if __name__ == "__main__":
    main()
