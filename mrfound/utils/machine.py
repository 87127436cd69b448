"""Facts about the machine a figure was measured on, in one place for the demo and every benchmark.

Wall-clock budgets and step rates are only comparable on the same CPU, with the same native bf16 support,
threads and load, so each JSON result carries :func:`machine_info` from the process that measured it.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere).

    A VM may show only the vendor's family name (``AMD EPYC``), which is why :func:`machine_info` also
    records the bf16 flags.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """CPU feature flags (``/proc/cpuinfo``; empty where unavailable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:  # pragma: no cover - not Linux
        pass
    return set()


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01 (empty where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - not Unix
        return []


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # pragma: no cover - all are dependencies
        return None


def _memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Hardware, software and load of this process's machine, for a result's JSON.

    Args:
        device: The device the figures were measured on; for a CUDA device its name and memory are added.

    Returns:
        ``cpu_model``, ``cpu_count``, ``cpus_usable`` (this process's affinity), ``avx512_bf16``,
        ``amx_bf16``, ``native_bf16`` (what oneDNN reports; without it bf16 autocast is emulated),
        ``torch_threads``, ``load_average_1_5_15min``, memory, library versions, the threading environment
        variables that are set, and the device.
    """
    from mrfound.pretrain.trainer import cpu_has_native_bf16

    flags = cpu_flags()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "native_bf16": cpu_has_native_bf16(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "memory_gb": _memory_gb(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": load_average(),
        "env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MRFOUND_CACHE_MEMORY_MB")
            if k in os.environ
        },
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "monai": _version("monai"),
        "cuda": torch.cuda.is_available(),
    }
    if device is not None:
        device = torch.device(device)
        info["device"] = str(device)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            info["gpu"] = props.name
            info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
            info["cuda_version"] = torch.version.cuda
    return info
