"""Timing helpers shared by the benchmarks (machine facts: :mod:`mrfound.utils.machine`).

Everything here is measured in the calling process, so a figure and the machine state it was taken in
(threads, load average, matmul peak) travel together in one JSON object.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mrfound.utils.machine import load_average  # noqa: E402


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU) so wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    dtype: torch.dtype,
    device: torch.device,
    sizes: tuple[int, ...] = (2048, 4096),
    repeats: int = 5,
) -> dict[str, Any]:
    """Best achieved GFLOP/s of large square ``torch.mm`` (2 n^3 FLOPs each), best over sizes and repeats.

    Args:
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        device: Where to multiply.
        sizes: Square sizes tried.
        repeats: Timed calls per size (after one warm-up call); the best counts.

    Returns:
        ``gflops`` (best), ``per_size`` (best per size) and ``load_avg`` at the end.
    """
    per_size: dict[str, float] = {}
    if device.type == "cuda":
        # fp32 means IEEE fp32 here, not TF32
        torch.backends.cuda.matmul.allow_tf32 = False
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        torch.mm(a, b, out=c)
        synchronize(device)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            synchronize(device)
            best = min(best, time.perf_counter() - t)
        per_size[str(n)] = round(2 * n**3 / best / 1e9, 1)
        del a, b, c
    return {"gflops": max(per_size.values()), "per_size": per_size, "load_avg": load_average()}


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    rounds: int,
    warmup: int = 1,
    device: torch.device | None = None,
    between: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time several callables alternately (A B C A B C ...) so that load drifts hit all of them alike.

    Args:
        fns: Name -> callable (one unit of work, e.g. one training step).
        rounds: Timed calls of each callable.
        warmup: Untimed calls of each callable first (in the same alternating order).
        device: Synchronised around every call when it is a GPU.
        between: Optional hook called with the round index before each round (e.g. a peak probe).

    Returns:
        Name -> ``{"times_s": [...], "min_s", "median_s", "load_avg": [1-min load at each call]}``.
    """
    dev = device or torch.device("cpu")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            synchronize(dev)
    out: dict[str, dict[str, Any]] = {k: {"times_s": [], "load_avg": []} for k in fns}
    for r in range(rounds):
        if between is not None:
            between(r)
        for name, fn in fns.items():
            synchronize(dev)
            t = time.perf_counter()
            fn()
            synchronize(dev)
            out[name]["times_s"].append(time.perf_counter() - t)
            la = load_average()
            out[name]["load_avg"].append(la[0] if la else None)
    for rec in out.values():
        ts = sorted(rec["times_s"])
        rec["min_s"] = ts[0]
        rec["median_s"] = ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2])
        rec["times_s"] = [round(t, 4) for t in rec["times_s"]]
    return out
