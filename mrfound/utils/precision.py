"""Mixed-precision helpers."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _fp32_when_small(forward: Callable, max_voxels: int) -> Callable:
    @functools.wraps(forward)
    def run(x: torch.Tensor, *args, **kwargs):
        if torch.is_autocast_enabled(x.device.type) and math.prod(x.shape[2:]) <= max_voxels:
            with torch.autocast(x.device.type, enabled=False):
                return forward(x.float(), *args, **kwargs)
        return forward(x, *args, **kwargs)

    return run


def small_convs_in_fp32(module: nn.Module, max_voxels: int = 8) -> int:
    """Run every convolution of ``module`` whose input has at most ``max_voxels`` voxels in float32.

    Why: on a CPU with AVX512-BF16 but no AMX (an AMD EPYC VM, torch 2.14.1), the bf16 backward of a
    ``Conv3d(128, 256, 3)`` on a 2x2x2 input returned a non-finite weight gradient about once in 200 calls
    from finite inputs, and replaying the same inputs gave finite values: a nondeterministic kernel fault,
    not overflow (the norms in float32 did not help; fp32 never failed). The MONAI UNet's bottleneck is
    such a layer on 32^3 crops, and a bf16 run skipped 18 % of its steps. Those layers cost almost nothing,
    so running them in float32 removes the fault at no speed cost. Outside autocast nothing changes.

    The layer's ``forward`` is wrapped on the instance: parameters and the state dict are unchanged.

    Args:
        module: Model to change in place.
        max_voxels: Largest spatial size (product of the dimensions after batch and channel) run in fp32.

    Returns:
        The number of convolutions wrapped.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, _CONVS):
            m.forward = _fp32_when_small(m.forward, max_voxels)
            n += 1
    return n
