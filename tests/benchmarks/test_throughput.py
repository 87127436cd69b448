"""Smoke test of benchmarks/throughput.py at a micro size (no timing assertions)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from testutils import load_module

REPO = Path(__file__).resolve().parents[2]
MICRO = {
    "img_size": 16,
    "patch_size": 8,
    "embed_dim": 24,
    "depth": 1,
    "num_heads": 2,
    "decoder_dim": 24,
    "decoder_depth": 1,
    "decoder_heads": 2,
    "max_decoded": 16,
}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tp():
    """The benchmark script imported as a module."""
    return load_module("benchmarks/throughput.py")


def test_analytic_flops_small_by_hand(tp):
    enc, mae = tp.ours_configs("small")
    assert tp.token_counts(enc, mae) == (128, 128)
    f = tp.analytic_flops_ours(enc, mae, 8, 128, 128)
    # encoder block: 128 tokens x 2 x 384^2 x (3 + 1 + 8) + attention 4 x 128^2 x 384
    block = 128 * 2 * 384**2 * 12 + 4 * 128**2 * 384
    assert f["forward_parts"]["encoder_blocks"] == pytest.approx(8 * 12 * block)
    dec_block = 256 * 2 * 192**2 * 12 + 4 * 256**2 * 192
    assert f["forward_parts"]["decoder_blocks"] == pytest.approx(8 * 4 * dec_block)
    assert f["forward_parts"]["patch_embed"] == pytest.approx(8 * 2 * 128 * 4096 * 384)
    parts = f["forward_parts"]
    assert f["train"] == pytest.approx(2 * parts["patch_embed"] + 3 * (f["forward"] - parts["patch_embed"]))
    assert 150e9 < f["train"] < 200e9


def test_monai_matching_gives_our_token_counts(tp):
    enc, mae = tp.ours_configs("small")
    match = tp.monai_matching(enc, mae)
    assert np.prod(match["patch_size"]) * match["_tokens"]["patches"] == 64**3
    assert match["_tokens"]["patches"] == 256
    assert int((1 - match["masking_ratio"]) * 256) == 128  # MONAI's own keep rule
    enc_m, mae_m = tp.ours_configs("tiny", **MICRO)
    m = tp.build_monai(tp.monai_matching(enc_m, mae_m))
    pred, mask = m(torch.randn(2, 8, 16, 16, 16))
    visible, decoded = tp.token_counts(enc_m, mae_m)
    assert pred.shape[1] == visible + decoded and int((mask == 0).sum(1)[0]) == visible
    assert tp.set_monai_flash(m, True) == 2  # one encoder + one decoder block


def test_pretrain_ab_micro_and_flop_counter(tp):
    res = tp.bench_pretrain("tiny", 2, CPU, rounds=1, overrides=MICRO, peak_sizes=(128,))
    for prec in ("fp32", "bf16"):
        s = res[f"summary_{prec}"]
        assert s["ratio_vs_monai"] > 0 and s["mfu_ours"] > 0
        assert set(res["rates"]) >= {f"ours_{prec}", f"monai_einsum_{prec}", f"monai_sdpa_{prec}"}
    assert res["flop_counter_check"]["ratio"] == pytest.approx(1.0, rel=1e-3)
    assert res["bf16_speedup"]["ours"] > 0


def test_loss_curve_same_seed_same_start(tp):
    pool = {"image": torch.randn(4, 8, 16, 16, 16).half(), "available": torch.ones(4, 8, dtype=torch.bool)}
    pool["available"][1, 3:] = False
    res = tp.bench_loss_curve(pool, "tiny", 4, 2, CPU, overrides=MICRO)
    assert len(res["curve_fp32"]) == len(res["curve_bf16"]) >= 2
    # same weights, batches and masks: the first losses agree to bf16 precision
    assert math.isclose(res["first_loss"][0], res["first_loss"][1], rel_tol=0.05)
    assert res["final_rel_diff"] >= 0


def test_scaling_table(tp):
    ov = {k: v for k, v in MICRO.items() if k not in ("img_size", "max_decoded")}
    res = tp.bench_scaling(
        "tiny", CPU, batch=1, rounds=1, n_sequences=(1, 8), rois=(16, 32), seq_roi=16, overrides=ov
    )
    rows = res["rows"]
    assert [r["tokens"] for r in rows] == [8, 64, 64, 512]
    assert rows[0]["growth_ratio"] == 1.0 and all(r["growth_ratio"] > 0 for r in rows)


def test_data_and_memory_helpers(tp, tmp_path):
    from mrfound.data.readers import write_nifti
    from mrfound.data.sequences import SEQUENCES

    rng = np.random.default_rng(0)
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    lines = ["case," + ",".join(SEQUENCES)]
    for c in range(2):
        img = np.zeros((14, 14, 14), np.float32)
        img[3:11, 3:11, 3:11] = 100 + 10 * rng.random((8, 8, 8))
        paths = [
            str(write_nifti(tmp_path / f"c{c}_{s}.nii.gz", img * (i + 1), aff))
            for i, s in enumerate(SEQUENCES)
        ]
        lines.append(f"c{c}," + ",".join(paths))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    fp = tp.first_pass(manifest, tmp_path / "cache")
    assert fp["cases"] == 2 and fp["cases_per_s"] > 0
    lr = tp.loader_rate(manifest, tmp_path / "cache", batch=2, samples=4, num_workers=0, roi=16)
    assert lr["cases"] == 4 and lr["cases_per_s"] > 0
    mem = tp.measure_rss(manifest, tmp_path / "cache", "tiny", 1, "fp32", 16, 1)
    assert "error" not in mem, mem
    assert 0.1 < mem["peak_rss_gb"] < 6


def test_goals_summary(tp):
    res = {
        "ratio_vs_monai": 1.2,
        "mfu_fp32": 0.5,
        "bf16_speedup": 1.8,
        "bf16_loss_curve": {"final_rel_diff": 0.01, "mean_rel_diff": 0.005},
        "data": {"ratio_vs_small_step": 5.0},
        "memory": {"fp32": {"peak_rss_gb": 3.0}},
    }
    goals = tp._goals(res)
    assert goals["1_ratio_vs_monai_fp32"]["met"] and not goals["2_mfu_fp32_small"]["met"]
    assert goals["2_mfu_fp32_small"]["shortfall"] == "20 %"
    assert goals["3b_bf16_loss_rel_diff"]["met"] and goals["6_peak_rss_gb"]["met"]


def test_goals_bf16_not_applicable_on_emulating_cpu(tp):
    """On a CPU that only emulates bf16 the bf16 goals are not applicable, not missed."""
    res = {"ratio_vs_monai": 1.2, "bf16": tp.BF16_EMULATED}
    goals = tp._goals(res)
    for name in ("3a_bf16_speedup", "3b_bf16_loss_rel_diff"):
        assert goals[name]["met"] is None and goals[name]["note"] == tp.BF16_EMULATED
    assert goals["1_ratio_vs_monai_fp32"]["met"] is True
