"""Tests for mrfound/utils/machine.py."""

from __future__ import annotations

import json

import torch

from mrfound.utils import machine


def test_machine_info_holds_the_facts_a_wall_clock_figure_needs(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    info = machine.machine_info()
    json.dumps(info)  # goes into a result's JSON as it is
    assert info["cpu_model"] and info["cpu_count"] >= info["cpus_usable"] >= 1
    assert info["torch_threads"] == torch.get_num_threads()
    assert isinstance(info["native_bf16"], bool) and isinstance(info["avx512_bf16"], bool)
    assert len(info["load_average_1_5_15min"]) == 3
    assert info["env"]["OMP_NUM_THREADS"] == "1"
    assert info["torch"] == torch.__version__ and info["numpy"] and info["monai"]
    assert "device" not in info
    assert machine.machine_info("cpu")["device"] == "cpu"


def test_cpu_facts_come_from_proc_cpuinfo(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512_bf16 avx2\n")
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(fake if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert machine.cpu_model() == "AMD EPYC"
    assert machine.cpu_flags() == {"fpu", "avx512_bf16", "avx2"}
    info = machine.machine_info()
    assert info["avx512_bf16"] is True and info["amx_bf16"] is False
