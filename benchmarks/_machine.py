"""Machine facts and timing helpers shared by the benchmarks.

Everything here is measured in the calling process, so a figure and the machine state it was taken in
(threads, load average, matmul peak) travel together in one JSON object.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty on systems without ``/proc/loadavg``)."""
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return list(os.getloadavg()) if hasattr(os, "getloadavg") else []


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """CPU feature flags (``/proc/cpuinfo``; empty where unavailable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info(device: torch.device) -> dict[str, Any]:
    """Hardware and software the figures were measured on."""
    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gb": _memory_gb(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(device),
        "env": {
            k: os.environ.get(k)
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MRFOUND_CACHE_MEMORY_MB")
            if os.environ.get(k) is not None
        },
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:  # pragma: no cover - monai is a dependency
        info["monai"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None


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
