"""Tests of benchmarks/_common.py: the autocast choice of the CPU benchmarks."""

from __future__ import annotations

import pytest
import torch
from testutils import load_module


@pytest.mark.parametrize(
    ("requested", "native", "cuda", "expected"),
    [
        ("bf16", False, False, "no"),  # emulated bf16: fp32 is the faster choice
        ("bf16", True, False, "bf16"),
        ("bf16", False, True, "bf16"),  # a GPU computes bf16 whatever the CPU
        ("no", True, False, "no"),
    ],
)
def test_resolve_autocast_keeps_bf16_only_where_it_is_native(monkeypatch, requested, native, cuda, expected):
    import mrfound.pretrain.trainer as T

    common = load_module("benchmarks/_common.py")
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert common.resolve_autocast(requested) == expected
