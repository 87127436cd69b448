"""Where do the MONAI UNet's non-finite bf16 steps come from? (CHAOS 4 mm crops, as the benchmark's.)

Usage: ``python results/chaos_pretrained_4mm/nan_diag.py WORK STEPS MODE``, WORK being a
``chaos_segmentation.py --work`` folder whose 4 mm cache exists. Trains the benchmark's UNet on the first 12
subjects for STEPS steps of batch 4 (AdamW 1e-3, no schedule) with the benchmark's augmentation, skipping a
step as ``train_timed`` does, and counts where the first non-finite value shows: the loss (with the first
module whose forward output is non-finite), or the gradients (the last parameter, in module order, whose
gradient is non-finite). MODE: ``bf16``, ``fp32``, ``bf16-fp32norm`` (bf16 with every instance norm in
fp32: the first hypothesis, refuted) or ``bf16-fp32smallconv`` (bf16 with the convolutions on 2x2x2
inputs in fp32, :func:`mrfound.utils.precision.small_convs_in_fp32`, the benchmark's fix).
Prints one JSON line.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import chaos_segmentation as cs  # noqa: E402

MODES = ("bf16", "fp32", "bf16-fp32norm", "bf16-fp32smallconv")


def main(work: Path, steps: int, dtype: str) -> None:
    torch.set_num_threads(1)
    labelled, _ = cs.build_manifests(REPO.parent / "shared" / "data" / "chaos_t2", work)
    cases = cs.load_cases(labelled, 4.0, 32, work / "cache_seg", "log_otsu")[:12]
    net = cs._Net("unet", 32, 8, None, 0)
    if dtype == "bf16-fp32norm":
        for m in net.module.modules():
            if isinstance(m, torch.nn.InstanceNorm3d):
                m.register_forward_pre_hook(lambda m, args: tuple(a.float() for a in args))
    if dtype == "bf16-fp32smallconv":
        from mrfound.utils.precision import small_convs_in_fp32

        small_convs_in_fp32(net.module)
    opt = torch.optim.AdamW(net.module.parameters(), lr=1e-3, weight_decay=0.05)
    rng = np.random.default_rng(0)
    first_bad: dict[str, str] = {}

    def hook(name: str):
        def record(module, inputs, out) -> None:
            if "fwd" not in first_bad and isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
                first_bad["fwd"] = name

        return record

    for name, module in net.module.named_modules():
        module.register_forward_hook(hook(name or "root"))
    counts: collections.Counter = collections.Counter()
    where: collections.Counter = collections.Counter()
    for _ in range(steps):
        first_bad.clear()
        image, mask = cs.sample_batch(cases, 32, 4, rng, 0.8, 0.8, 0.8)
        if not torch.isfinite(image).all():
            counts["input"] += 1
            continue
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype.startswith("bf16")):
            loss = net.loss_fn(net.module(image).float(), mask)  # as _Net.loss, inside autocast
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            counts["loss"] += 1
            where["fwd:" + first_bad.get("fwd", "none")] += 1
            continue
        loss.backward()
        params = net.module.named_parameters()
        bad = [n for n, p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            counts["grad"] += 1
            where["grad:" + bad[-1]] += 1
            continue
        torch.nn.utils.clip_grad_norm_(net.module.parameters(), 1.0)
        opt.step()
        counts["ok"] += 1
    top = where.most_common(8)
    print(json.dumps({"dtype": dtype, "steps": steps, "counts": counts, "first_nonfinite": top}))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[3] not in MODES:
        raise SystemExit(f"usage: nan_diag.py WORK STEPS {'|'.join(MODES)}")
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
