"""Tests for mrfound/utils/precision.py."""

from __future__ import annotations

import torch
from torch import nn

from mrfound.utils.precision import small_convs_in_fp32


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.InstanceNorm3d(4), nn.ConvTranspose3d(4, 2, 2, 2))


def test_small_inputs_run_in_fp32_under_autocast_and_large_ones_in_bf16() -> None:
    net = _net()
    keys = list(net.state_dict())
    assert small_convs_in_fp32(net, max_voxels=8) == 2  # the conv and the transposed conv
    assert list(net.state_dict()) == keys
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net[0](torch.randn(1, 2, 2, 2, 2)).dtype == torch.float32  # 8 voxels: fp32
        assert net[0](torch.randn(1, 2, 4, 2, 2)).dtype == torch.bfloat16  # 16 voxels: autocast as before
        assert net[2](torch.randn(1, 4, 2, 2, 2)).dtype == torch.float32


def test_small_convs_give_fp32_results_and_gradients() -> None:
    ref, net = _net(), _net()
    small_convs_in_fp32(net, max_voxels=8)
    x = torch.randn(3, 2, 2, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net[0](x)
    torch.testing.assert_close(y, ref[0](x))  # same as without autocast, to fp32 precision
    y.sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.dtype == torch.float32


def test_nothing_changes_outside_autocast() -> None:
    ref, net = _net(), _net()
    small_convs_in_fp32(net, max_voxels=10**9)
    x = torch.randn(1, 2, 4, 4, 4)
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)
