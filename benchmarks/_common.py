"""Shared pieces of the benchmark scripts: machine description, provenance and the MONAI baseline.

:class:`ChannelStackedMAE` wraps MONAI's ``MaskedAutoEncoderViT`` (the channel-stacked MAE of DESIGN §4/§7)
so that the shared :class:`mrfound.pretrain.trainer.Trainer` trains it exactly like the masked-modality
autoencoder (training protocol ``model(batch) -> {"loss": ...}``) and the probe reads it exactly like a
:class:`~mrfound.models.encoder.MultiSequenceViT` (``config.sequences``, ``config.embed_dim``,
``embed(image, available)``).
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

PHANTOM_FOREGROUND = "otsu"
"""Foreground threshold of the phantom benchmarks (phenotype, imputation, throughput's data pipeline).

Their tables in README were made with raw Otsu, the library default before ``log_otsu``; they pin it so
that the commands printed beside the tables reproduce them. Re-running them with ``log_otsu`` is open work.
"""


def resolve_autocast(requested: str) -> str:
    """The training autocast to use for ``requested``: ``"no"`` for ``"bf16"`` on a CPU that only emulates it.

    Emulated bf16 (no AVX512-BF16/AMX) ran a ``tiny`` pretraining step 9.3x slower than fp32 on an
    AVX2-only CPU, so the benchmarks train in fp32 there and record both the request and the choice.
    """
    from mrfound.pretrain.trainer import bf16_is_emulated

    return "no" if bf16_is_emulated(requested, on_cpu=not torch.cuda.is_available()) else requested


def choose_threads(requested: int | None) -> int:
    """Torch threads: as asked, else all cores on an idle machine and 1 on a busy one.

    On an oversubscribed machine (load average above the core count) OpenMP threads wait on each other at
    every parallel region; one thread per process was ~10x faster than two in the training steps of the
    imputation and CHAOS benchmarks.
    """
    cores = os.cpu_count() or 1
    n = requested or (1 if os.getloadavg()[0] > cores - 0.5 else cores)
    torch.set_num_threads(n)
    return n


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line, UTC date and git commit of the run."""
    from mrfound.pretrain.run import git_commit

    argv = list(sys.argv if argv is None else argv)
    return {
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }


class ChannelStackedMAE(nn.Module):
    """MONAI ``MaskedAutoEncoderViT`` on the sequences stacked as channels, missing ones zero-filled.

    Pretraining loss (like the masked-modality autoencoder's, minus what channel stacking cannot do):
    MSE on per-patch normalised voxels of the masked tokens, averaged over the *available* channels only
    (a zero-filled channel is not a target). There is no whole-sequence dropout: a token holds every
    sequence of its patch, so a sequence cannot be hidden alone.

    Features (:meth:`embed`): every token is encoded (no masking), the mean of the encoder's output tokens
    (after its final LayerNorm, without the class token) is the case vector.

    Args:
        sequences: Sequence vocabulary (channel order).
        img_size: ROI edge (voxels).
        patch_size: Patch edge (voxels).
        embed_dim, depth, num_heads, mlp_ratio: Encoder width, blocks, heads, MLP ratio.
        decoder_dim, decoder_depth, decoder_heads: Decoder width, blocks, heads (MONAI's 3D sin-cos
            position embedding needs widths divisible by 6: 132 stands in for the ``tiny`` decoder's 128).
        mask_ratio: Fraction of the tokens hidden from the encoder.
    """

    architecture = "monai_channel_stacked_mae"

    def __init__(
        self,
        sequences: Sequence[str],
        img_size: int,
        patch_size: int,
        *,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        decoder_dim: int = 132,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        from monai.networks.nets import MaskedAutoEncoderViT

        self.net = MaskedAutoEncoderViT(
            in_channels=len(sequences),
            img_size=img_size,
            patch_size=patch_size,
            hidden_size=embed_dim,
            mlp_dim=int(embed_dim * mlp_ratio),
            num_layers=depth,
            num_heads=num_heads,
            masking_ratio=mask_ratio,
            decoder_hidden_size=decoder_dim,
            decoder_mlp_dim=int(decoder_dim * mlp_ratio),
            decoder_num_layers=decoder_depth,
            decoder_num_heads=decoder_heads,
            qkv_bias=True,
            proj_type="perceptron",  # same maths as the conv projection, several times faster on CPU
        )
        self.patch_size = int(patch_size)
        self.config = SimpleNamespace(
            sequences=tuple(sequences),
            embed_dim=int(embed_dim),
            img_size=int(img_size),
            patch_size=int(patch_size),
            depth=int(depth),
        )

    def no_weight_decay(self) -> set[str]:
        """Tokens without weight decay (timm convention, read by the trainer)."""
        return {"net.cls_token", "net.mask_tokens"}

    def _stack(self, image: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        return image * available.to(image.dtype).view(*available.shape, 1, 1, 1)

    def _patches(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, N, C, p^3) in the raster order of MONAI's conv patch embedding."""
        from einops import rearrange

        p = self.patch_size
        return rearrange(image, "b c (d pd) (h ph) (w pw) -> b (d h w) c (pd ph pw)", pd=p, ph=p, pw=p)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Training protocol: ``loss`` (masked norm-pix MSE over available channels) and ``n_masked``."""
        image, available = batch["image"].float(), batch["available"].bool()
        x = self._stack(image, available)
        pred, mask = self.net(x)  # pred (B, N, C * p^3), mask (B, N) 1 = hidden
        b, n = mask.shape
        c = x.shape[1]
        pred = pred.reshape(b, n, c, -1).float()
        target = self._patches(x)
        mean = target.mean(dim=-1, keepdim=True)
        std = torch.sqrt(target.var(dim=-1, keepdim=True) + 1e-6)
        per = ((pred - (target - mean) / std) ** 2).mean(dim=-1)  # (B, N, C)
        w = mask.to(per.dtype).unsqueeze(-1) * available.to(per.dtype).unsqueeze(1)
        loss = (per * w).sum() / w.sum().clamp_min(1.0)
        return {"loss": loss, "n_masked": mask.sum().float() / b}

    def embed(self, image: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """Case features (B, C): mean of the encoder's output tokens over all patches (no masking)."""
        net = self.net
        x = net.patch_embedding(self._stack(image.float(), available.bool()))
        x = torch.cat([net.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = net.blocks(x)  # ends with the encoder's LayerNorm
        return x[:, 1:].mean(dim=1)
