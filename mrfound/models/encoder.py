"""Multi-sequence 3D ViT encoder (DESIGN §4).

A case is the *set* of tokens of its available sequences. Each token is

    Linear(flattened p^3 patch) + sequence_embedding[s] + sincos_3d_position[l]

with one patch projection shared by all sequences, a learned embedding per vocabulary sequence and a
fixed 3D sine-cosine position. A missing sequence contributes no tokens (no zero-filled channel ever
reaches the encoder); samples with different token counts are packed and padded with a key-padding
attention mask, and the mask is skipped entirely when no sample needs padding. Only the patches that
are used are gathered and projected (for the autoencoder: the visible 25 %).

Because attention is permutation-equivariant and identity comes only from the embeddings, the output
does not depend on the order in which tokens or sequences are stored, and a case gives the same
tokens alone or padded inside a batch (up to float rounding).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention as _TimmAttention
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from mrfound.errors import ConfigError, MrfoundError
from mrfound.models.config import EMBED_POOLING, EncoderConfig
from mrfound.models.layers import (
    attention_mask,
    gather_patches,
    pack_tokens,
    per_sequence_mean,
    sincos_pos_embed_3d,
)

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def init_mae_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


POOLING = EMBED_POOLING
"""How :meth:`MultiSequenceViT.embed` pools the tokens into one case vector."""
PACK_MIN_PADDING = 0.1
"""Fraction of padding slots above which :func:`run_blocks` packs the valid tokens (see there)."""


class PackedTokens:
    """The valid tokens of a padded (B, N) batch laid out in one row (1, T), T = number of valid slots.

    Token-wise work (norms, MLPs, projections) then runs on real tokens only; attention scatters its
    Q/K/V back to (B, N) with a key-padding mask. Passed to the blocks in place of ``attn_mask``.

    Args:
        valid: (B, N) bool, True for real tokens.
    """

    def __init__(self, valid: torch.Tensor) -> None:
        b, n = valid.shape
        self.shape = (b, n)
        self.index = torch.nonzero(valid.reshape(-1)).squeeze(1)
        self.mask = valid[:, None, None, :]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, ...) -> (1, T, ...) real tokens only."""
        b, n = self.shape
        return x.reshape(b * n, *x.shape[2:]).index_select(0, self.index).unsqueeze(0)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(1, T, ...) -> (B, N, ...), zeros in the padding slots."""
        b, n = self.shape
        src = x.squeeze(0)
        out = src.new_zeros((b * n, *src.shape[1:]))
        return out.index_copy(0, self.index, src).reshape(b, n, *src.shape[1:])


def packed_layout(blocks: nn.ModuleList, valid: torch.Tensor | None) -> PackedTokens | None:
    """A :class:`PackedTokens` layout when packing the valid tokens pays and keeps the semantics.

    Packing is used when at least ``PACK_MIN_PADDING`` of the slots are padding, no stochastic depth is
    active (DropPath drops per sample, and a packed row mixes samples) and no hook watches a block's
    (B, N, C) output (e.g. the segmentation head's skip connections).
    """
    if valid is None or valid.ndim != 2 or valid.numel() == 0:
        return None
    n_pad = int((~valid).sum())
    if n_pad < PACK_MIN_PADDING * valid.numel() or n_pad == valid.numel():
        return None
    for blk in blocks:
        if blk._forward_hooks or blk._forward_pre_hooks:
            return None
        if blk.training and any(
            not isinstance(getattr(blk, name, None), nn.Identity) for name in ("drop_path1", "drop_path2")
        ):
            return None
    return PackedTokens(valid)


MATMUL_ATTENTION_MAX_TOKENS = 1024
"""Longest sequence for which low-precision CPU attention uses explicit matmuls instead of SDPA."""


class Attention(_TimmAttention):
    """timm ``Attention`` (same weights) that picks the faster kernel per call.

    Fused ``F.scaled_dot_product_attention`` is used on GPU and in float32. Under bf16/fp16 autocast on
    CPU, torch 2.14's flash-attention CPU kernel is 1.3-3x slower (forward + backward) than two
    batched matmuls and a softmax at the token counts used here (128-512; measured on the 2-core
    AVX-512-BF16 machine), so those calls take the explicit path up to
    ``MATMUL_ATTENTION_MAX_TOKENS`` tokens (beyond it the N^2 score matrix costs too much memory).
    """

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | PackedTokens | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        packed = attn_mask if isinstance(attn_mask, PackedTokens) else None
        qkv = self.qkv(x)
        if packed is not None:  # (1, T, 3C) real tokens -> (B, N, 3C) with a key-padding mask
            qkv = packed.unpack(qkv)
            attn_mask = packed.mask
        b, n, _ = qkv.shape
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        low_precision_cpu = q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
        if self.fused_attn and not (low_precision_cpu and n <= MATMUL_ATTENTION_MAX_TOKENS and not is_causal):
            x = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                dropout_p=self.attn_drop.p if self.training else 0.0,
                is_causal=is_causal,
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if is_causal:
                attn = attn.masked_fill(
                    torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1), float("-inf")
                )
            if attn_mask is not None:
                attn = (
                    attn.masked_fill(~attn_mask, float("-inf"))
                    if attn_mask.dtype == torch.bool
                    else attn + attn_mask
                )
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        if packed is not None:
            x = packed.pack(x)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def make_blocks(
    dim: int, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = True, drop_path_rate: float = 0.0
) -> nn.ModuleList:
    """Pre-norm timm ``Block`` stack (attention: :class:`Attention`), drop path increasing linearly."""
    # plain floats: works under torch.device('meta') too (shape-only builds)
    rates = [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path_rate]
    return nn.ModuleList(
        Block(
            dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path=rates[i],
            norm_layer=LayerNorm,
            attn_layer=Attention,
        )
        for i in range(depth)
    )


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    valid: torch.Tensor | None,
    layout: PackedTokens | None | bool = True,
) -> torch.Tensor:
    """Apply blocks to padded tokens (B, N, C) with a key-padding mask built once.

    Args:
        blocks: The blocks.
        x: (B, N, C) tokens, or (1, T, C) packed tokens when ``layout`` is a :class:`PackedTokens`.
        valid: (B, N) bool, False for padding; None = no padding (no mask: the fast attention path).
        layout: ``True``: pack the valid tokens when :func:`packed_layout` says it pays (the result is
            padded again, zeros in the padding slots); ``False``: never; a ``PackedTokens``: ``x`` is
            already packed and stays packed.

    Returns:
        Tokens in the layout of ``x``.
    """
    if isinstance(layout, PackedTokens):
        for blk in blocks:
            x = blk(x, attn_mask=layout)
        return x
    if layout is True:
        packed = packed_layout(blocks, valid)
        if packed is not None:
            return packed.unpack(run_blocks(blocks, packed.pack(x), valid, packed))
    mask = attention_mask(valid)
    for blk in blocks:
        x = blk(x, attn_mask=mask)
    return x


class MultiSequenceViT(nn.Module):
    """Encoder over the tokens of the available sequences.

    Args:
        config: Encoder configuration.

    Example:
        >>> enc = MultiSequenceViT(EncoderConfig(img_size=32, patch_size=8, embed_dim=32, depth=2,
        ...                                      num_heads=2))  # doctest: +SKIP
        >>> out = enc(image, available)  # image (B, S, 32, 32, 32), available (B, S) bool
        >>> out["tokens"].shape          # (B, N, 32), N = 64 * max available count
    """

    architecture = "multi_sequence_vit"

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config.embed_dim
        self.patch_embed = nn.Linear(config.patch_volume, c)
        self.seq_embed = nn.Parameter(torch.zeros(config.num_sequences, c))
        # fixed, recomputed from the config: not stored in checkpoints
        self.register_buffer("pos_embed", sincos_pos_embed_3d(config.grid_size, c), persistent=False)
        self.blocks = make_blocks(
            c, config.depth, config.num_heads, config.mlp_ratio, config.qkv_bias, config.drop_path_rate
        )
        self.norm = LayerNorm(c)
        self.apply(init_mae_weights)
        trunc_normal_(self.seq_embed, std=config.seq_embed_std)

    @property
    def embed_dim(self) -> int:
        """Token width C."""
        return self.config.embed_dim

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay (timm convention)."""
        return {"seq_embed"}

    def checkpoint_config(self) -> dict[str, Any]:
        """The architecture part of a checkpoint ``config.json``."""
        return {"architecture": self.architecture, "encoder": self.config.to_dict()}

    def check_input(self, image: torch.Tensor, available: torch.Tensor) -> None:
        """Raise ``MrfoundError`` on a wrong image shape or a sample with no available sequence."""
        cfg = self.config
        expected = (cfg.num_sequences, *cfg.img_shape)
        if image.ndim != 5 or tuple(image.shape[1:]) != expected:
            raise MrfoundError(
                f"image must have shape (B, {', '.join(map(str, expected))}) = (batch, sequences "
                f"{list(cfg.sequences)}, ROI voxels); got {tuple(image.shape)}"
            )
        if tuple(available.shape) != tuple(image.shape[:2]) or available.dtype != torch.bool:
            raise MrfoundError(
                f"available must be a bool tensor of shape {tuple(image.shape[:2])}; "
                f"got {available.dtype} {tuple(available.shape)}"
            )
        if not bool(available.any(dim=1).all()):
            raise MrfoundError("every sample needs at least one available sequence")

    def token_mask(self, available: torch.Tensor) -> torch.Tensor:
        """(B, S) sequence availability -> (B, S, L) token mask (all patches of available sequences)."""
        return available.unsqueeze(-1).expand(-1, -1, self.config.num_patches)

    def forward_tokens(
        self,
        patches: torch.Tensor,
        seq_idx: torch.Tensor,
        pos_idx: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode packed patches.

        Args:
            patches: (B, N, p^3) flattened patches.
            seq_idx: (B, N) vocabulary index of each token's sequence.
            pos_idx: (B, N) patch-grid index of each token.
            valid: (B, N) bool, False for padding; None = no padding.

        Returns:
            (B, N, C) tokens after the final LayerNorm (padding slots hold unused values).
        """
        packed = packed_layout(self.blocks, valid)
        if packed is not None:  # embed and encode the real tokens only (see PackedTokens)
            patches, seq_idx, pos_idx = packed.pack(patches), packed.pack(seq_idx), packed.pack(pos_idx)
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        x = x + self.seq_embed[seq_idx] + self.pos_embed[pos_idx]
        x = run_blocks(self.blocks, x, valid, packed if packed is not None else False)
        x = self.norm(x)
        return packed.unpack(x) if packed is not None else x

    def forward(
        self, image: torch.Tensor, available: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode the tokens of the available sequences (or a subset of them).

        Args:
            image: (B, S, D, H, W) in vocabulary order; missing channels are ignored (any content).
            available: (B, S) bool.
            token_mask: Optional (B, S, L) bool subset of the tokens to encode (e.g. the visible ones
                in pretraining); it is intersected with ``available``.

        Returns:
            Dict with ``tokens`` (B, N, C), ``valid`` (B, N) bool, ``seq_idx`` (B, N) and ``pos_idx``
            (B, N) long (N = the largest token count in the batch).
        """
        self.check_input(image, available)
        mask = self.token_mask(available)
        if token_mask is not None:
            mask = mask & token_mask
        b = image.shape[0]
        index, valid = pack_tokens(mask.reshape(b, -1))
        n_per_seq = self.config.num_patches
        seq_idx = torch.div(index, n_per_seq, rounding_mode="floor")
        pos_idx = index % n_per_seq
        patches = gather_patches(image, self.config.patch_size, seq_idx, pos_idx)
        tokens = self.forward_tokens(patches, seq_idx, pos_idx, valid)
        return {"tokens": tokens, "valid": valid, "seq_idx": seq_idx, "pos_idx": pos_idx}

    @staticmethod
    def pool(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean over the valid tokens: (B, N, C), (B, N) -> (B, C)."""
        w = valid.to(tokens.dtype).unsqueeze(-1)
        return (tokens * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    def centre_tokens(self, pos_idx: torch.Tensor) -> torch.Tensor:
        """(B, N) patch-grid indices -> bool, True in the central half of the grid along every axis.

        For a 4x4x4 grid these are the middle 2x2x2 patches; a grid of 2 or 3 along an axis keeps all.
        """
        gd, gh, gw = self.config.grid_size
        z = torch.div(pos_idx, gh * gw, rounding_mode="floor")
        y = torch.div(pos_idx, gw, rounding_mode="floor") % gh
        x = pos_idx % gw
        inside = [(c >= g // 4) & (c < g - g // 4) for c, g in ((z, gd), (y, gh), (x, gw))]
        return inside[0] & inside[1] & inside[2]

    def pool_per_sequence(
        self, tokens: torch.Tensor, keep: torch.Tensor, seq_idx: torch.Tensor
    ) -> torch.Tensor:
        """Mean of the kept tokens of each sequence, concatenated in vocabulary order.

        Args:
            tokens: (B, N, C).
            keep: (B, N) bool, the tokens to pool.
            seq_idx: (B, N) vocabulary index of each token's sequence.

        Returns:
            (B, S * C); the block of a sequence without kept tokens is NaN (absent, not zero).
        """
        means, counts = per_sequence_mean(tokens, keep, seq_idx, self.config.num_sequences)
        return means.masked_fill(counts == 0, float("nan")).reshape(tokens.shape[0], -1)

    def embed_dim_of(self, pooling: str) -> int:
        """Width of the vector :meth:`embed` returns with ``pooling``."""
        if pooling not in POOLING:
            raise ConfigError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLING)}")
        return self.embed_dim * (self.config.num_sequences if pooling == "centre_per_sequence" else 1)

    def embed(self, image: torch.Tensor, available: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
        """Pooled case features (B, C) from the final-norm tokens of all available sequences.

        Args:
            image: (B, S, D, H, W).
            available: (B, S) bool.
            pooling: ``"mean"``: mean of every token; ``"centre"``: mean of the tokens in the central half
                of the patch grid (where the lesion is in a lesion-centred ROI; on the phantom this
                probes 0.07-0.11 macro AUC better, see ``benchmarks/pooling_probe.py``);
                ``"centre_per_sequence"``: the central tokens' mean of each sequence separately,
                concatenated (S * C wide, NaN blocks for absent sequences: a linear probe then sees each
                sequence's lesion signal instead of their average; the probe imputes the NaN blocks).

        Returns:
            (B, C), or (B, S * C) for ``"centre_per_sequence"``.
        """
        self.embed_dim_of(pooling)  # validates the name
        out = self.forward(image, available)
        valid = out["valid"]
        if pooling == "mean":
            return self.pool(out["tokens"], valid)
        valid = valid & self.centre_tokens(out["pos_idx"])
        if pooling == "centre":
            return self.pool(out["tokens"], valid)
        return self.pool_per_sequence(out["tokens"], valid, out["seq_idx"])
