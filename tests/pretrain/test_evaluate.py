"""Tests of mrfound/pretrain/evaluate.py (held-out reconstruction metrics) and mrfound/pretrain/viz.py."""

from __future__ import annotations

import pytest
import torch

from mrfound.data.dataset import collate_cases
from mrfound.models.mae import MaskedModalityAutoencoder
from mrfound.models.registry import get_configs
from mrfound.pretrain.evaluate import evaluate_reconstruction, sequence_mean_patches
from mrfound.pretrain.viz import plot_reconstructions


def _model(seed: int = 0) -> MaskedModalityAutoencoder:
    torch.manual_seed(seed)
    enc, mae = get_configs(
        "tiny",
        img_size=16,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
    )
    return MaskedModalityAutoencoder(enc, mae)


def _samples(n: int, same: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        img = torch.rand(8, 16, 16, 16, generator=g)
        if same:
            img = torch.rand(8, 16, 16, 16, generator=torch.Generator().manual_seed(7))
        avail = torch.zeros(8, dtype=torch.bool)
        avail[[0, 2, 5, 6]] = True
        if i % 3 == 1:
            avail[6] = False
        img[~avail] = 0
        out.append(
            {"image": img, "available": avail, "label": -1, "case": f"c{i}", "subject": f"s{i}", "center": ""}
        )
    return out


def test_mean_baseline_is_exact_on_a_constant_dataset_and_models_share_masks():
    data = _samples(4, same=True)
    model = _model()
    baseline = sequence_mean_patches(model, data, batch_size=2)
    assert baseline.shape == (8, 8, 512)
    assert torch.equal(baseline[1], torch.zeros(8, 512))  # never-available sequence
    ev = evaluate_reconstruction(
        model,
        data,
        baseline=baseline,
        masking_seed=3,
        batch_size=2,
        extra_models={"copy": model, "other": _model(1)},
    )
    # the baseline predicts every patch of an identical dataset exactly
    assert ev["mean_baseline"]["loss_inpaint"] == pytest.approx(0.0, abs=1e-8)
    assert ev["mean_baseline"]["loss_synth"] in (None, pytest.approx(0.0, abs=1e-8))
    assert ev["model"]["loss_inpaint"] > 0.1
    assert ev["copy"] == ev["model"]  # same masks, same weights -> same numbers
    assert ev["other"]["n_inpaint"] == ev["model"]["n_inpaint"] and ev["other"] != ev["model"]
    assert ev["samples"] == 4 and ev["loss_space"] == "norm_pix" and "baseline_definition" in ev


def test_evaluation_is_reproducible_and_matches_the_training_loss():
    data = _samples(4)
    model = _model()
    a = evaluate_reconstruction(model, data, masking_seed=5, batch_size=4)
    b = evaluate_reconstruction(model, data, masking_seed=5, batch_size=4)
    c = evaluate_reconstruction(model, data, masking_seed=6, batch_size=4)
    assert a == b and a["model"] != c["model"]
    # with one batch the patch-weighted numbers equal the model's own forward losses on the same masks
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        out = model(collate_cases(data), generator=g)
    assert a["model"]["loss_recon"] == pytest.approx(float(out["loss_recon"]), rel=1e-5)
    assert a["model"]["n_inpaint"] == int(out["n_inpaint"]) and a["model"]["n_synth"] == int(out["n_synth"])
    if a["model"]["n_synth"]:
        assert a["model"]["loss_synth"] == pytest.approx(float(out["loss_synth"]), rel=1e-5)


def test_reconstruction_png(tmp_path):
    data = _samples(3)
    data[2]["available"] = torch.zeros(8, dtype=torch.bool)
    data[2]["available"][0] = True  # a single-sequence case has no synthesis row
    path = plot_reconstructions(_model(), collate_cases(data), tmp_path / "viz" / "r.png", title="t")
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > img.shape[1]  # 5 rows x 3 columns
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
