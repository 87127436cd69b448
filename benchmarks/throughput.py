"""Pretraining and inference throughput against MONAI's MAE, measured in one process (issue 8, DESIGN §8).

Prints ONE JSON object (also written atomically to ``results/throughput.json``) with the machine, the
command, the load average around every figure, and every figure and ratio:

1. ``pretrain``: training-step rate (forward + backward + AdamW step, cases/s) of our
   :class:`~mrfound.models.mae.MaskedModalityAutoencoder` and of MONAI ``MaskedAutoEncoderViT`` at matched
   width, depth, heads, decoder size, visible and decoded tokens, timed *interleaved* (ours, MONAI
   einsum, MONAI SDPA, ... in turn) so load drifts hit all alike; fp32 and bf16 autocast.
   ``ratio_vs_monai`` = ours / MONAI's faster setting, fp32.
2. ``mfu_fp32`` / ``mfu_bf16``: analytic training FLOPs / step time / matmul peak measured in this
   process (large square ``torch.mm``, same threads and dtype, probed between the timed rounds).
3. ``bf16``: bf16/fp32 step-rate ratio and a loss-curve check (fp32 and bf16 runs of ``tiny`` from the
   same seed on the same crops).
4. ``data``: first-pass preprocessing rate and cached ``MRDataset`` (mode ``random``) delivery rate with
   the default DataLoader workers (0, as ``TrainerConfig``), vs the ``small`` step's consumption.
5. ``inference``: ``embed`` latency per 8-sequence case, ``extract_features`` and ``predict``
   throughput, and encoder time vs number of sequences and ROI size against the token-count prediction.
6. ``memory``: peak RSS of ``small`` pretraining at batch 8 (a child process, its own ``VmHWM``).
7. CUDA: with a GPU the same code runs there (bf16 autocast, SDPA, ``--compile`` optional); GPU figures
   are only reported when measured.

Usage::

    .venv/bin/python benchmarks/throughput.py            # full (5.4 min on 2 idle cores)
    .venv/bin/python benchmarks/throughput.py --quick    # 1.5 min, fewer rounds and steps

The phantom cohort is kept in ``results/tmp/throughput/`` between runs; the preprocessing cache is
rebuilt every run (that is the first-pass figure).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import PHANTOM_FOREGROUND  # noqa: E402
from _machine import interleaved, matmul_peak, synchronize  # noqa: E402

from mrfound.models.config import EncoderConfig, MAEConfig  # noqa: E402
from mrfound.models.mae import MaskedModalityAutoencoder  # noqa: E402
from mrfound.models.registry import get_configs  # noqa: E402
from mrfound.pretrain.run import git_commit  # noqa: E402
from mrfound.pretrain.trainer import bf16_is_emulated  # noqa: E402
from mrfound.utils.machine import load_average, machine_info  # noqa: E402

GOALS = {
    "ratio_vs_monai": 1.0,
    "mfu_fp32": 0.6,
    "bf16_speedup": 1.7,
    "bf16_loss_rel_diff": 0.02,
    "data_ratio": 4.0,
    "peak_rss_gb": 6.0,
}
BF16_EMULATED = (
    "not measured: this CPU has no native bf16 (AVX512-BF16/AMX), so autocast would be emulated "
    "(9.3x slower than fp32 on an AVX2 CPU) and bf16 is not a precision to train in here"
)


# ----------------------------------------------------------------------------------------------------
# model pairs and analytic FLOPs


def ours_configs(size: str, max_decoded: int = 128, **overrides: Any) -> tuple[EncoderConfig, MAEConfig]:
    """The benchmark's configuration of a named size: no whole-sequence dropout (so every sample has the
    same visible count, matching MONAI) and ``max_decoded`` decoded tokens."""
    opts: dict[str, Any] = {"max_decoded": max_decoded, "sequence_drop": 0.0}
    opts.update(overrides)
    return get_configs(size, **opts)


def token_counts(enc: EncoderConfig, mae: MAEConfig, n_available: int | None = None) -> tuple[int, int]:
    """(visible, decoded) tokens per sample for ``n_available`` sequences and no sequence dropout."""
    s = enc.num_sequences if n_available is None else n_available
    total = s * enc.num_patches
    visible = min(max(int(math.floor((1.0 - mae.mask_ratio) * total + 0.5)), 1), total)
    hidden = total - visible
    decoded = hidden if mae.max_decoded is None else min(hidden, mae.max_decoded)
    return visible, decoded


def _block_flops(tokens: float, width: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one pre-norm transformer block on ``tokens`` tokens (matmuls only, 2*M*N*K):
    QKV 3C^2, attention QK^T and AV 2*N^2*C, output projection C^2, MLP 2*r*C^2 per token."""
    c, n = width, tokens
    return 2 * n * c * c * (3 + 1 + 2 * mlp_ratio) + 2 * 2 * n * n * c


def analytic_flops_ours(
    enc: EncoderConfig, mae: MAEConfig, batch: int, visible: int, decoded: int
) -> dict[str, float]:
    """Training-step FLOPs of our MAE (forward + backward), matmuls and attention only.

    Backward = 2x forward for every matmul whose input needs a gradient (3x forward in total); the patch
    projection's input is data, so it costs forward + weight gradient (2x). Elementwise work (norms,
    GELU, softmax, adds, the optimizer) is not counted, as usual for MFU.
    """
    c, cd, p3 = enc.embed_dim, mae.decoder_dim, enc.patch_volume
    v, t = visible, decoded
    fwd = {
        "patch_embed": 2 * v * p3 * c,
        "encoder_blocks": enc.depth * _block_flops(v, c, enc.mlp_ratio),
        "decoder_embed": 2 * v * c * cd,
        "decoder_blocks": mae.decoder_depth * _block_flops(v + t, cd, mae.decoder_mlp_ratio),
        "decoder_pred": 2 * t * cd * p3 + (2 * t * cd * 2 if mae.norm_pix_loss else 0),
    }
    fwd = {k: float(val) * batch for k, val in fwd.items()}
    train = 2 * fwd["patch_embed"] + 3 * sum(val for k, val in fwd.items() if k != "patch_embed")
    return {"forward": sum(fwd.values()), "train": train, "forward_parts": fwd}


def monai_patch(roi: int, patch: int, factor: int) -> tuple[int, int, int]:
    """A MONAI patch shape giving ``factor`` times more patches than our cubic ``patch`` on a ``roi``^3
    ROI (``factor`` split over the axes by halving, last axis first)."""
    sizes = [patch, patch, patch]
    f = factor
    axis = 2
    guard = 0
    while f > 1:
        if f % 2 == 0 and sizes[axis] % 2 == 0:
            sizes[axis] //= 2
            f //= 2
        elif f % 3 == 0 and sizes[axis] % 3 == 0:
            sizes[axis] //= 3
            f //= 3
        axis = (axis - 1) % 3
        guard += 1
        if guard > 64:
            raise ValueError(f"cannot split a {patch}^3 patch into {factor} parts for MONAI")
    if any(roi % s for s in sizes):
        raise ValueError(f"MONAI patch {sizes} does not divide the {roi}^3 ROI")
    return tuple(sizes)  # type: ignore[return-value]


def monai_matching(enc: EncoderConfig, mae: MAEConfig) -> dict[str, Any]:
    """MONAI ``MaskedAutoEncoderViT`` settings that match our token counts.

    MONAI stacks the S sequences as channels and its decoder always runs on *every* patch. So its patch
    grid must have exactly ``visible + decoded`` patches, and its masking ratio must keep ``visible`` of
    them: then its encoder sees ``visible`` (+1 cls) tokens and its decoder ``visible + decoded`` (+1 cls),
    as ours. The patch shape is our cubic patch split along the axes (small: 16^3 -> 16x16x4 voxels x 8
    channels, 256 patches, masking 0.5).
    """
    visible, decoded = token_counts(enc, mae)
    n = visible + decoded
    roi = enc.img_shape[0]
    if len(set(enc.img_shape)) != 1 or n % enc.num_patches:
        raise ValueError(
            f"cannot match {visible}+{decoded} tokens with a MONAI patch grid on {enc.img_shape}"
        )
    patch = monai_patch(roi, enc.patch_size, n // enc.num_patches)
    # +0.5: MONAI keeps int((1 - ratio) * n) tokens; keep exactly `visible` despite float rounding
    ratio = 1.0 - (visible + 0.5) / n
    return {
        "in_channels": enc.num_sequences,
        "img_size": roi,
        "patch_size": patch,
        "hidden_size": enc.embed_dim,
        "mlp_dim": int(enc.embed_dim * enc.mlp_ratio),
        "num_layers": enc.depth,
        "num_heads": enc.num_heads,
        "masking_ratio": ratio,
        "decoder_hidden_size": mae.decoder_dim,
        "decoder_mlp_dim": int(mae.decoder_dim * mae.decoder_mlp_ratio),
        "decoder_num_layers": mae.decoder_depth,
        "decoder_num_heads": mae.decoder_heads,
        "qkv_bias": enc.qkv_bias,
        "proj_type": "conv",
        "pos_embed_type": "sincos",
        "decoder_pos_embed_type": "sincos",
        "_tokens": {"patches": n, "visible": visible, "decoded": decoded},
    }


def analytic_flops_monai(match: dict[str, Any], batch: int) -> dict[str, float]:
    """Training-step FLOPs of MONAI's MAE as configured by :func:`monai_matching` (same conventions)."""
    c, cd = match["hidden_size"], match["decoder_hidden_size"]
    pin = match["in_channels"] * int(np.prod(match["patch_size"]))
    n = match["_tokens"]["patches"]
    v = match["_tokens"]["visible"] + 1  # + cls token
    nd = n + 1
    r = match["mlp_dim"] / c
    rd = match["decoder_mlp_dim"] / cd
    fwd = {
        "patch_embed": 2 * n * pin * c,  # the conv projects every patch, masked ones too
        "encoder_blocks": match["num_layers"] * _block_flops(v, c, r),
        "decoder_embed": 2 * v * c * cd,
        "decoder_blocks": match["decoder_num_layers"] * _block_flops(nd, cd, rd),
        "decoder_pred": 2 * nd * cd * pin,
    }
    fwd = {k: float(val) * batch for k, val in fwd.items()}
    train = 2 * fwd["patch_embed"] + 3 * sum(val for k, val in fwd.items() if k != "patch_embed")
    return {"forward": sum(fwd.values()), "train": train, "forward_parts": fwd}


def build_monai(match: dict[str, Any]) -> torch.nn.Module:
    """MONAI's MAE with :func:`monai_matching` settings."""
    from monai.networks.nets import MaskedAutoEncoderViT

    kw = {k: v for k, v in match.items() if not k.startswith("_")}
    model = MaskedAutoEncoderViT(spatial_dims=3, **kw)
    # MONAI's forward writes the (autocast bf16) decoder_embed output into an fp32 mask-token tensor with
    # index_put, which fails under autocast; hand that output back as fp32 (a (B, n, 192) cast) so the
    # rest of MONAI's model can run under bf16 autocast unchanged
    model.decoder_embed.register_forward_hook(lambda _m, _i, out: out.float())
    return model


def set_monai_flash(model: torch.nn.Module, on: bool) -> int:
    """Switch every MONAI self-attention block to SDPA (``on``) or its einsum path; returns the count."""
    from monai.networks.blocks.selfattention import SABlock

    n = 0
    for m in model.modules():
        if isinstance(m, SABlock):
            m.use_flash_attention = on
            n += 1
    return n


def monai_loss(model: torch.nn.Module, image: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """MONAI MAE loss as in its tutorial, with MAE's per-patch normalised targets (as ours)."""
    from einops import rearrange

    pred, mask = model(image)
    p1, p2, p3 = patch
    target = rearrange(
        image, "b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)", p1=p1, p2=p2, p3=p3
    ).float()
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    w = mask.to(per_patch.dtype)
    return (per_patch * w).sum() / w.sum()


def adamw(
    params: Any, device: torch.device, lr: float = 1e-4, weight_decay: float = 0.05
) -> torch.optim.AdamW:
    """AdamW as the training loop builds it (``fused`` on CPU and CUDA: one kernel for all tensors)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


def autocast(device: torch.device, precision: str):
    """bf16 autocast context (or a no-op for fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_step(
    model: torch.nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str,
) -> Callable[[], float]:
    """One training step: forward under the precision, backward, AdamW step, zero grads."""

    def step() -> float:
        with autocast(device, precision):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def _maybe_compile(model: torch.nn.Module, compile_: bool) -> torch.nn.Module:
    return torch.compile(model) if compile_ else model


def bench_pretrain(
    size: str,
    batch: int,
    device: torch.device,
    *,
    rounds: int,
    warmup: int = 1,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    compile_: bool = False,
    overrides: dict[str, Any] | None = None,
    peak_sizes: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Interleaved A/B of training steps, ours vs MONAI (einsum and SDPA attention), per precision.

    The matmul peak of each precision is probed before every round in the same process; the best probe
    is the peak. Returns rates, FLOPs, MFUs and the matching explanation.
    """
    if peak_sizes is None:
        peak_sizes = (4096, 8192) if device.type == "cuda" else (2048, 4096)
    enc, mae = ours_configs(size, **(overrides or {}))
    visible, decoded = token_counts(enc, mae)
    match = monai_matching(enc, mae)
    torch.manual_seed(0)
    ours = MaskedModalityAutoencoder(enc, mae).to(device).train()
    monai = build_monai(match).to(device).train()
    n_params = {
        "ours": sum(p.numel() for p in ours.parameters()),
        "monai": sum(p.numel() for p in monai.parameters()),
    }
    opt_ours = adamw(ours.parameters(), device)
    opt_monai = adamw(monai.parameters(), device)
    ours_run = _maybe_compile(ours, compile_)
    monai_run = _maybe_compile(monai, compile_)
    g = torch.Generator().manual_seed(1)
    image = torch.randn(batch, enc.num_sequences, *enc.img_shape, generator=g).to(device)
    available = torch.ones(batch, enc.num_sequences, dtype=torch.bool, device=device)
    patch = match["patch_size"]

    def monai_fn(flash: bool) -> Callable[[], torch.Tensor]:
        def fn() -> torch.Tensor:
            set_monai_flash(monai, flash)
            return monai_loss(monai_run, image, patch)

        return fn

    fns: dict[str, Callable[[], Any]] = {}
    for prec in precisions:
        fns[f"ours_{prec}"] = make_step(
            ours_run, lambda: ours_run(image, available)["loss"], opt_ours, device, prec
        )
        fns[f"monai_einsum_{prec}"] = make_step(monai_run, monai_fn(False), opt_monai, device, prec)
        fns[f"monai_sdpa_{prec}"] = make_step(monai_run, monai_fn(True), opt_monai, device, prec)

    peaks: dict[str, list[dict[str, Any]]] = {p: [] for p in precisions}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}

    def probe(_round: int) -> None:
        for prec in precisions:
            peaks[prec].append(matmul_peak(dtypes[prec], device, sizes=peak_sizes, repeats=3))

    la_before = load_average()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = interleaved(fns, rounds=rounds, warmup=warmup, device=device, between=probe)
    la_after = load_average()

    flops_ours = analytic_flops_ours(enc, mae, batch, visible, decoded)
    flops_monai = analytic_flops_monai(match, batch)
    out: dict[str, Any] = {
        "size": size,
        "batch": batch,
        "roi": list(enc.img_shape),
        "precisions": list(precisions),
        "rounds": rounds,
        "compile": compile_,
        "load_avg_before": la_before,
        "load_avg_after": la_after,
        "ours_config": {"encoder": enc.to_dict(), "mae": mae.to_dict()},
        "tokens_per_sample": {"visible": visible, "decoded": decoded, "decoder_input": visible + decoded},
        "monai_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in match.items()},
        "matching": (
            f"MONAI stacks the {enc.num_sequences} sequences as channels and decodes every patch, so its "
            f"{enc.img_shape[0]}^3 ROI is cut into {match['_tokens']['patches']} patches of "
            f"{'x'.join(map(str, patch))} voxels x {enc.num_sequences} channels with masking ratio "
            f"{match['masking_ratio']:.4f}: its encoder sees {visible} (+1 cls) tokens and its decoder "
            f"{visible + decoded} (+1 cls), exactly our {visible} visible and {visible}+{decoded} decoder "
            f"tokens (ours: {enc.num_sequences} sequences x {enc.num_patches} patches of "
            f"{enc.patch_size}^3, mask ratio {mae.mask_ratio}, sequence_drop 0, max_decoded "
            f"{mae.max_decoded}). Same width {enc.embed_dim}, depth {enc.depth}, heads {enc.num_heads}, "
            f"MLP {int(enc.embed_dim * enc.mlp_ratio)}, decoder {mae.decoder_dim} x {mae.decoder_depth} "
            f"({mae.decoder_heads} heads, MLP {int(mae.decoder_dim * mae.decoder_mlp_ratio)}), qkv bias, "
            "sincos positions, same per-patch normalised MSE on the hidden patches, same AdamW. MONAI "
            "projects all patches and predicts every patch (more FLOPs); we project only the visible "
            "patches and predict only the decoded ones."
        ),
        "params": n_params,
        "threads": torch.get_num_threads(),
        "optimizer": "AdamW (fused on CPU/CUDA, as the training loop), lr 1e-4, weight decay 0.05",
        "cuda_max_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "flops_per_step": {
            "ours": flops_ours,
            "monai": flops_monai,
            "convention": (
                "matmuls as 2*M*N*K incl. attention QK^T and AV; training = 3x forward (2x for the patch "
                "projection, whose input needs no gradient); elementwise ops and the optimizer excluded"
            ),
        },
        "timing": timing,
    }
    rates: dict[str, Any] = {}
    for name, rec in timing.items():
        rates[name] = {
            "step_s_min": round(rec["min_s"], 4),
            "step_s_median": round(rec["median_s"], 4),
            "cases_per_s": round(batch / rec["min_s"], 3),
            "cases_per_s_median": round(batch / rec["median_s"], 3),
        }
    out["rates"] = rates
    out["matmul_peak_gflops"] = {
        prec: {
            "best": max(p["gflops"] for p in peaks[prec]),
            "probes": [p["gflops"] for p in peaks[prec]],
            "per_size_best": {
                k: max(p["per_size"][k] for p in peaks[prec]) for k in peaks[prec][0]["per_size"]
            },
        }
        for prec in precisions
    }
    for prec in precisions:
        ours_r = rates[f"ours_{prec}"]
        best_name = max((f"monai_einsum_{prec}", f"monai_sdpa_{prec}"), key=lambda k: rates[k]["cases_per_s"])
        peak = out["matmul_peak_gflops"][prec]["best"] * 1e9
        out[f"summary_{prec}"] = {
            "ours_cases_per_s": ours_r["cases_per_s"],
            "monai_best": best_name,
            "monai_best_cases_per_s": rates[best_name]["cases_per_s"],
            "ratio_vs_monai": round(ours_r["cases_per_s"] / rates[best_name]["cases_per_s"], 3),
            "ratio_vs_monai_median": round(
                ours_r["cases_per_s_median"] / rates[best_name]["cases_per_s_median"], 3
            ),
            "ours_achieved_gflops": round(flops_ours["train"] / ours_r["step_s_min"] / 1e9, 1),
            "monai_achieved_gflops": round(flops_monai["train"] / rates[best_name]["step_s_min"] / 1e9, 1),
            "mfu_ours": round(flops_ours["train"] / ours_r["step_s_min"] / peak, 3),
            "mfu_ours_median": round(flops_ours["train"] / ours_r["step_s_median"] / peak, 3),
            "mfu_monai": round(flops_monai["train"] / rates[best_name]["step_s_min"] / peak, 3),
        }
    if "fp32" in precisions and "bf16" in precisions:
        out["bf16_speedup"] = {
            "ours": round(rates["ours_fp32"]["step_s_min"] / rates["ours_bf16"]["step_s_min"], 3),
            "ours_median": round(
                rates["ours_fp32"]["step_s_median"] / rates["ours_bf16"]["step_s_median"], 3
            ),
            "monai_sdpa": round(
                rates["monai_sdpa_fp32"]["step_s_min"] / rates["monai_sdpa_bf16"]["step_s_min"], 3
            ),
        }
    out["flop_counter_check"] = flop_counter_check(ours, image, available, flops_ours)
    return out


def flop_counter_check(
    model: MaskedModalityAutoencoder, image: torch.Tensor, available: torch.Tensor, analytic: dict[str, Any]
) -> dict[str, Any]:
    """Cross-check the analytic count with ``torch.utils.flop_counter`` on one fp32 forward + backward.

    torch's counter sees ``mm``/``addmm`` but not the CPU flash-attention kernel, so the comparison is
    against the analytic count without the attention score FLOPs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    enc, mae = model.encoder_config, model.config
    b = image.shape[0]
    v, t = token_counts(enc, mae)
    attn = (
        3 * 4 * b * (enc.depth * v * v * enc.embed_dim + mae.decoder_depth * (v + t) ** 2 * mae.decoder_dim)
    )
    counter = FlopCounterMode(display=False)
    with counter:
        model(image, available)["loss"].backward()
    model.zero_grad(set_to_none=True)
    counted = counter.get_total_flops()
    by_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    sdpa_counted = any("attention" in k for k in by_op)
    expected = analytic["train"] - (0 if sdpa_counted else attn)
    return {
        "torch_flop_counter": counted,
        "by_op": by_op,
        "analytic_comparable": expected,
        "ratio": round(counted / expected, 4) if expected else None,
        "note": "analytic train FLOPs minus attention scores (torch's counter skips CPU flash attention)"
        if not sdpa_counted
        else "attention counted by torch",
    }


# ----------------------------------------------------------------------------------------------------
# profile


def profile_step(
    size: str, batch: int, device: torch.device, precision: str, top: int = 12, steps: int = 2
) -> dict[str, Any]:
    """torch.profiler of ``steps`` training steps of ours (after one warm-up step); the top operators by
    self time, per step."""
    from torch.profiler import ProfilerActivity, profile

    enc, mae = ours_configs(size)
    torch.manual_seed(0)
    model = MaskedModalityAutoencoder(enc, mae).to(device).train()
    opt = adamw(model.parameters(), device)
    image = torch.randn(batch, enc.num_sequences, *enc.img_shape, device=device)
    available = torch.ones(batch, enc.num_sequences, dtype=torch.bool, device=device)
    step = make_step(model, lambda: model(image, available)["loss"], opt, device, precision)
    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    rows = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:top]
    return {
        "precision": precision,
        "size": size,
        "batch": batch,
        "load_avg": load_average(),
        "total_ms_per_step": round(total / 1000 / steps, 1),
        "top_ops": [
            {
                "op": e.key,
                "self_ms_per_step": round(getattr(e, attr) / 1000 / steps, 2),
                "share": round(getattr(e, attr) / total, 3),
                "calls_per_step": e.count // steps,
            }
            for e in rows
        ],
    }


# ----------------------------------------------------------------------------------------------------
# bf16 loss curve


def crop_pool(
    manifest_path: Path, cache_dir: Path, n: int, roi: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``n`` random ROI crops of the cohort (cached dataset), kept in memory as float16."""
    from mrfound.data.dataset import MRDataset
    from mrfound.data.preprocess import PreprocessConfig

    ds = MRDataset(
        manifest_path,
        config=PreprocessConfig(roi_size=roi, foreground=PHANTOM_FOREGROUND),
        mode="random",
        cache_dir=cache_dir,
        samples_per_case=max(1, math.ceil(n / max(1, len(_read_cases(manifest_path))))),
        seed=seed,
    )
    items = [ds[i] for i in range(n)]
    return {
        "image": torch.stack([it["image"] for it in items]).half(),
        "available": torch.stack([it["available"] for it in items]),
    }


def _read_cases(manifest_path: Path) -> list[Any]:
    from mrfound.data.manifest import read_manifest

    return read_manifest(manifest_path).cases


def loss_curve(
    pool: dict[str, torch.Tensor],
    enc: EncoderConfig,
    mae: MAEConfig,
    steps: int,
    batch: int,
    device: torch.device,
    precision: str,
    seed: int = 0,
    lr: float = 1e-3,
) -> dict[str, Any]:
    """Train ``steps`` steps from ``seed`` on the pool's crops in order; per-step losses and time.

    The weights, the batches and the masking of step ``s`` (global RNG seeded with ``seed + s``) are the
    same for every precision, so fp32 and bf16 curves differ only by arithmetic.
    """
    torch.manual_seed(seed)
    model = MaskedModalityAutoencoder(enc, mae).to(device).train()
    opt = adamw(model.parameters(), device, lr=lr)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
        ),
    )
    n = pool["image"].shape[0]
    losses: list[float] = []
    t0 = time.perf_counter()
    for s in range(steps):
        idx = [(s * batch + j) % n for j in range(batch)]
        image = pool["image"][idx].float().to(device)
        available = pool["available"][idx].to(device)
        torch.manual_seed(seed + 1000 + s)
        with autocast(device, precision):
            loss = model(image, available)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    synchronize(device)
    return {"losses": losses, "wall_s": time.perf_counter() - t0}


def bench_loss_curve(
    pool: dict[str, torch.Tensor],
    size: str,
    steps: int,
    batch: int,
    device: torch.device,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """fp32 vs bf16 training curves of ``size`` (default masking, with sequence dropout) on the pool."""
    opts = {"max_decoded": 128}
    opts.update(overrides or {})
    enc, mae = get_configs(size, **opts)
    la0 = load_average()
    runs = {p: loss_curve(pool, enc, mae, steps, batch, device, p) for p in ("fp32", "bf16")}
    f, b = np.asarray(runs["fp32"]["losses"]), np.asarray(runs["bf16"]["losses"])
    tail = max(1, steps // 10)
    final_f, final_b = float(f[-tail:].mean()), float(b[-tail:].mean())
    mean_f, mean_b = float(f.mean()), float(b.mean())
    every = max(1, steps // 30)
    return {
        "size": size,
        "steps": steps,
        "batch": batch,
        "config": {"encoder": enc.to_dict(), "mae": mae.to_dict()},
        "load_avg_before": la0,
        "load_avg_after": load_average(),
        "final_loss_fp32": round(final_f, 5),
        "final_loss_bf16": round(final_b, 5),
        "final_definition": f"mean loss of the last {tail} steps",
        "final_rel_diff": round(abs(final_b - final_f) / abs(final_f), 5),
        "mean_loss_fp32": round(mean_f, 5),
        "mean_loss_bf16": round(mean_b, 5),
        "mean_rel_diff": round(abs(mean_b - mean_f) / abs(mean_f), 5),
        "first_loss": [round(float(f[0]), 5), round(float(b[0]), 5)],
        "curve_every": every,
        "curve_fp32": [round(float(v), 4) for v in f[::every]],
        "curve_bf16": [round(float(v), 4) for v in b[::every]],
        "wall_s": {p: round(r["wall_s"], 1) for p, r in runs.items()},
    }


# ----------------------------------------------------------------------------------------------------
# data


def ensure_cohort(work: Path, n_cases: int, seed: int = 0) -> Path:
    """A phantom cohort of ``n_cases`` cases with all 8 sequences (kept between runs in ``work``)."""
    from mrfound.data.phantom import generate_cohort
    from mrfound.data.phantom.cohort import PhantomConfig

    out = work / f"cohort_8seq_n{n_cases}_s{seed}"
    manifest = out / "manifest.csv"
    if manifest.is_file():
        return manifest
    # the two centres with the complete 8-sequence protocol, nothing missing
    config = PhantomConfig(centers=("uni_3t", "private_15t"), p_missing=0.0)
    return generate_cohort(out, n_cases, seed, config, progress=False)


def first_pass(manifest_path: Path, cache_dir: Path) -> dict[str, Any]:
    """Preprocess every case into an empty cache (``PreprocessCache.get``): first-pass cases/s."""
    from mrfound.data.cache import PreprocessCache
    from mrfound.data.manifest import read_manifest

    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    man = read_manifest(manifest_path)
    cache = PreprocessCache(cache_dir)
    la0 = load_average()
    times, shapes = [], []
    for case in man.cases:
        t = time.perf_counter()
        sample, hit = cache.get_with_status(case)
        times.append(time.perf_counter() - t)
        shapes.append(list(sample["image"].shape))
        assert not hit
    return {
        "cases": len(times),
        "cases_per_s": round(len(times) / sum(times), 3),
        "s_per_case": [round(t, 3) for t in times],
        "volume_shapes": shapes[:4],
        "voxels_per_sequence_mean": int(np.mean([np.prod(s[1:]) for s in shapes])),
        "load_avg_before": la0,
        "load_avg_after": load_average(),
    }


def loader_rate(
    manifest_path: Path, cache_dir: Path, *, batch: int, samples: int, num_workers: int, roi: int = 64
) -> dict[str, Any]:
    """Cases/s a cached ``MRDataset`` (mode random) delivers through a DataLoader.

    One untimed epoch over every case first (steady state: page cache warm, cache entries verified);
    then ``samples`` random crops are timed (whole batches, collated).
    """
    from torch.utils.data import DataLoader

    from mrfound.data.dataset import MRDataset, collate_cases
    from mrfound.data.preprocess import PreprocessConfig

    n_cases = len(_read_cases(manifest_path))
    per_case = max(1, math.ceil(samples / n_cases))
    ds = MRDataset(
        manifest_path,
        config=PreprocessConfig(roi_size=roi, foreground=PHANTOM_FOREGROUND),
        mode="random",
        cache_dir=cache_dir,
        samples_per_case=per_case,
        seed=0,
    )
    t = time.perf_counter()
    for i in range(n_cases):
        ds[i * per_case]
    warm_s = time.perf_counter() - t
    loader = DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=num_workers, collate_fn=collate_cases, drop_last=True
    )
    la0 = load_average()
    n = 0
    t = time.perf_counter()
    for b in loader:
        n += b["image"].shape[0]
        if n >= samples:
            break
    dt = time.perf_counter() - t
    return {
        "num_workers": num_workers,
        "batch": batch,
        "cases": n,
        "cases_per_s": round(n / dt, 2),
        "first_touch_cases_per_s": round(n_cases / warm_s, 2),
        "load_avg_before": la0,
        "load_avg_after": load_average(),
    }


def rss_child(args: argparse.Namespace) -> None:
    """Child process: a few ``small`` pretraining steps from the cached cohort; prints peak RSS (JSON)."""
    import resource

    from torch.utils.data import DataLoader

    from mrfound.data.dataset import MRDataset, collate_cases

    opts: dict[str, Any] = {}
    if args.rss_max_decoded > 0:
        opts["max_decoded"] = args.rss_max_decoded
    enc, mae = get_configs(args.size, **opts)
    torch.manual_seed(0)
    model = MaskedModalityAutoencoder(enc, mae).train()
    opt = adamw(model.parameters(), torch.device("cpu"))
    ds = MRDataset(args.rss_manifest, mode="random", cache_dir=args.rss_cache, samples_per_case=8)
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, collate_fn=collate_cases, drop_last=True)
    dev = torch.device("cpu")
    times = []
    for i, batch in enumerate(loader):
        t = time.perf_counter()
        with autocast(dev, args.rss_precision):
            loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        if i + 1 >= args.rss_steps:
            break
    # VmHWM: this process's own high-water mark. ru_maxrss is not used for the figure because Linux
    # carries it across execve, so a child reports at least its parent's RSS at the fork.
    hwm_kb = _vm_hwm_kb()
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_kb = hwm_kb if hwm_kb is not None else maxrss_kb
    print(
        json.dumps(
            {
                "peak_rss_gb": round(peak_kb / 2**20, 3),
                "source": "/proc/self/status VmHWM" if hwm_kb is not None else "getrusage ru_maxrss",
                "ru_maxrss_gb": round(maxrss_kb / 2**20, 3),
                "step_s": [round(t, 3) for t in times],
            }
        )
    )


def _vm_hwm_kb() -> int | None:
    """Peak resident set size of this process in kB (Linux ``VmHWM``), None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def measure_rss(
    manifest_path: Path, cache_dir: Path, size: str, batch: int, precision: str, max_decoded: int, steps: int
) -> dict[str, Any]:
    """Peak RSS of a child process training ``size`` (see :func:`rss_child`)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--rss-child",
        "--size",
        size,
        "--batch",
        str(batch),
        "--rss-manifest",
        str(manifest_path),
        "--rss-cache",
        str(cache_dir),
        "--rss-precision",
        precision,
        "--rss-max-decoded",
        str(max_decoded),
        "--rss-steps",
        str(steps),
    ]
    la0 = load_average()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"
        }
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(
        {
            "size": size,
            "batch": batch,
            "precision": precision,
            "max_decoded": max_decoded if max_decoded > 0 else None,
            "steps": steps,
            "what": "whole training process: model, AdamW state, cached-dataset DataLoader, activations",
            "load_avg": la0,
        }
    )
    return res


# ----------------------------------------------------------------------------------------------------
# inference


def bench_inference(
    manifest_path: Path,
    cache_dir: Path,
    work: Path,
    size: str,
    device: torch.device,
    *,
    repeats: int,
    batch: int,
) -> dict[str, Any]:
    """``embed`` latency (8-sequence case, from NIfTI and from arrays), ``extract_features`` and
    ``predict`` throughput with a randomly initialised ``size`` checkpoint."""
    import mrfound
    from mrfound.data.sequences import CLASSES
    from mrfound.models.checkpoint import save_checkpoint
    from mrfound.models.encoder import MultiSequenceViT
    from mrfound.models.heads import ClassificationHead, Classifier

    man_cases = _read_cases(manifest_path)
    enc, mae = get_configs(size)
    torch.manual_seed(0)
    ckpt = save_checkpoint(work / f"ckpt_mae_{size}", MaskedModalityAutoencoder(enc, mae))
    model = mrfound.load_pretrained(ckpt, device=device)
    case = man_cases[0]
    paths = {s: str(p) for s, p in case.sequences.items()}
    out: dict[str, Any] = {"size": size, "sequences_in_case": len(paths), "load_avg_before": load_average()}

    model.embed(paths, lesion_xyz=case.lesion_xyz)  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.embed(paths, lesion_xyz=case.lesion_xyz)
        ts.append(time.perf_counter() - t)
    out["embed_from_nifti_s"] = {"min": round(min(ts), 4), "median": round(float(np.median(ts)), 4)}
    x = model.prepare(paths, lesion_xyz=case.lesion_xyz)
    ts = []
    for _ in range(max(repeats, 3)):
        t = time.perf_counter()
        model.embed_arrays(x["image"], x["available"])
        synchronize(device)
        ts.append(time.perf_counter() - t)
    out["embed_model_only_s"] = {"min": round(min(ts), 4), "median": round(float(np.median(ts)), 4)}

    mrfound.extract_features(manifest_path, model, batch_size=batch, cache_dir=cache_dir)  # warm
    t = time.perf_counter()
    table = mrfound.extract_features(manifest_path, model, batch_size=batch, cache_dir=cache_dir)
    dt = time.perf_counter() - t
    out["extract_features"] = {
        "cases": len(table),
        "batch_size": batch,
        "cases_per_s": round(len(table) / dt, 3),
        "note": "preprocessing cache warm: crop + encoder forward",
    }
    try:
        from mrfound import inference

        head = ClassificationHead(enc.embed_dim, len(CLASSES))
        clf = Classifier(MultiSequenceViT(enc), head, CLASSES)
        ckpt_c = save_checkpoint(work / f"ckpt_clf_{size}", clf)
        cmodel = mrfound.load_pretrained(ckpt_c, device=device)
        t = time.perf_counter()
        frame = inference.predict(cmodel, manifest_path, batch_size=batch)
        dt = time.perf_counter() - t
        out["predict"] = {
            "cases": len(frame),
            "batch_size": batch,
            "cases_per_s": round(len(frame) / dt, 3),
            "note": "from NIfTI (no preprocessing cache): read + resample + normalise + crop + classify",
        }
    except Exception as exc:  # inference.py is still in progress: report, do not fail the benchmark
        out["predict"] = {"error": f"{type(exc).__name__}: {exc}"}
    out["load_avg_after"] = load_average()
    return out


def encoder_flops(enc: EncoderConfig, tokens: int) -> float:
    """Forward FLOPs of the encoder on ``tokens`` tokens per sample (patch projection + blocks)."""
    return 2 * tokens * enc.patch_volume * enc.embed_dim + enc.depth * _block_flops(
        tokens, enc.embed_dim, enc.mlp_ratio
    )


def bench_scaling(
    size: str,
    device: torch.device,
    *,
    batch: int,
    rounds: int,
    n_sequences: tuple[int, ...] = (1, 2, 4, 8),
    rois: tuple[int, ...] = (48, 64, 96),
    seq_roi: int = 64,
    precision: str = "fp32",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Encoder forward (``embed``, inference) time vs available sequences and ROI size.

    The token-count prediction of each configuration is its analytic FLOPs (linear in tokens plus the
    quadratic attention term). Growth is measured relative to the smallest configuration of each table:
    ``growth_ratio`` = measured growth / predicted growth, <= 1 means no faster than tokens predict.
    """
    from mrfound.models.encoder import MultiSequenceViT

    rows = []
    configs: list[tuple[str, int, int]] = [("sequences", seq_roi, k) for k in n_sequences]
    configs += [("roi", r, 8) for r in rois]
    models: dict[int, MultiSequenceViT] = {}
    la0 = load_average()
    for kind, roi, k in configs:
        if roi not in models:
            enc, _ = get_configs(size, img_size=roi, **(overrides or {}))
            torch.manual_seed(0)
            models[roi] = MultiSequenceViT(enc).to(device).eval()
        model = models[roi]
        enc = model.config
        if kind == "sequences" and k > enc.num_sequences:
            continue
        image = torch.randn(batch, enc.num_sequences, *enc.img_shape, device=device)
        available = torch.zeros(batch, enc.num_sequences, dtype=torch.bool, device=device)
        available[:, :k] = True

        def fn(model=model, image=image, available=available) -> None:
            with torch.no_grad(), autocast(device, precision):
                model.embed(image, available)

        rec = interleaved({"x": fn}, rounds=rounds, warmup=1, device=device)["x"]
        tokens = k * enc.num_patches
        rows.append(
            {
                "table": kind,
                "roi": roi,
                "sequences": k,
                "tokens": tokens,
                "s_min": round(rec["min_s"], 5),
                "s_median": round(rec["median_s"], 5),
                "predicted_gflop": batch * encoder_flops(enc, tokens) / 1e9,
                "load_avg": rec["load_avg"][-1],
            }
        )
    for kind in ("sequences", "roi"):
        sub = [r for r in rows if r["table"] == kind]
        if not sub:
            continue
        base = sub[0]
        for r in sub:
            measured = r["s_min"] / base["s_min"]
            predicted = r["predicted_gflop"] / base["predicted_gflop"]
            r["measured_growth"] = round(measured, 3)
            r["predicted_growth"] = round(predicted, 3)
            r["growth_ratio"] = round(measured / predicted, 3)
            r["gflops_achieved"] = round(r["predicted_gflop"] / r["s_min"], 1)
        for r in sub:
            r["predicted_gflop"] = round(r["predicted_gflop"], 4)
    worst = max((r["growth_ratio"] for r in rows), default=None)
    return {
        "size": size,
        "batch": batch,
        "precision": precision,
        "what": "encoder forward (MultiSequenceViT.embed, no grad), best of the rounds",
        "rows": rows,
        "worst_growth_ratio": worst,
        "grows_no_faster_than_tokens": bool(worst is not None and worst <= 1.1),
        "load_avg_before": la0,
        "load_avg_after": load_average(),
    }


# ----------------------------------------------------------------------------------------------------
# main


def _goals(res: dict[str, Any]) -> dict[str, Any]:
    goals: dict[str, Any] = {}

    def add(name: str, value: Any, target: float, higher_better: bool = True) -> None:
        if value is None:
            goals[name] = {"value": None, "target": target, "met": False}
            return
        met = value >= target if higher_better else value <= target
        short = (target / value - 1.0 if value else None) if higher_better else (value / target - 1.0)
        goals[name] = {
            "value": value,
            "target": ("<= " if not higher_better else ">= ") + str(target),
            "met": bool(met),
            "shortfall": None if met or short is None else f"{100 * short:.0f} %",
        }

    add("1_ratio_vs_monai_fp32", res.get("ratio_vs_monai"), GOALS["ratio_vs_monai"])
    add("2_mfu_fp32_small", res.get("mfu_fp32"), GOALS["mfu_fp32"])
    if res.get("bf16") == BF16_EMULATED:
        # not a miss: bf16 is not a precision to train in on this CPU (fp32 is faster)
        for name, key in (
            ("3a_bf16_speedup", "bf16_speedup"),
            ("3b_bf16_loss_rel_diff", "bf16_loss_rel_diff"),
        ):
            goals[name] = {"value": None, "target": GOALS[key], "met": None, "note": BF16_EMULATED}
    else:
        add("3a_bf16_speedup", res.get("bf16_speedup"), GOALS["bf16_speedup"])
        lc = res.get("bf16_loss_curve") or {}
        worst = max(lc.get("final_rel_diff", 1.0), lc.get("mean_rel_diff", 1.0)) if lc else None
        add("3b_bf16_loss_rel_diff", worst, GOALS["bf16_loss_rel_diff"], higher_better=False)
    add("4_data_ratio", (res.get("data") or {}).get("ratio_vs_small_step"), GOALS["data_ratio"])
    rss = (res.get("memory") or {}).get("fp32", {}).get("peak_rss_gb")
    add("6_peak_rss_gb", rss, GOALS["peak_rss_gb"], higher_better=False)
    return goals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps (< 5 min)")
    ap.add_argument("--size", default="small", help="model size of the A/B, MFU, data and memory figures")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models in the A/B")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the A/B")
    ap.add_argument("--loss-steps", type=int, default=None, help="steps of the bf16 loss-curve runs")
    ap.add_argument(
        "--one-thread-ab",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the A/B on one thread (load-robust cross-check; default: on, off with --quick)",
    )
    ap.add_argument("--cases", type=int, default=None, help="phantom cohort size")
    ap.add_argument("--work", default=str(REPO / "results" / "tmp" / "throughput"))
    ap.add_argument(
        "--out",
        default=None,
        help="JSON file (default results/throughput.json, --quick: throughput_quick.json)",
    )
    ap.add_argument(
        "--skip",
        default="",
        help="comma list of sections to skip: pretrain,profile,loss,data,inference,scaling,memory",
    )
    # internal: peak-RSS child
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rss-manifest", help=argparse.SUPPRESS)
    ap.add_argument("--rss-cache", help=argparse.SUPPRESS)
    ap.add_argument("--rss-precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--rss-max-decoded", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--rss-steps", type=int, default=3, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return {}
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    quick = args.quick
    rounds = args.rounds or (2 if quick else 6)
    loss_steps = args.loss_steps or (40 if quick else 300)
    n_cases = args.cases or (4 if quick else 12)
    one_thread = args.one_thread_ab if args.one_thread_ab is not None else not quick
    peak_sizes = None if not quick else ((4096,) if device.type == "cuda" else (2048,))
    # emulated bf16 would take most of the run's time to time a precision nobody should use here
    bf16 = not bf16_is_emulated("bf16", on_cpu=device.type == "cpu")
    precisions = ("fp32", "bf16") if bf16 else ("fp32",)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    res: dict[str, Any] = {
        "benchmark": "throughput",
        "command": " ".join(
            ["python", "benchmarks/throughput.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]
        ),
        "mode": "quick" if quick else "full",
        "git_commit": git_commit(),
        "machine": machine_info(device),
        "load_avg_start": load_average(),
        "load_note": None,
        "goals_target": GOALS,
        "bf16": "measured" if bf16 else BF16_EMULATED,
        "gpu_figures": (
            "measured on " + torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else "not measured: no GPU in this run (the same code runs on CUDA: bf16, SDPA, --compile)"
        ),
    }

    def section(name: str, fn: Callable[[], Any], one_thread_when_busy: bool = False) -> Any:
        """Run one part; ``one_thread_when_busy``: on a CPU whose 1-min load exceeds 3/4 of its cores,
        use one thread (parts whose figure is a ratio or a loss, not a speed: on an oversubscribed CPU
        every multi-threaded op waits for a scheduler slice, which would make them take very long)."""
        if name in skip:
            return None
        t = time.time()
        la = load_average()
        threads = torch.get_num_threads()
        busy = bool(la) and la[0] > 0.75 * (os.cpu_count() or 1)
        use = 1 if (one_thread_when_busy and busy and device.type == "cpu") else threads
        print(f"[throughput] {name} ... (load {la[:1]}, threads {use})", file=sys.stderr, flush=True)
        torch.set_num_threads(use)
        try:
            val = fn()
        except Exception as exc:  # one failing section must not lose the others' figures
            val = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            torch.set_num_threads(threads)
        if isinstance(val, dict):
            val["section_wall_s"] = round(time.time() - t, 1)
            val["threads"] = use
            if use != threads:
                val["threads_note"] = f"1-min load {la[0]} > 3/4 of the cores at the start: ran on 1 thread"
        return val

    pre = section(
        "pretrain",
        lambda: bench_pretrain(
            args.size,
            args.batch,
            device,
            rounds=rounds,
            precisions=precisions,
            compile_=args.compile,
            peak_sizes=peak_sizes,
        ),
    )
    if pre is not None:
        res["pretrain"] = pre
        if "summary_fp32" in pre:
            res["ratio_vs_monai"] = pre["summary_fp32"]["ratio_vs_monai"]
            res["ratio_vs_monai_median"] = pre["summary_fp32"]["ratio_vs_monai_median"]
            res["mfu_fp32"] = pre["summary_fp32"]["mfu_ours"]
            res["mfu_fp32_median"] = pre["summary_fp32"]["mfu_ours_median"]
            res["monai_mfu_fp32"] = pre["summary_fp32"]["mfu_monai"]
        if "summary_bf16" in pre:
            res["mfu_bf16"] = pre["summary_bf16"]["mfu_ours"]
            res["ratio_vs_monai_bf16"] = pre["summary_bf16"]["ratio_vs_monai"]
        if "bf16_speedup" in pre:
            res["bf16_speedup"] = pre["bf16_speedup"]["ours"]

    if one_thread and device.type == "cpu" and torch.get_num_threads() > 1 and "pretrain_1thread" not in skip:
        # the same A/B on one thread: no OpenMP barriers, so co-tenants on a shared machine only
        # time-slice it; its ratios and MFU are the load-robust cross-check of the figures above
        print(f"[throughput] pretrain_1thread ... (load {load_average()[:1]})", file=sys.stderr, flush=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        t = time.time()
        try:
            one: dict[str, Any] = bench_pretrain(
                args.size, args.batch, device, rounds=max(2, rounds // 2), precisions=precisions
            )
        except Exception as exc:
            one = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            torch.set_num_threads(threads)
        one["section_wall_s"] = round(time.time() - t, 1)
        res["pretrain_1thread"] = one
        if "summary_fp32" in one:
            one.pop("timing", None)
            one.pop("ours_config", None)
            one.pop("monai_config", None)
            one.pop("flop_counter_check", None)
            res["ratio_vs_monai_1thread"] = one["summary_fp32"]["ratio_vs_monai"]
            res["mfu_fp32_1thread"] = one["summary_fp32"]["mfu_ours"]
            res["mfu_bf16_1thread"] = (one.get("summary_bf16") or {}).get("mfu_ours")
            res["bf16_speedup_1thread"] = (one.get("bf16_speedup") or {}).get("ours")

    res["profile"] = section(
        "profile",
        lambda: {
            p: profile_step(args.size, args.batch, device, p, steps=1 if quick else 2) for p in precisions
        },
        one_thread_when_busy=True,
    )

    manifest = cache = None
    data: dict[str, Any] = {}
    if not ({"data", "loss", "memory", "inference"} <= skip):
        t = time.time()
        manifest = ensure_cohort(work, n_cases)
        data["cohort"] = {
            "cases": n_cases,
            "manifest": str(manifest),
            "generate_or_reuse_s": round(time.time() - t, 1),
        }
        cache = work / "cache"
        data["first_pass_preprocessing"] = first_pass(manifest, cache)
    if "data" not in skip and manifest is not None:
        samples = 24 if quick else 96
        data["loader_default_workers"] = section(
            "data", lambda: loader_rate(manifest, cache, batch=args.batch, samples=samples, num_workers=0)
        )
        data["loader_2_workers"] = section(
            "data2", lambda: loader_rate(manifest, cache, batch=args.batch, samples=samples, num_workers=2)
        )
        consume = (pre or {}).get("rates", {}).get("ours_fp32", {}).get("cases_per_s")
        got = (data["loader_default_workers"] or {}).get("cases_per_s")
        if consume and got:
            data["small_step_consumes_cases_per_s"] = consume
            data["ratio_vs_small_step"] = round(got / consume, 2)
    res["data"] = data or None

    if manifest is not None and "loss" not in skip and bf16:
        pool = crop_pool(manifest, cache, 16 if quick else 64, roi=64)
        res["bf16_loss_curve"] = section(
            "loss", lambda: bench_loss_curve(pool, "tiny", loss_steps, 4, device), one_thread_when_busy=True
        )
        if res["bf16_loss_curve"] is not None and quick:
            res["bf16_loss_curve"]["note"] = f"--quick: {loss_steps} steps instead of 300"
        del pool

    if manifest is not None and "inference" not in skip:
        res["inference"] = section(
            "inference",
            lambda: bench_inference(
                manifest, cache, work, args.size, device, repeats=3 if quick else 5, batch=args.batch
            ),
        )
    res["scaling"] = section(
        "scaling",
        lambda: bench_scaling(args.size, device, batch=2, rounds=1 if quick else 3),
        one_thread_when_busy=True,
    )
    if manifest is not None and "memory" not in skip:
        mem = {"fp32": measure_rss(manifest, cache, args.size, args.batch, "fp32", 128, 3)}
        if not quick:
            if bf16:
                mem["bf16"] = measure_rss(manifest, cache, args.size, args.batch, "bf16", 128, 3)
            mem["fp32_decode_all"] = measure_rss(manifest, cache, args.size, args.batch, "fp32", 0, 2)
        res["memory"] = mem
    res["goals"] = _goals(res)
    res["load_avg_end"] = load_average()
    la0 = res["load_avg_start"]
    if device.type == "cpu" and la0 and la0[0] > 0.75 * (os.cpu_count() or 1):
        res["load_note"] = (
            f"the machine was shared and busy (1-min load {la0[0]} at the start, "
            f"{res['load_avg_end'][0]} at the end, on {os.cpu_count()} cores): multi-threaded timings "
            "include waits for CPU time taken by other processes; the interleaved ratios are fairer than "
            "the absolute rates, and the *_1thread figures are the load-robust cross-check"
        )
    res["wall_s"] = round(time.time() - t_start, 1)

    text = json.dumps(res, indent=1, default=str)
    print(text)
    out = Path(args.out or REPO / "results" / ("throughput_quick.json" if quick else "throughput.json"))
    try:
        from mrfound.utils.io import atomic_write_text

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")
    except OSError as exc:
        print(f"[throughput] could not write {out}: {exc}", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
