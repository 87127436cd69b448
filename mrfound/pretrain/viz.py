"""Reconstruction figures written during pretraining (``RUN/viz/recon_step_XXXXXXX.png``).

For each shown case, two rows on the middle axial slice of the ROI (voxel axes are RAS, so the slice is
``image[s, :, :, W // 2]`` shown with R to the right and A up):

1. **masked patches** of one sequence the encoder saw part of: original / encoder input (visible patches,
   hidden ones black) / reconstruction (visible patches copied, hidden ones predicted);
2. **dropped sequence**: original / nothing (the encoder saw none of it) / synthesis from the other
   sequences. A sequence dropped by the training-time masking is shown when there is one; otherwise one
   available sequence is hidden whole and synthesised from all the others (``model.reconstruct``).

The masking is drawn from a generator seeded with ``masking_seed``, so figures of successive steps show the
same hidden patches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrfound.utils.io import atomic_write_with


def _mid_axial(vol: torch.Tensor) -> np.ndarray:
    """(D, H, W) -> (H, D) middle slice along the last (S) axis, transposed for imshow(origin='lower')."""
    return vol[:, :, vol.shape[-1] // 2].float().cpu().numpy().T


@torch.no_grad()
def plot_reconstructions(
    model: Any,
    batch: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    masking_seed: int = 0,
    title: str | None = None,
    sequences: Sequence[str] | None = None,
) -> Path:
    """Draw original / visible / reconstruction for masked patches and a dropped sequence per case.

    Args:
        model: Masked-modality autoencoder (``reconstruction_images`` and ``reconstruct``), any device.
        batch: Collated batch (``image`` (B, S, D, H, W), ``available`` (B, S), ``case`` list).
        path: PNG to write (atomically).
        masking_seed: Seed of the masking drawn for the figure.
        title: Figure title (e.g. the step).
        sequences: Sequence names in channel order (default: the model's vocabulary).

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    device = next(model.parameters()).device
    names = list(sequences or model.encoder_config.sequences)
    image = batch["image"].to(device).float()
    avail = batch["available"].to(device).bool()
    cases = list(batch.get("case", [f"sample {i}" for i in range(image.shape[0])]))
    g = torch.Generator(device=device)
    g.manual_seed(int(masking_seed))
    rec = model.reconstruction_images({"image": image, "available": avail}, generator=g)
    ratio = float(model.config.mask_ratio)

    rows: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]] = []
    for b in range(image.shape[0]):
        available = [s for s in range(len(names)) if bool(avail[b, s])]
        dropped = [s for s in available if bool(rec["dropped"][b, s])]
        kept = [s for s in available if s not in dropped]
        s_in = kept[0]
        rows.append(
            (
                f"{cases[b]}  {names[s_in]}\nmasked patches ({ratio:.0%} of kept tokens hidden)",
                _mid_axial(image[b, s_in]),
                _mid_axial(rec["masked"][b, s_in]),
                _mid_axial(rec["recon"][b, s_in]),
            )
        )
        if dropped:
            s_d = dropped[0]
            synth = rec["recon"][b, s_d]
            how = "dropped by the masking"
        elif len(available) > 1:
            s_d = next(s for s in available if s != s_in)
            target = torch.zeros(1, len(names), dtype=torch.bool, device=device)
            target[0, s_d] = True
            synth = model.reconstruct(image[b : b + 1], avail[b : b + 1], target)[0, s_d]
            how = "hidden whole, from all others"
        else:
            continue  # a single sequence cannot be synthesised from others
        rows.append(
            (f"{cases[b]}  {names[s_d]}\nsequence {how}", _mid_axial(image[b, s_d]), None, _mid_axial(synth))
        )

    fig, axes = plt.subplots(len(rows), 3, figsize=(8.4, 2.7 * len(rows)), squeeze=False)
    cols = ("original", "encoder input (visible)", "reconstruction")
    for r, (label, orig, vis, recon) in enumerate(rows):
        vmax = float(max(np.percentile(orig, 99.5), 1e-3))  # per row: sequences differ in brightness
        for c, arr in enumerate((orig, vis, recon)):
            ax = axes[r, c]
            if arr is None:
                ax.imshow(np.zeros_like(orig), cmap="gray", vmin=0, vmax=vmax, origin="lower")
                ax.text(
                    0.5,
                    0.5,
                    "not seen\n(whole sequence hidden)",
                    color="white",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    fontsize=8,
                )
            else:
                ax.imshow(arr, cmap="gray", vmin=0, vmax=vmax, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(label + "\nA \u2191", fontsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel("R \u2192 (middle axial slice)", fontsize=7)
    fig.suptitle(title or "masked-modality reconstructions (held-out cases)", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    try:
        atomic_write_with(out, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    finally:
        plt.close(fig)
    return out
