"""Issue 7.5, load: ``mrfound predict`` over 500 phantom-like cases in one process keeps its memory flat,
and two ``predict`` processes sharing one ``--out`` never corrupt each other's files.

Memory: the resident set size (psutil) is sampled when the 50th case starts (after warm-up: imports,
first batches, allocator pools) and when the 500th starts; the growth over those 450 cases must stay under
5 % of the warm RSS. Concurrency: two real processes predict disjoint halves of a manifest into the same
folder at the same time; with ``--merge`` the result holds both halves exactly once with the values of a
single run, without it the result is exactly one of the two runs (never a mix), and no temporary is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest

import mrfound.inference as inference
from mrfound.cli import main

WARM, LAST = 50, 500


@pytest.fixture(scope="module")
def run500(load_cohort, tiny_checkpoints, tmp_path_factory):
    """``mrfound predict`` in this process over the 500 cases; RSS sampled at case 50 and 500."""
    out = tmp_path_factory.mktemp("predict500") / "out"
    proc = psutil.Process()
    rss: dict[int, int] = {}
    real = inference.prepare_case
    count = 0

    def sampling(*args, **kwargs):
        nonlocal count
        count += 1
        if count in (WARM, LAST):
            rss[count] = proc.memory_info().rss
        return real(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(inference, "prepare_case", sampling)
    t0 = time.perf_counter()
    try:
        argv = [
            "predict",
            "--checkpoint",
            str(tiny_checkpoints["classifier"]),
            "--manifest",
            str(load_cohort),
        ]
        rc = main([*argv, "--out", str(out)])
    finally:
        mp.undo()
    wall = time.perf_counter() - t0
    assert rc == 0
    print(f"\npredict 500 cases: {wall:.1f} s; RSS case {WARM} {rss[WARM] / 2**20:.1f} MiB, case {LAST} "
          f"{rss[LAST] / 2**20:.1f} MiB ({(rss[LAST] - rss[WARM]) / rss[WARM] * 100:+.2f} %)")  # fmt: skip
    return out, rss, count


@pytest.mark.slow
def test_predict_500_cases_in_constant_memory(run500, load_cohort):
    out, rss, count = run500
    assert count == LAST
    table = pd.read_csv(out / "predictions.csv", dtype=str)
    assert len(table) == LAST and table["case"].is_unique
    growth = (rss[LAST] - rss[WARM]) / rss[WARM]
    assert growth < 0.05, f"RSS grew {growth:.1%} from case {WARM} to case {LAST}"


def _half(load_cohort, rows: slice, path):
    frame = pd.read_csv(load_cohort, dtype=str, keep_default_na=False)
    frame = frame.iloc[rows].copy()
    for col in ("t2", "t1_pre"):  # absolute paths: the half manifests live elsewhere
        frame[col] = [str(load_cohort.parent / v) for v in frame[col]]
    frame.to_csv(path, index=False)
    return path, set(frame["case"])


def _start(tiny_checkpoints, manifests, out, *extra) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mrfound",
                "predict",
                "--checkpoint",
                str(tiny_checkpoints["classifier"]),
                "--manifest",
                str(m),
                "--out",
                str(out),
                *extra,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for m in manifests
    ]


@pytest.mark.slow
def test_two_concurrent_predicts_on_one_folder(run500, load_cohort, tiny_checkpoints, tmp_path):
    reference = pd.read_csv(run500[0] / "predictions.csv", dtype=str).set_index("case")
    (a, cases_a), (b, cases_b) = (
        _half(load_cohort, slice(0, 40), tmp_path / "a.csv"),
        _half(load_cohort, slice(40, 80), tmp_path / "b.csv"),
    )
    merged_out, replaced_out = tmp_path / "merged", tmp_path / "replaced"
    # two pairs of processes, all four at once: each pair shares one --out
    procs = _start(tiny_checkpoints, [a, b], merged_out, "--merge") + _start(
        tiny_checkpoints, [a, b], replaced_out
    )
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]

    merged = pd.read_csv(merged_out / "predictions.csv", dtype=str)
    assert merged["case"].is_unique and set(merged["case"]) == cases_a | cases_b
    probs = [c for c in merged.columns if c.startswith("p_")]
    got = merged.set_index("case").loc[sorted(cases_a | cases_b), probs].astype(float)
    want = reference.loc[sorted(cases_a | cases_b), probs].astype(float)
    assert (got - want).abs().to_numpy().max() < 1e-5  # every row is a whole, correct row

    last = pd.read_csv(replaced_out / "predictions.csv", dtype=str)
    assert set(last["case"]) in (cases_a, cases_b), "predictions.csv mixes the two runs"
    for out in (merged_out, replaced_out):
        assert not [p.name for p in out.iterdir() if p.name.startswith(".predict-")]  # no temporary left
