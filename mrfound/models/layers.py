"""Token helpers shared by the encoder, the autoencoder and the heads.

Token layout used throughout ``mrfound.models``: an image ``(B, S, D, H, W)`` with S sequences is cut
into ``L = gd * gh * gw`` cubic patches per sequence; token ``t = s * L + l`` is patch ``l`` (raster
order over the patch grid ``(gd, gh, gw)``) of sequence ``s``. A sample's tokens are *packed*: only
the tokens in use are gathered, in increasing ``t``, and padded to the batch maximum, with a boolean
``valid`` mask (B, N). Attention then uses a key-padding mask, or none when nothing is padded.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from lightly.models.utils import set_at_index


def sincos_pos_embed_3d(grid_size: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed 3D sine-cosine position embedding (MAE's 2D one extended to three axes).

    Each axis gets ``2 * (dim // 6)`` channels (half sine, half cosine over geometric frequencies);
    any remaining channels (when ``dim`` is not a multiple of 6) are zero.

    Args:
        grid_size: Patch grid (gd, gh, gw).
        dim: Embedding width.

    Returns:
        Float32 tensor (gd * gh * gw, dim) in raster order of the grid.
    """
    per_axis = 2 * (dim // 6)
    half = per_axis // 2
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid_size], indexing="ij")
    parts = []
    if half > 0:
        omega = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) / half))
        for c in coords:
            angles = c.reshape(-1, 1) * omega.reshape(1, -1)
            parts += [torch.sin(angles), torch.cos(angles)]
    n = math.prod(grid_size)
    parts.append(torch.zeros(n, dim - 3 * per_axis, dtype=torch.float64))
    return torch.cat(parts, dim=1).to(torch.float32)


def gather_patches(
    image: torch.Tensor, patch_size: int, seq_idx: torch.Tensor, pos_idx: torch.Tensor
) -> torch.Tensor:
    """Flattened voxels of the selected patches only, without patchifying the whole volume.

    Args:
        image: (B, S, D, H, W).
        patch_size: Patch edge p.
        seq_idx: (B, N) sequence index of each wanted token.
        pos_idx: (B, N) patch index (raster order) of each wanted token.

    Returns:
        (B, N, p^3) patches, voxel order (pd, ph, pw).
    """
    b, s, d, h, w = image.shape
    p = patch_size
    gh, gw = h // p, w // p
    n = seq_idx.shape[1]
    dev = image.device
    # each patch is p*p rows of p contiguous voxels: select those rows of the (..., gw, p) row view
    # with one index_select (about 2x faster on CPU than advanced indexing of a permuted 8-D view)
    rows = image.reshape(-1, p)
    i = torch.div(pos_idx, gh * gw, rounding_mode="floor")
    j = torch.div(pos_idx, gw, rounding_mode="floor") % gh
    k = pos_idx % gw
    ar = torch.arange(p, device=dev)
    vol = torch.arange(b, device=dev).unsqueeze(1) * s + seq_idx  # (B, N) index of the (b, s) volume
    z = (vol * d + i * p).unsqueeze(-1) + ar  # (B, N, p) voxel planes
    y = (j * p).unsqueeze(-1) + ar  # (B, N, p) voxel rows
    row = ((z.unsqueeze(-1) * h + y.unsqueeze(-2)) * gw + k[..., None, None]).reshape(-1)
    return rows.index_select(0, row).reshape(b, n, p * p * p)


def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, S, D, H, W) -> (B, S, L, p^3), patches in raster order, voxels in (pd, ph, pw) order."""
    p = patch_size
    return rearrange(image, "b s (gd pd) (gh ph) (gw pw) -> b s (gd gh gw) (pd ph pw)", pd=p, ph=p, pw=p)


def unpatchify(patches: torch.Tensor, grid_size: tuple[int, int, int], patch_size: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, S, L, p^3) -> (B, S, D, H, W)."""
    gd, gh, gw = grid_size
    p = patch_size
    return rearrange(
        patches,
        "b s (gd gh gw) (pd ph pw) -> b s (gd pd) (gh ph) (gw pw)",
        gd=gd,
        gh=gh,
        gw=gw,
        pd=p,
        ph=p,
        pw=p,
    )


def pack_tokens(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the True entries of each row, packed to the left and padded to the row maximum.

    Args:
        mask: (B, T) bool, the tokens a sample uses.

    Returns:
        ``index`` (B, N) long with N = max row count (selected tokens first, in increasing order;
        padding slots hold arbitrary unselected indices) and ``valid`` (B, N) bool.
    """
    counts = mask.sum(dim=1)
    n = int(counts.max()) if mask.shape[0] else 0
    # stable sort of "not selected" puts the selected tokens first and keeps their order
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :n]
    valid = torch.arange(n, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return order, valid


def attention_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """Key-padding mask for SDPA, (B, 1, 1, N) bool (True = attend), or None when nothing is padded.

    Skipping the mask when every slot is valid keeps the fast unmasked attention path.
    """
    if valid is None or bool(valid.all()):
        return None
    return valid[:, None, None, :]


def scatter_tokens(
    values: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, total: int
) -> torch.Tensor:
    """Place packed per-token values back on the full token axis (zeros elsewhere).

    Args:
        values: (B, N, K) packed values.
        index: (B, N) token index of each value (as from :func:`pack_tokens`).
        valid: (B, N) which slots are real (padding is discarded).
        total: Length T of the full token axis.

    Returns:
        (B, T, K).
    """
    b, _, k = values.shape
    # padding goes to an extra dummy slot that is cut off afterwards
    idx = torch.where(valid, index, torch.full_like(index, total))
    full = values.new_zeros(b, total + 1, k)
    return set_at_index(full, idx, values)[:, :total]


def per_sequence_mean(
    tokens: torch.Tensor, keep: torch.Tensor, seq_idx: torch.Tensor, num_sequences: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the kept tokens of each sequence.

    Args:
        tokens: (B, N, C).
        keep: (B, N) bool, the tokens to pool.
        seq_idx: (B, N) vocabulary index of each token's sequence.
        num_sequences: Vocabulary size S.

    Returns:
        (B, S, C) means (zero where a sequence has no kept token) and (B, S, 1) kept-token counts.
    """
    w = torch.nn.functional.one_hot(seq_idx, num_sequences).to(tokens.dtype)
    w = w * keep.unsqueeze(-1).to(tokens.dtype)  # (B, N, S)
    counts = w.sum(dim=1).unsqueeze(-1)
    return torch.einsum("bns,bnc->bsc", w, tokens) / counts.clamp_min(1.0), counts
