"""Tests of mrfound/pipeline.py: load_pretrained, MRFoundModel.embed and extract_features."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import mrfound
from mrfound.errors import CheckpointError, ConfigError, MrfoundError
from mrfound.models.checkpoint import save_checkpoint
from mrfound.models.config import EncoderConfig, MAEConfig
from mrfound.models.mae import MaskedModalityAutoencoder
from mrfound.pipeline import MRFoundModel, extract_features, load_pretrained

REPO = Path(__file__).resolve().parents[1]
ROI = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[MaskedModalityAutoencoder, Path]:
    """A tiny autoencoder after two optimiser steps (so weights differ from init), and its checkpoint."""
    torch.manual_seed(0)
    model = MaskedModalityAutoencoder(
        EncoderConfig(img_size=ROI, patch_size=8, embed_dim=32, depth=2, num_heads=2),
        MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    image = torch.randn(2, 8, ROI, ROI, ROI)
    available = torch.ones(2, 8, dtype=torch.bool)
    for _ in range(2):
        model({"image": image, "available": available})["loss"].backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    folder = save_checkpoint(tmp_path_factory.mktemp("ck") / "final", model, {"provenance": {"steps": 2}})
    return model, folder


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"t2": rng.random((ROI,) * 3, dtype=np.float32), "t1_pv": rng.random((ROI,) * 3, dtype=np.float32)}


def _reference(model: MaskedModalityAutoencoder, arrays: dict[str, np.ndarray]) -> np.ndarray:
    image = torch.zeros(1, 8, ROI, ROI, ROI)
    available = torch.zeros(1, 8, dtype=torch.bool)
    for name, arr in arrays.items():
        idx = mrfound.SEQUENCES.index(name)
        image[0, idx] = torch.from_numpy(arr)
        available[0, idx] = True
    with torch.no_grad():
        return model.encoder.embed(image, available)[0].numpy()


def test_load_pretrained_in_fresh_process_is_bit_identical(trained, tmp_path) -> None:
    model, folder = trained
    arrays = _arrays()
    for name, arr in arrays.items():
        np.save(tmp_path / f"{name}.npy", arr)
    code = (
        "import sys, numpy as np, torch, mrfound\n"
        "torch.set_num_threads(int(sys.argv[3]))\n"
        "m = mrfound.load_pretrained(sys.argv[1], device='cpu')\n"
        "d = sys.argv[2]\n"
        "v = m.embed({'T2WI': np.load(d + '/t2.npy'), 'C+V': np.load(d + '/t1_pv.npy')})\n"
        "np.save(d + '/emb.npy', v)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-c", code, str(folder), str(tmp_path), str(torch.get_num_threads())],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    fresh = np.load(tmp_path / "emb.npy")
    assert fresh.shape == (32,) and fresh.dtype == np.float32
    assert np.array_equal(fresh, _reference(model, arrays))


def test_embed_accepts_aliases_subsets_and_tensors(trained) -> None:
    model, folder = trained
    m = load_pretrained(folder, device="cpu")
    assert isinstance(m, MRFoundModel) and m.embed_dim == 32 and not m.model.training
    arrays = _arrays(1)
    ref = _reference(model, arrays)
    assert np.array_equal(m.embed({"t2": arrays["t2"], "pv": torch.from_numpy(arrays["t1_pv"])}), ref)
    only_t2 = m.embed({"T2": arrays["t2"]})
    assert np.array_equal(only_t2, _reference(model, {"t2": arrays["t2"]}))
    assert not np.allclose(only_t2, ref)
    # larger preprocessed arrays are centre-cropped to the ROI
    big = {k: np.pad(v, 4) for k, v in arrays.items()}
    assert np.array_equal(m.embed(big), ref)


def test_embed_rejects_bad_cases(trained) -> None:
    m = load_pretrained(trained[1], device="cpu")
    arrays = _arrays()
    with pytest.raises(ConfigError, match="unknown sequence 'flair'"):
        m.embed({"flair": arrays["t2"]})
    with pytest.raises(MrfoundError, match="mixes plain arrays"):
        m.embed({"t2": arrays["t2"], "pv": (arrays["t1_pv"], np.eye(4))})
    with pytest.raises(MrfoundError, match="share one grid"):
        m.embed({"t2": arrays["t2"], "pv": arrays["t1_pv"][:-1]})
    with pytest.raises(MrfoundError, match="non-empty dict"):
        m.embed({})


def test_embed_preprocesses_arrays_with_affines(trained) -> None:
    m = load_pretrained(trained[1], device="cpu")
    rng = np.random.default_rng(0)
    vol = rng.random((20, 20, 12), dtype=np.float32) + 1.0
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    case = {"t2": (vol, affine), "C+A": (vol * 2, affine)}
    v = m.embed(case)
    assert v.shape == (32,) and np.isfinite(v).all()
    x = m.prepare(case, lesion_xyz=(10.0, 10.0, 10.0))
    assert x["image"].shape == (8, ROI, ROI, ROI) and x["available"].tolist() == [
        True,
        False,
        False,
        False,
        False,
        True,
        False,
        False,
    ]


def _write_cohort(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rows = ["case,subject,center,label,t2,t1_pv"]
    for i, label in enumerate(["hcc", "cyst", ""]):
        names = []
        for seq in ("t2", "t1_pv"):
            if i == 2 and seq == "t1_pv":
                names.append("")
                continue
            path = folder / f"c{i}_{seq}.nii.gz"
            nib.save(nib.Nifti1Image(rng.random((16, 16, 12), dtype=np.float32) + 1, affine), path)
            names.append(path.name)
        rows.append(f"c{i},s{i // 2},A,{label},{names[0]},{names[1]}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def test_extract_features_one_row_per_case(trained, tmp_path) -> None:
    m = load_pretrained(trained[1], device="cpu")
    manifest = _write_cohort(tmp_path)
    table = extract_features(manifest, m, batch_size=2)
    assert list(table.columns[:4]) == ["case", "subject", "center", "label"]
    assert list(table.columns[4:]) == [f"f{i}" for i in range(32)]
    assert table["case"].tolist() == ["c0", "c1", "c2"] and table["subject"].tolist() == ["s0", "s0", "s1"]
    assert table["label"].tolist()[:2] == ["hcc", "cyst"] and table["label"].isna().tolist()[2]
    # the same vector as embedding the case on its own
    from mrfound.data.manifest import read_manifest

    case = read_manifest(manifest).cases[2]
    single = m.embed({k: str(v) for k, v in case.sequences.items()})
    np.testing.assert_allclose(table.loc[2, "f0":].to_numpy(dtype=np.float32), single, atol=1e-5)
    via_name = mrfound.extract_features(manifest, trained[1])  # a path works too
    np.testing.assert_allclose(
        via_name.loc[:, "f0":].to_numpy(dtype=np.float32),
        table.loc[:, "f0":].to_numpy(dtype=np.float32),
        atol=1e-5,
    )


def test_embed_with_absent_sequences_imputed(trained, tmp_path) -> None:
    model, folder = trained
    m = load_pretrained(folder, device="cpu")
    arrays = _arrays(2)
    image = torch.zeros(1, 8, ROI, ROI, ROI)
    available = torch.zeros(1, 8, dtype=torch.bool)
    for name, arr in arrays.items():
        image[0, mrfound.SEQUENCES.index(name)] = torch.from_numpy(arr)
        available[0, mrfound.SEQUENCES.index(name)] = True
    with torch.no_grad():  # the six absent sequences synthesised, then all eight encoded
        full = model.reconstruct(image, available, ~available)
        expected = model.encoder.embed(full, torch.ones_like(available))[0].numpy()
    imputed = m.embed(arrays, absent="impute")
    np.testing.assert_allclose(imputed, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(imputed, m.embed(arrays))
    # a case with every sequence has nothing to impute
    every = {s: arrays["t2"] for s in mrfound.SEQUENCES}
    np.testing.assert_array_equal(m.embed(every, absent="impute"), m.embed(every))
    manifest = _write_cohort(tmp_path)
    table = extract_features(manifest, m, batch_size=2, absent="impute")
    assert table.shape == (3, 4 + 32) and np.isfinite(table.loc[:, "f0":].to_numpy(dtype=np.float32)).all()
    with pytest.raises(ConfigError, match="absent must be one of drop, impute"):
        m.embed(arrays, absent="zero")
    # a bare encoder has no decoder to impute with
    bare = load_pretrained(save_checkpoint(tmp_path / "bare", model.encoder), device="cpu")
    with pytest.raises(ConfigError, match="needs a pretrained masked-modality autoencoder"):
        extract_features(manifest, bare, absent="impute")


def test_load_pretrained_refuses_pickles(trained, tmp_path) -> None:
    torch.save(trained[0].state_dict(), tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="pickle"):
        mrfound.load_pretrained(tmp_path / "weights.pth")
