"""A tiny labelled NIfTI cohort and a tiny "pretrained" checkpoint for the fine-tuning and command tests.

The cohort is drawn here (not by the phantom simulator) so these tests stay fast and independent: 24
cases of 24^3 voxels at 2 mm, three sequences (t2, t1_art, t1_pv, some missing), a liver and one
spherical lesion whose enhancement pattern depends on the class (hcc: arterial hyper, portal washout;
cyst: T2 bright, no enhancement), and a mask (1 liver, 2 lesion, 3 a small other lesion).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (24, 24, 24)
SPACING = 2.0
TINY_ENCODER = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2)
PATTERNS = {  # lesion intensity per sequence (liver is 1.0 everywhere)
    "hcc": {"t2": 1.3, "t1_art": 2.0, "t1_pv": 0.5},
    "cyst": {"t2": 2.5, "t1_art": 0.3, "t1_pv": 0.3},
}


def _ball(center, radius):
    g = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    return sum((a - c) ** 2 for a, c in zip(g, center)) <= radius**2


def write_cohort(folder: Path, n_cases: int = 24, seed: int = 0) -> Path:
    """Write the NIfTI files and ``manifest.csv``; returns the manifest path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    rows = ["case,subject,center,label,t2,t1_art,t1_pv,mask"]
    for i in range(n_cases):
        label = "hcc" if i % 2 == 0 else "cyst"
        body = _ball((12, 12, 12), 11)
        liver = _ball((12, 12, 12), 9)
        centre = rng.integers(9, 15, 3)
        lesion = _ball(centre, rng.uniform(2.5, 3.5))
        other = _ball((5, 12, 12), 1.2) & liver & ~lesion
        mask = np.zeros(SHAPE, np.uint8)
        mask[liver] = 1
        mask[lesion] = 2
        mask[other] = 3
        nib.save(nib.Nifti1Image(mask, affine), folder / f"c{i:02d}_mask.nii.gz")
        cells = [f"c{i:02d}", f"s{i // 2:02d}", f"centre{i % 3}", label]
        missing = {1: "t1_art", 5: "t2", 9: "t1_pv"}.get(i % 12)
        for seq in ("t2", "t1_art", "t1_pv"):
            if seq == missing:
                cells.append("")
                continue
            img = np.where(body, 0.6, 0.02) + np.where(liver, 0.4, 0.0)
            img = np.where(lesion, PATTERNS[label][seq], img)
            img = img * 300 + rng.normal(0, 10, SHAPE)
            nib.save(nib.Nifti1Image(img.astype(np.float32), affine), folder / f"c{i:02d}_{seq}.nii.gz")
            cells.append(f"c{i:02d}_{seq}.nii.gz")
        cells.append(f"c{i:02d}_mask.nii.gz")
        rows.append(",".join(cells))
    path = folder / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def write_checkpoint(folder: Path) -> Path:
    """A random-weight ``multi_sequence_vit`` checkpoint (ROI 16 at 2 mm, patch 8, width 32, depth 2)."""
    import torch

    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.models.checkpoint import save_checkpoint
    from mrfound.models.config import EncoderConfig
    from mrfound.models.encoder import MultiSequenceViT

    torch.manual_seed(0)
    enc = MultiSequenceViT(EncoderConfig(**TINY_ENCODER))
    save_checkpoint(folder, enc, {"preprocessing": PreprocessConfig(spacing=2.0, roi_size=16).to_dict()})
    return folder


def write_mae_checkpoint(folder: Path) -> Path:
    """A random-weight masked-modality autoencoder checkpoint (the encoder of :func:`write_checkpoint`
    plus a one-block decoder of width 32), as pretraining writes it."""
    import torch

    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.models.checkpoint import save_checkpoint
    from mrfound.models.config import EncoderConfig, MAEConfig
    from mrfound.models.mae import MaskedModalityAutoencoder

    torch.manual_seed(0)
    mae = MaskedModalityAutoencoder(
        EncoderConfig(**TINY_ENCODER), MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2)
    )
    save_checkpoint(folder, mae, {"preprocessing": PreprocessConfig(spacing=2.0, roi_size=16).to_dict()})
    return folder
