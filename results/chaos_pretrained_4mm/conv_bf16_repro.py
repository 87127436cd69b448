"""Minimal reproduction: a bf16 Conv3d backward on a 2x2x2 input sometimes returns a non-finite gradient.

Usage: ``python results/chaos_pretrained_4mm/conv_bf16_repro.py [TRIALS]`` (one thread). Draws finite random
inputs and output gradients for ``Conv3d(128, 256, 3, padding=1)`` (the MONAI UNet's bottleneck on 32^3
crops) until the bf16-autocast backward gives a non-finite gradient, then replays that same input five
times in bf16, once with oneDNN off and once in fp32. Prints one JSON line. On the 2-core AMD EPYC VM
(AVX512-BF16, no AMX, torch 2.14.1) the first failure came at trial 727 in one run, 198 in the next
(conv_bf16_repro.json), and every replay was finite: the fault does not follow from the numbers, so no
scaling or fp32 norm can prevent it; running those convolutions in fp32
(:func:`mrfound.utils.precision.small_convs_in_fp32`) does.
"""

from __future__ import annotations

import json
import sys

import torch


def run(
    conv: torch.nn.Conv3d, x: torch.Tensor, g: torch.Tensor, mkldnn: bool = True, bf16: bool = True
) -> dict:
    """Backward of ``conv`` at ``x`` with output gradient ``g``: which gradients are finite."""
    conv.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(x)
        y.float().backward(g)
    return {
        "weight": bool(torch.isfinite(conv.weight.grad).all()),
        "input": bool(torch.isfinite(x.grad).all()),
        "bias": bool(torch.isfinite(conv.bias.grad).all()),
    }


def main(trials: int) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    conv = torch.nn.Conv3d(128, 256, 3, padding=1)
    out: dict = {"torch": torch.__version__, "trials": trials, "first_failure": None}
    for t in range(trials):
        x = torch.randn(4, 128, 2, 2, 2) * (1 + 10 * torch.rand(1))
        g = torch.randn(4, 256, 2, 2, 2) * 1e-3
        first = run(conv, x, g)
        if not all(first.values()):
            out["first_failure"] = {
                "trial": t,
                "finite": first,
                "replay_bf16": [run(conv, x, g) for _ in range(5)],
                "replay_bf16_onednn_off": run(conv, x, g, mkldnn=False),
                "replay_fp32": run(conv, x, g, bf16=False),
            }
            break
    print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
