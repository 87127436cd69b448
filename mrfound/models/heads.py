"""Downstream heads on the multi-sequence encoder (DESIGN §4 "Heads") and their trainable wrappers.

* :class:`ClassificationHead`: mean over the valid tokens (or over the central ones, per sequence or all
  together, or attention pooling with a learned query) -> LayerNorm -> dropout -> Linear.
* :class:`SegmentationHead`: a light UNETR-style decoder. Tokens of every available sequence are
  fused per patch position (masked mean over the sequences present at that position) into a 3D
  feature grid at 1/p resolution, for the final layer and for ``log2(p) - 1`` intermediate encoder
  layers; the intermediate grids are upsampled (MONAI ``UnetrPrUpBlock``) into skips at 1/2^j
  resolution, and the input image gives the full-resolution skip through a per-sequence convolution
  fused by the same masked mean (a missing sequence's channel, whatever it holds, contributes
  nothing). ``UnetrUpBlock`` stages climb back to the input resolution; ``UnetOutBlock`` gives logits
  for background, liver and lesion. With ``skip_source="image"`` (the fine-tuning default) the
  intermediate skips come instead from a strided residual conv pyramid over the full-resolution stage
  and the tokens enter at 1/p only (a hybrid CNN-ViT): with few labels and 8^3-voxel patches the token
  skips are blocky and learn slowly.
* :class:`Classifier` / :class:`Segmenter`: ``encoder + head`` following the training protocol
  (``model(batch) -> dict(loss=..., ...)``) and exposing inference helpers (``predict_proba``,
  ``segment`` with MONAI sliding-window inference) for ``mrfound.pipeline``.

Segmentation labels: manifest masks use 0 background, 1 liver, 2 target lesion, 3 other lesions. The
segmenter maps 3 to the lesion class (2): those voxels are lesion tissue, and training them as
background or liver would teach the model to miss real lesions; "target" is a classification notion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mrfound.errors import ConfigError
from mrfound.models.config import HEAD_POOLING, SKIP_SOURCES
from mrfound.models.layers import per_sequence_mean
from mrfound.utils.tta import mirror_average

SEGMENTATION_LABELS: tuple[str, ...] = ("background", "liver", "lesion")
"""Output classes of :class:`SegmentationHead` (label index = position)."""


def masked_mean(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens: (B, N, C), (B, N) -> (B, C)."""
    w = valid.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def fuse_tokens_to_grid(
    tokens: torch.Tensor, valid: torch.Tensor, pos_idx: torch.Tensor, grid_size: Sequence[int]
) -> torch.Tensor:
    """Average the tokens of all sequences that share a patch position into a 3D feature grid.

    Args:
        tokens: (B, N, C) packed tokens.
        valid: (B, N) bool, False for padding.
        pos_idx: (B, N) raster index of each token's patch on ``grid_size``.
        grid_size: Patch grid (gd, gh, gw).

    Returns:
        (B, C, gd, gh, gw); a position no valid token covers is zero.
    """
    b, _, c = tokens.shape
    n_pos = math.prod(grid_size)
    idx = torch.where(valid, pos_idx, torch.full_like(pos_idx, n_pos))  # padding -> dummy slot
    sums = tokens.new_zeros(b, n_pos + 1, c).scatter_add(1, idx.unsqueeze(-1).expand(-1, -1, c), tokens)
    counts = tokens.new_zeros(b, n_pos + 1).scatter_add(1, idx, valid.to(tokens.dtype))
    mean = sums[:, :n_pos] / counts[:, :n_pos].clamp_min(1.0).unsqueeze(-1)
    return mean.transpose(1, 2).reshape(b, c, *grid_size)


class ClassificationHead(nn.Module):
    """Pooled tokens -> LayerNorm -> Linear.

    Args:
        embed_dim: Token width C.
        num_classes: Output classes.
        pooling: ``"mean"`` (masked mean over valid tokens), ``"centre"`` (masked mean over the valid
            tokens in the central half of the patch grid, where the lesion of a lesion-centred ROI is;
            :class:`Classifier` restricts the mask), ``"centre_per_sequence"`` (that central mean for each
            sequence separately, concatenated: S * C features, so the linear layer weighs each
            sequence's lesion signal instead of their average, as the per-sequence probe does; an absent
            sequence's block is a learned "missing" vector of that sequence) or ``"attention"`` (a
            learned query attends over the valid tokens, ``num_heads`` heads).
        dropout: Dropout before the linear layer.
        num_heads: Heads of the attention pooling.
        num_sequences: Sequence vocabulary size S (required by ``"centre_per_sequence"``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        pooling: str = "mean",
        dropout: float = 0.0,
        num_heads: int = 1,
        num_sequences: int | None = None,
    ) -> None:
        super().__init__()
        if pooling not in HEAD_POOLING:
            raise ConfigError(
                f"classification pooling must be one of {', '.join(HEAD_POOLING)}, got {pooling!r}"
            )
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
        per_sequence = pooling == "centre_per_sequence"
        if per_sequence and (num_sequences is None or num_sequences < 1):
            raise ConfigError(
                f"pooling 'centre_per_sequence' needs num_sequences >= 1, got {num_sequences!r}"
            )
        self.embed_dim, self.num_classes, self.pooling = embed_dim, num_classes, pooling
        self.dropout_p, self.num_heads = float(dropout), int(num_heads)
        self.num_sequences = int(num_sequences) if per_sequence else None
        if pooling == "attention":
            self.query = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.query, std=0.02)
            self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        if per_sequence:
            # stands in for an absent sequence's block; learnt under sequence-dropout augmentation
            self.missing = nn.Parameter(torch.zeros(self.num_sequences, embed_dim))
            nn.init.trunc_normal_(self.missing, std=0.02)
        # per sequence: one LayerNorm over each C-wide block (shared), so blocks stay on one scale
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim * (self.num_sequences or 1), num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)  # MAE fine-tuning: small head init
        nn.init.zeros_(self.fc.bias)

    def config(self) -> dict[str, Any]:
        """JSON-ready constructor arguments (stored in checkpoints)."""
        cfg = {
            "type": "classification",
            "embed_dim": self.embed_dim,
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "dropout": self.dropout_p,
            "num_heads": self.num_heads,
        }
        if self.num_sequences is not None:  # configs of the other poolings keep their old shape
            cfg["num_sequences"] = self.num_sequences
        return cfg

    def pool(
        self, tokens: torch.Tensor, valid: torch.Tensor, seq_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N, C), (B, N) -> (B, C) pooled features; (B, S, C) for ``"centre_per_sequence"``, which
        needs each token's sequence index ``seq_idx`` (B, N)."""
        if self.pooling in ("mean", "centre"):
            return masked_mean(tokens, valid)
        if self.pooling == "centre_per_sequence":
            if seq_idx is None:
                raise ValueError("pooling 'centre_per_sequence' needs the tokens' sequence indices")
            means, counts = per_sequence_mean(tokens, valid, seq_idx, self.num_sequences)
            return torch.where(counts > 0, means, self.missing.to(tokens.dtype).unsqueeze(0))
        q = self.query.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        out, _ = self.attn(q, tokens, tokens, key_padding_mask=~valid, need_weights=False)
        return out[:, 0]

    def forward(
        self, tokens: torch.Tensor, valid: torch.Tensor, seq_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.fc(self.drop(self.norm(self.pool(tokens, valid, seq_idx)).flatten(1)))


def _skip_layers(depth: int, n_skips: int) -> list[int]:
    """Encoder block indices whose outputs feed the skips, shallow (high resolution) first.

    Spread evenly like UNETR's 3/6/9 of 12 blocks; repeats allowed for very shallow encoders.
    """
    return [max(0, min(depth - 1, round(depth * (m + 1) / (n_skips + 1)) - 1)) for m in range(n_skips)]


class SegmentationHead(nn.Module):
    """Light UNETR-style decoder over fused sequence tokens.

    Args:
        embed_dim: Token width C.
        patch_size: Encoder patch edge p (a power of two >= 2).
        grid_size: Patch grid of the encoder ROI.
        num_sequences: Sequence vocabulary size S (input channels of the image skip).
        depth: Encoder depth (to choose the skip layers).
        num_classes: Output classes (3: background, liver, lesion).
        feature_size: Width of the full-resolution stage (doubles per level, UNETR's ``feature_size``).
        norm_name: MONAI norm of the conv blocks.
        skip_layers: Encoder block indices for the intermediate skips (default: evenly spread).
        skip_source: Where the intermediate skips (1/2 .. 1/(p/2) resolution) come from. ``"tokens"``
            (UNETR): intermediate encoder blocks, upsampled. ``"image"``: a strided residual conv
            pyramid over the fused full-resolution stage, so every skip carries image detail and the
            encoder tokens enter at 1/p only (hybrid CNN-ViT, as TransUNet). With few labelled volumes
            and coarse patches the token skips are blocky and learn slowly: after 150 fine-tuning
            steps on phantoms ``"image"`` gives lesion Dice 0.38 vs 0.08 (README, CHAOS section). The
            constructor default stays ``"tokens"`` so that checkpoints saved without the key rebuild.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: int,
        grid_size: Sequence[int],
        num_sequences: int,
        depth: int,
        num_classes: int = 3,
        feature_size: int = 16,
        norm_name: str = "instance",
        skip_layers: Sequence[int] | None = None,
        skip_source: str = "tokens",
    ) -> None:
        super().__init__()
        from monai.networks.blocks import (
            UnetOutBlock,
            UnetrBasicBlock,
            UnetResBlock,
            UnetrPrUpBlock,
            UnetrUpBlock,
        )

        if skip_source not in SKIP_SOURCES:
            raise ConfigError(f"skip_source must be one of {', '.join(SKIP_SOURCES)}, got {skip_source!r}")
        self.skip_source = skip_source

        levels = int(round(math.log2(patch_size)))
        if patch_size < 2 or 2**levels != patch_size:
            raise ConfigError(f"the segmentation head needs a power-of-two patch size >= 2, got {patch_size}")
        self.embed_dim, self.patch_size, self.grid_size = (
            embed_dim,
            patch_size,
            tuple(int(g) for g in grid_size),
        )
        self.num_sequences, self.depth, self.num_classes = num_sequences, depth, num_classes
        self.feature_size, self.norm_name = feature_size, norm_name
        n_token_skips = levels - 1 if skip_source == "tokens" else 0
        self.skip_layers = (
            list(skip_layers) if skip_layers is not None else _skip_layers(depth, n_token_skips)
        )
        if len(self.skip_layers) != n_token_skips or not all(0 <= i < depth for i in self.skip_layers):
            raise ConfigError(
                f"skip_layers must be {n_token_skips} block indices in [0, {depth}) for skip_source "
                f"{skip_source!r}, got {skip_layers}"
            )
        fs = feature_size
        # Full-resolution skip: the masked mean over the available sequences of one linear conv per
        # sequence, (1/n) sum_s (W_s * x_s + b_s). Being linear, it equals ONE dense conv over the
        # channels with missing ones zeroed, divided by n, plus the mean bias: an 8x cheaper layer than
        # a grouped conv with S * fs outputs (grouped 3D convs are also slow on CPU).
        self.image_proj = nn.Conv3d(num_sequences, fs, kernel_size=3, padding=1, bias=False)
        self.image_bias = nn.Parameter(torch.zeros(num_sequences, fs))
        self.image_block = UnetrBasicBlock(
            3, fs, fs, kernel_size=3, stride=1, norm_name=norm_name, res_block=True
        )
        # intermediate skips: level j (resolution 1/2^j) from the fused grid of one encoder block, or
        # from a strided conv pyramid over the full-resolution stage
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(
                3,
                embed_dim,
                fs * 2**j,
                num_layer=levels - j - 1,
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=norm_name,
                conv_block=True,
                res_block=True,
            )
            for j in range(1, levels)
            if skip_source == "tokens"
        )
        self.image_down = nn.ModuleList(
            UnetResBlock(3, fs * 2 ** (j - 1), fs * 2**j, kernel_size=3, stride=2, norm_name=norm_name)
            for j in range(1, levels)
            if skip_source == "image"
        )
        # decoder: from 1/p up to full resolution, one UnetrUpBlock per level
        ups = []
        in_ch = embed_dim
        for j in range(levels - 1, -1, -1):
            ups.append(
                UnetrUpBlock(
                    3,
                    in_ch,
                    fs * 2**j,
                    kernel_size=3,
                    upsample_kernel_size=2,
                    norm_name=norm_name,
                    res_block=True,
                )
            )
            in_ch = fs * 2**j
        self.ups = nn.ModuleList(ups)
        self.out = UnetOutBlock(3, fs, num_classes)

    def config(self) -> dict[str, Any]:
        """JSON-ready constructor arguments (stored in checkpoints)."""
        return {
            "type": "segmentation",
            "embed_dim": self.embed_dim,
            "patch_size": self.patch_size,
            "grid_size": list(self.grid_size),
            "num_sequences": self.num_sequences,
            "depth": self.depth,
            "num_classes": self.num_classes,
            "feature_size": self.feature_size,
            "norm_name": self.norm_name,
            "skip_layers": list(self.skip_layers),
            "skip_source": self.skip_source,
        }

    def forward(
        self,
        image: torch.Tensor,
        available: torch.Tensor,
        hidden: Sequence[torch.Tensor],
        tokens: torch.Tensor,
        valid: torch.Tensor,
        pos_idx: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (B, num_classes, D, H, W).

        Args:
            image: (B, S, D, H, W) input (missing channels ignored).
            available: (B, S) bool.
            hidden: Outputs of the encoder blocks in ``skip_layers`` (each (B, N, C)).
            tokens: Final (normed) encoder tokens (B, N, C).
            valid: (B, N) bool.
            pos_idx: (B, N) patch index of each token.
        """
        dtype = self.image_proj.weight.dtype
        w = available.to(dtype)  # (B, S)
        n = w.sum(1).clamp_min(1.0)  # (B,)
        x = image.to(dtype) * w[:, :, None, None, None]  # missing channels contribute nothing
        fused = self.image_proj(x) / n[:, None, None, None, None]
        fused = fused + ((w @ self.image_bias.to(dtype)) / n[:, None])[:, :, None, None, None]
        skips = [self.image_block(fused)]
        for down in self.image_down:
            skips.append(down(skips[-1]))
        skips += [
            blk(fuse_tokens_to_grid(h, valid, pos_idx, self.grid_size)) for blk, h in zip(self.skips, hidden)
        ]
        x = fuse_tokens_to_grid(tokens, valid, pos_idx, self.grid_size)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.out(x)


def build_head(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a head from its :meth:`config` dict (as stored in a checkpoint)."""
    cfg = dict(config)
    kind = cfg.pop("type", None)
    if kind == "classification":
        return ClassificationHead(**cfg)
    if kind == "segmentation":
        return SegmentationHead(**cfg)
    raise ConfigError(f"unknown head type {kind!r}; expected 'classification' or 'segmentation'")


def drop_sequences(
    available: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sequence-dropout augmentation: remove each available sequence with probability ``p``, keep >= 1.

    A sample whose draw removes every sequence keeps one of its sequences, chosen uniformly.

    Args:
        available: (B, S) bool.
        p: Drop probability per available sequence, in [0, 1).
        generator: Optional RNG.

    Returns:
        New (B, S) bool availability (a subset of ``available``).
    """
    if p <= 0:
        return available
    u = torch.rand(available.shape, generator=generator, device=available.device)
    keep = available & (u >= p)
    empty = ~keep.any(dim=1)
    if empty.any():
        # one random available sequence per emptied sample: largest random score among available ones
        score = torch.rand(available.shape, generator=generator, device=available.device)
        score = torch.where(available, score, torch.full_like(score, -1.0))
        pick = F.one_hot(score.argmax(dim=1), available.shape[1]).bool()
        keep = torch.where(empty.unsqueeze(1), pick & available, keep)
    return keep


class EncoderHooks:
    """Collect the outputs of chosen encoder blocks during each forward (forward hooks; a context
    manager that removes them). ``outputs[i]`` is block ``i``'s output of the latest forward, in the
    padded (B, N, C) layout (see :func:`mrfound.models.encoder.packed_layout`)."""

    def __init__(self, blocks: nn.ModuleList, indices: Sequence[int]) -> None:
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [blocks[i].register_forward_hook(self._hook(i)) for i in sorted(set(indices))]

    def _hook(self, i: int) -> Any:
        def fn(_module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            self.outputs[i] = out

        return fn

    def __enter__(self) -> EncoderHooks:
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()


class Classifier(nn.Module):
    """Encoder + :class:`ClassificationHead` trained with class-weighted cross-entropy.

    Args:
        encoder: A :class:`mrfound.models.encoder.MultiSequenceViT`.
        head: The classification head.
        classes: Class names (index order of the logits).
        class_weights: Optional (K,) cross-entropy weights (e.g. inverse class frequency).
        sequence_dropout: Training-time probability of removing each available sequence (>= 1 kept).
        label_smoothing: Cross-entropy label smoothing.
    """

    architecture = "classifier"

    def __init__(
        self,
        encoder: nn.Module,
        head: ClassificationHead,
        classes: Sequence[str],
        class_weights: Sequence[float] | torch.Tensor | None = None,
        sequence_dropout: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if len(classes) != head.num_classes:
            raise ConfigError(f"{len(classes)} class names for a head with {head.num_classes} outputs")
        self.encoder, self.head = encoder, head
        self.classes = tuple(classes)
        self.sequence_dropout, self.label_smoothing = float(sequence_dropout), float(label_smoothing)
        w = (
            torch.ones(len(classes))
            if class_weights is None
            else torch.as_tensor(class_weights, dtype=torch.float32)
        )
        self.register_buffer("class_weights", w, persistent=False)

    def logits(self, image: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K)."""
        out = self.encoder(image, available)
        valid = out["valid"]
        if self.head.pooling in ("centre", "centre_per_sequence"):
            valid = valid & self.encoder.centre_tokens(out["pos_idx"])
        return self.head(out["tokens"], valid, out["seq_idx"])

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Training protocol: ``loss`` (weighted CE over labelled samples), ``acc``, ``logits``.

        Unlabelled samples (label -1) are ignored by the loss.
        """
        image, available = batch["image"], batch["available"].bool()
        if self.training and self.sequence_dropout > 0:
            available = drop_sequences(available, self.sequence_dropout)
        logits = self.logits(image, available)
        label = torch.as_tensor(batch["label"], device=logits.device).long()
        loss = F.cross_entropy(
            logits.float(),
            label,
            weight=self.class_weights.to(logits.device),
            ignore_index=-1,
            label_smoothing=self.label_smoothing,
        )
        labelled = label >= 0
        if not bool(labelled.any()):
            loss = logits.sum() * 0.0  # keep the graph (DDP) but add nothing
        acc = (logits.argmax(1) == label)[labelled].float().mean() if bool(labelled.any()) else loss.detach()
        return {"loss": loss, "acc": acc.detach(), "logits": logits.detach()}

    @torch.no_grad()
    def predict_proba(self, image: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, K) in eval mode (restores the previous mode)."""
        was = self.training
        self.eval()
        try:
            return torch.softmax(self.logits(image, available.bool()).float(), dim=1)
        finally:
            self.train(was)

    def checkpoint_config(self) -> dict[str, Any]:
        """The architecture part of a checkpoint ``config.json`` (encoder, head, class vocabulary)."""
        return {
            "architecture": self.architecture,
            "encoder": self.encoder.config.to_dict(),
            "head": self.head.config(),
            "classes": list(self.classes),
            "sequence_dropout": self.sequence_dropout,
            "label_smoothing": self.label_smoothing,
        }


def remap_mask(mask: torch.Tensor, other_lesion_as: int = 2) -> torch.Tensor:
    """Manifest label map -> segmentation target {0, 1, 2}: label 3 (other lesions) -> ``other_lesion_as``."""
    mask = mask.long()
    return torch.where(mask == 3, torch.full_like(mask, other_lesion_as), mask).clamp(0, 2)


class Segmenter(nn.Module):
    """Encoder + :class:`SegmentationHead` trained with MONAI ``DiceCELoss``.

    Args:
        encoder: A :class:`mrfound.models.encoder.MultiSequenceViT`.
        head: The segmentation head (its ``skip_layers`` name encoder blocks).
        sequence_dropout: Training-time probability of removing each available sequence (>= 1 kept).
        class_weights: Optional (3,) cross-entropy weights.
        labels: Output label names.
    """

    architecture = "segmenter"

    def __init__(
        self,
        encoder: nn.Module,
        head: SegmentationHead,
        sequence_dropout: float = 0.0,
        class_weights: Sequence[float] | None = None,
        labels: Sequence[str] = SEGMENTATION_LABELS,
    ) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.encoder, self.head = encoder, head
        self.sequence_dropout = float(sequence_dropout)
        self.labels = tuple(labels)
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.loss_fn = DiceCELoss(
            to_onehot_y=True, softmax=True, include_background=True, batch=True, weight=weight
        )
        # class weights are a training setting, not model state: kept out of the state dict (they would
        # also be three tensors sharing memory, which safetensors refuses to save)
        for m in self.loss_fn.modules():
            for name, buf in list(m.named_buffers(recurse=False)):
                m.register_buffer(name, buf, persistent=False)

    @property
    def roi_size(self) -> tuple[int, int, int]:
        """Input window (D, H, W) of the encoder."""
        return tuple(self.encoder.config.img_shape)  # type: ignore[return-value]

    def logits(self, image: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (B, num_classes, D, H, W) for ROI-sized input."""
        with EncoderHooks(self.encoder.blocks, self.head.skip_layers) as hooks:
            out = self.encoder(image, available)
        hidden = [hooks.outputs[i] for i in self.head.skip_layers]
        return self.head(image, available, hidden, out["tokens"], out["valid"], out["pos_idx"])

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Training protocol: ``loss`` (DiceCE on labels {0,1,2}, label 3 -> lesion), ``dice_fg``."""
        image, available = batch["image"], batch["available"].bool()
        if "mask" not in batch or batch["mask"] is None:
            raise ConfigError("segmentation training needs a 'mask' in every batch (manifest column 'mask')")
        if self.training and self.sequence_dropout > 0:
            available = drop_sequences(available, self.sequence_dropout)
        logits = self.logits(image, available)
        target = remap_mask(batch["mask"]).to(logits.device)
        loss = self.loss_fn(logits.float(), target)
        with torch.no_grad():
            pred = logits.argmax(1, keepdim=True)
            fg_t, fg_p = target > 0, pred > 0
            dice_fg = 2 * (fg_t & fg_p).sum() / (fg_t.sum() + fg_p.sum()).clamp_min(1)
        return {"loss": loss, "dice_fg": dice_fg.float()}

    @torch.no_grad()
    def segment(
        self,
        image: torch.Tensor,
        available: torch.Tensor,
        roi_size: Sequence[int] | None = None,
        overlap: float | None = 0.25,
        sw_batch_size: int = 2,
        mode: str = "gaussian",
        return_probs: bool = False,
        mirror: bool = False,
    ) -> torch.Tensor:
        """Segment whole volumes by MONAI sliding-window inference.

        Args:
            image: (B, S, D, H, W) volumes of any size (padded when smaller than the window).
            available: (B, S) bool.
            roi_size: Window (default: the encoder's ROI; must equal it since the position grid is fixed).
            overlap: Window overlap fraction; None: :func:`mrfound.inference.default_overlap` (windows
                half a patch apart, the default of ``mrfound predict``).
            sw_batch_size: Windows per forward.
            mode: Blending (``"gaussian"`` or ``"constant"``).
            return_probs: Return softmax probabilities (B, K, D, H, W) instead of labels.
            mirror: Average the probabilities over the 8 mirrorings of each volume
                (:func:`mrfound.utils.tta.mirror_average`; 8x the inference time). Only for a head
                trained on mirrored crops: mrfound's fine-tuning does not mirror (anatomy is lateral), and
                on CHAOS mirrored inference dropped liver Dice to 0.13 (benchmarks/chaos_segmentation.py).

        Returns:
            Labels (B, 1, D, H, W) int64 in {0, 1, 2}, or probabilities.
        """
        from monai.inferers import sliding_window_inference

        roi = tuple(roi_size or self.roi_size)
        if roi != self.roi_size:
            raise ConfigError(f"roi_size {roi} must equal the encoder ROI {self.roi_size}")
        if overlap is None:
            from mrfound.inference import default_overlap  # lazy: inference imports this module

            overlap = default_overlap(min(roi), self.encoder.config.patch_size)
        was = self.training
        self.eval()
        try:
            outs = []
            for i in range(image.shape[0]):  # availability differs per case; windows of one case share it
                avail = available[i : i + 1].bool()

                def predictor(x: torch.Tensor, avail: torch.Tensor = avail) -> torch.Tensor:
                    return torch.softmax(self.logits(x, avail.expand(x.shape[0], -1)).float(), dim=1)

                def window(x: torch.Tensor, predictor: Any = predictor) -> torch.Tensor:
                    return sliding_window_inference(
                        x, roi, sw_batch_size, predictor, overlap=overlap, mode=mode
                    )

                case = image[i : i + 1]
                outs.append(mirror_average(window, case) if mirror else window(case))
            probs = torch.cat(outs)
        finally:
            self.train(was)
        return probs if return_probs else probs.argmax(1, keepdim=True)

    def checkpoint_config(self) -> dict[str, Any]:
        """The architecture part of a checkpoint ``config.json`` (encoder, head, output labels)."""
        return {
            "architecture": self.architecture,
            "encoder": self.encoder.config.to_dict(),
            "head": self.head.config(),
            "labels": list(self.labels),
            "sequence_dropout": self.sequence_dropout,
        }


def make_segmentation_head(
    encoder: nn.Module, num_classes: int = 3, feature_size: int = 16, **kwargs: Any
) -> SegmentationHead:
    """A :class:`SegmentationHead` matching an encoder's config."""
    cfg = encoder.config
    return SegmentationHead(
        cfg.embed_dim,
        cfg.patch_size,
        cfg.grid_size,
        cfg.num_sequences,
        cfg.depth,
        num_classes=num_classes,
        feature_size=feature_size,
        **kwargs,
    )


def make_classification_head(
    encoder: nn.Module, num_classes: int, pooling: str = "centre_per_sequence", **kwargs: Any
) -> ClassificationHead:
    """A :class:`ClassificationHead` matching an encoder's width (and sequence vocabulary); per-sequence
    central pooling unless ``pooling`` says otherwise (the default of ``mrfound finetune``)."""
    kwargs["pooling"] = pooling
    if pooling == "centre_per_sequence":
        kwargs.setdefault("num_sequences", encoder.config.num_sequences)
    return ClassificationHead(encoder.config.embed_dim, num_classes, **kwargs)


def _encoder_from_config(cfg: Mapping[str, Any]) -> nn.Module:
    from mrfound.models.config import EncoderConfig
    from mrfound.models.encoder import MultiSequenceViT

    return MultiSequenceViT(EncoderConfig.from_dict(cfg["encoder"]))


def build_classifier(cfg: Mapping[str, Any]) -> Classifier:
    """Rebuild a :class:`Classifier` (random weights) from a checkpoint config."""
    head = build_head(cfg["head"])
    return Classifier(
        _encoder_from_config(cfg),
        head,
        classes=cfg["classes"],  # type: ignore[arg-type]
        sequence_dropout=float(cfg.get("sequence_dropout", 0.0)),
        label_smoothing=float(cfg.get("label_smoothing", 0.0)),
    )


def build_segmenter(cfg: Mapping[str, Any]) -> Segmenter:
    """Rebuild a :class:`Segmenter` (random weights) from a checkpoint config."""
    head = build_head(cfg["head"])
    return Segmenter(
        _encoder_from_config(cfg),
        head,  # type: ignore[arg-type]
        sequence_dropout=float(cfg.get("sequence_dropout", 0.0)),
        labels=tuple(cfg.get("labels", SEGMENTATION_LABELS)),
    )


def _register() -> None:
    from mrfound.models.checkpoint import ARCHITECTURES, register_architecture

    for name, builder in (
        (Classifier.architecture, build_classifier),
        (Segmenter.architecture, build_segmenter),
    ):
        if name not in ARCHITECTURES:
            register_architecture(name, builder)


_register()


def layer_id(name: str, depth: int) -> int:
    """Layer index of an encoder-wrapper parameter for layer-wise LR decay (BEiT/MAE convention).

    Embeddings (patch projection, sequence embedding) are layer 0, block ``i`` is ``i + 1``, and
    everything else (final norm, heads) is ``depth + 1``.
    """
    if name.startswith("encoder."):
        rest = name[len("encoder.") :]
        if rest.startswith(("patch_embed", "seq_embed", "pos_embed")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return depth + 1


def param_groups_layer_decay(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 0.75,
    no_weight_decay: Sequence[str] = ("encoder.seq_embed",),
) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise learning-rate decay (BEiT / MAE fine-tuning recipe).

    Each group carries ``lr_scale = layer_decay ** (depth + 1 - layer_id)`` (the shared
    :class:`mrfound.pretrain.trainer.Trainer` multiplies it by ``config.lr``), so the head trains at
    the full rate and the patch embedding at ``layer_decay ** (depth + 1)`` of it. Biases, norms
    (1-D parameters) and the names in ``no_weight_decay`` get no weight decay; frozen parameters are
    left out.

    Args:
        model: A :class:`Classifier` or :class:`Segmenter` (needs ``model.encoder.config.depth``).
        weight_decay: Decoupled weight decay.
        layer_decay: Decay per layer towards the input; 1 disables it.
        no_weight_decay: Parameter names without weight decay.
    """
    depth = int(model.encoder.config.depth)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim == 1 or name.endswith(".bias") or name in no_weight_decay)
        lid = layer_id(name, depth)
        if (lid, decay) not in groups:
            groups[(lid, decay)] = {
                "params": [],
                "lr_scale": float(layer_decay ** (depth + 1 - lid)),
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[(lid, decay)]["params"].append(p)
    return [groups[k] for k in sorted(groups)]
