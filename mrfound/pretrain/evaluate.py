"""Held-out reconstruction evaluation of a masked-modality autoencoder, with a mean baseline.

All numbers are the pretraining loss itself, measured on hidden patches only: the mean squared error per
voxel between prediction and target in the loss space, which for the default ``norm_pix_loss`` is the
patch normalised by its own mean and standard deviation (``(x - mean) / sqrt(var + 1e-6)``, MAE). The
error is averaged over patches (each patch's voxel MSE counts once) and split like the training loss:

* ``loss_inpaint``: hidden patches of sequences the encoder saw part of (masked patches);
* ``loss_synth``: patches of sequences dropped whole (synthesis of a missing sequence);
* ``loss_recon``: all hidden patches.

The masking is drawn from a generator seeded with ``masking_seed`` and the evaluation set is iterated in a
fixed order, so every model (trained, untrained, baseline) is scored on the very same hidden patches.

**Per-sequence mean baseline** (:func:`sequence_mean_patches`): for every sequence ``s`` and patch position
``l`` of the ROI grid, the average over *training* samples in which ``s`` is available of that patch's
target in the loss space (i.e. the mean of the per-patch-normalised patches; the mean of the raw patches
when ``norm_pix_loss`` is off). It predicts that mean patch for every hidden patch of sequence ``s`` at
position ``l``. This is the best prediction that ignores the case (the per-position mean minimises the
expected squared error among case-independent predictions), so beating it means the model uses what it
sees of the case. For reference, predicting zeros in norm-pix space scores about 1.0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

BASELINE_DEFINITION = (
    "per-sequence mean patch: for each sequence and patch position, the mean over training samples (where "
    "the sequence is available) of the patch target in loss space (per-patch normalised voxels, "
    "(x - mean) / sqrt(var + 1e-6), when norm_pix_loss; raw normalised intensities otherwise); predicted for "
    "every hidden patch of that sequence and position, ignoring the case"
)


def _loader(
    dataset: Dataset, batch_size: int, collate_fn: Callable | None, max_samples: int | None
) -> DataLoader:
    if collate_fn is None:
        from mrfound.data.dataset import collate_cases

        collate_fn = collate_cases
    if max_samples is not None and max_samples < len(dataset):
        dataset = torch.utils.data.Subset(dataset, list(range(max_samples)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _targets(model: Any, image: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Targets of the given tokens in loss space, with the model's own normalisation."""
    gt = model.patch_targets(image, {"target_seq": seq, "target_pos": pos})
    if model.config.norm_pix_loss:
        return (gt["pixels"] - gt["mean"]) / gt["std"]
    return gt["pixels"]


@torch.no_grad()
def sequence_mean_patches(
    model: Any,
    dataset: Dataset,
    *,
    batch_size: int = 4,
    max_samples: int | None = None,
    collate_fn: Callable | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The per-sequence mean baseline's predictions (see the module docstring).

    Args:
        model: A :class:`~mrfound.models.mae.MaskedModalityAutoencoder` (defines patching and loss space).
        dataset: Training samples (DESIGN §3 dicts).
        batch_size: Samples per batch.
        max_samples: Use at most this many samples (the first ones).
        collate_fn: Default :func:`mrfound.data.dataset.collate_cases`.
        device: Where to compute (default: the model's device).

    Returns:
        (S, L, p^3) float32; zeros for a sequence never available.
    """
    device = torch.device(device) if device is not None else _device_of(model)
    s_count = model.encoder_config.num_sequences
    n = model.num_patches
    sums = torch.zeros(s_count, n, model.encoder_config.patch_volume, dtype=torch.float64, device=device)
    counts = torch.zeros(s_count, dtype=torch.float64, device=device)
    for batch in _loader(dataset, batch_size, collate_fn, max_samples):
        image = batch["image"].to(device)
        avail = batch["available"].to(device).bool()
        b = image.shape[0]
        seq = torch.arange(s_count, device=device).repeat_interleave(n).unsqueeze(0).expand(b, -1)
        pos = torch.arange(n, device=device).repeat(s_count).unsqueeze(0).expand(b, -1)
        tgt = _targets(model, image, seq, pos).reshape(b, s_count, n, -1).double()
        sums += (tgt * avail.view(b, s_count, 1, 1)).sum(dim=0)
        counts += avail.sum(dim=0)
    return (sums / counts.clamp_min(1).view(-1, 1, 1)).float()


@torch.no_grad()
def evaluate_reconstruction(
    model: Any,
    dataset: Dataset,
    *,
    baseline: torch.Tensor | None = None,
    masking_seed: int = 0,
    repeats: int = 1,
    batch_size: int = 4,
    max_samples: int | None = None,
    collate_fn: Callable | None = None,
    extra_models: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mean loss on hidden patches of held-out samples for a model, other models and the mean baseline.

    Args:
        model: Masked-modality autoencoder to score (put in eval mode here).
        dataset: Held-out samples, iterated in order (``repeats`` times, with new masks each pass).
        baseline: Output of :func:`sequence_mean_patches` (computed on training samples); ``None`` skips it.
        masking_seed: Seed of the masking generator, identical for every model scored.
        repeats: Passes over the data set (more masks per sample, less noise).
        batch_size: Samples per batch.
        max_samples: Use only the first samples.
        collate_fn: Default :func:`mrfound.data.dataset.collate_cases`.
        extra_models: ``name -> model`` scored on the same masks (e.g. ``{"untrained": ...}``).

    Returns:
        ``{"model": {...}, "<extra name>": {...}, "mean_baseline": {...}, "samples": N, "masking_seed": ...,
        "baseline_definition": ...}`` where each ``{...}`` holds ``loss_inpaint``, ``loss_synth``,
        ``loss_recon`` (``None`` when no patch of that kind occurred) and ``n_inpaint``, ``n_synth``.
    """
    device = _device_of(model)
    models = {"model": model, **(extra_models or {})}
    for m in models.values():
        m.eval()
    sums = {name: {"inpaint": 0.0, "synth": 0.0} for name in [*models, "mean_baseline"]}
    counts = {"inpaint": 0, "synth": 0}
    n = model.num_patches
    samples = 0
    loader = _loader(dataset, batch_size, collate_fn, max_samples)
    gens = {name: torch.Generator(device=device) for name in models}
    for g in gens.values():
        g.manual_seed(int(masking_seed))
    for _ in range(max(1, int(repeats))):
        for batch in loader:
            image = batch["image"].to(device)
            avail = batch["available"].to(device).bool()
            samples += image.shape[0]
            ref_masks = None
            for name, m in models.items():
                out = m({"image": image, "available": avail}, generator=gens[name], return_details=True)
                masks = (out["target_index"], out["target_valid"], out["dropped"])
                if ref_masks is None:
                    ref_masks = masks
                elif not all(torch.equal(a, b) for a, b in zip(ref_masks, masks)):
                    raise ValueError(
                        f"model {name!r} drew different masks; the models must share the "
                        "vocabulary, ROI and masking config"
                    )
                t_index, t_valid, dropped = masks
                t_seq = torch.div(t_index, n, rounding_mode="floor")
                t_pos = t_index % n
                target = _targets(m, image, t_seq, t_pos)
                synth = torch.gather(dropped, 1, t_seq) & t_valid
                inpaint = t_valid & ~synth
                err = (out["pred"].float() - target).pow(2).mean(dim=-1)
                sums[name]["inpaint"] += float((err * inpaint).sum())
                sums[name]["synth"] += float((err * synth).sum())
                if name == "model":
                    counts["inpaint"] += int(inpaint.sum())
                    counts["synth"] += int(synth.sum())
                    if baseline is not None:
                        pred_b = baseline.to(device)[t_seq, t_pos]
                        err_b = (pred_b - target).pow(2).mean(dim=-1)
                        sums["mean_baseline"]["inpaint"] += float((err_b * inpaint).sum())
                        sums["mean_baseline"]["synth"] += float((err_b * synth).sum())

    def summary(s: dict[str, float]) -> dict[str, Any]:
        total = counts["inpaint"] + counts["synth"]
        return {
            "loss_inpaint": s["inpaint"] / counts["inpaint"] if counts["inpaint"] else None,
            "loss_synth": s["synth"] / counts["synth"] if counts["synth"] else None,
            "loss_recon": (s["inpaint"] + s["synth"]) / total if total else None,
            "n_inpaint": counts["inpaint"],
            "n_synth": counts["synth"],
        }

    result: dict[str, Any] = {name: summary(sums[name]) for name in models}
    if baseline is not None:
        result["mean_baseline"] = summary(sums["mean_baseline"])
        result["baseline_definition"] = BASELINE_DEFINITION
    result["samples"] = samples
    result["masking_seed"] = int(masking_seed)
    result["loss_space"] = "norm_pix" if model.config.norm_pix_loss else "voxels"
    return result
