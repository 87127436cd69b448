"""Configuration dataclasses of the encoder and the masked-modality autoencoder (DESIGN §4).

Both are plain frozen dataclasses that round-trip through JSON (``to_dict`` / ``from_dict``) because
they are stored in every checkpoint's ``config.json``. Construction validates every field and raises
:class:`mrfound.errors.ConfigError` with one line naming the field and the problem.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mrfound.data.sequences import SEQUENCES
from mrfound.errors import ConfigError

_C = TypeVar("_C", bound="_ConfigBase")

EMBED_POOLING = ("mean", "centre", "centre_per_sequence")
"""Token poolings of ``MultiSequenceViT.embed`` (features for probes and ``extract_features``)."""
MASK_MODES = ("random", "tube")
"""How :class:`MAEConfig` draws the hidden tokens: per token, or per position across sequences."""
EMBED_ABSENT = ("drop", "impute")
"""What feature extraction does with a case's absent sequences: no tokens (``drop``), or synthesised by
the autoencoder's decoder first (``impute``; ``MaskedModalityAutoencoder.complete``)."""
HEAD_POOLING = ("mean", "centre", "centre_per_sequence", "attention")
"""Token poolings of the fine-tuned ``ClassificationHead``. The options live here, torch-free, for the CLI."""
SKIP_SOURCES = ("tokens", "image")
"""Sources of the ``SegmentationHead``'s intermediate skips: encoder blocks (UNETR) or a conv pyramid."""


def _as_triple(value: Any, name: str) -> tuple[int, int, int]:
    """Accept an int or a 3-sequence of positive ints (JSON gives lists)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an int or 3 ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value, value)
    try:
        triple = tuple(value)
    except TypeError:
        raise ConfigError(f"{name} must be an int or 3 ints, got {value!r}") from None
    if len(triple) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in triple):
        raise ConfigError(f"{name} must be a positive int or 3 positive ints, got {value!r}")
    return triple  # type: ignore[return-value]


def _check_int(obj: Any, name: str, low: int = 1) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{type(obj).__name__}.{name} must be an int >= {low}, got {v!r}")


def _check_float(
    obj: Any, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{type(obj).__name__}.{name} must be a number, got {v!r}")
    too_low = v <= low if low_open else v < low
    too_high = v >= high if high_open else v > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{type(obj).__name__}.{name} must be in {lo}{low}, {high}{hi}, got {v!r}")
    object.__setattr__(obj, name, float(v))


def _check_bool(obj: Any, name: str) -> None:
    v = getattr(obj, name)
    if not isinstance(v, bool):
        raise ConfigError(f"{type(obj).__name__}.{name} must be true or false, got {v!r}")


class _ConfigBase:
    """JSON round-trip shared by the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls: type[_C], d: Mapping[str, Any]) -> _C:
        """Build from a dict as written by :meth:`to_dict`; unknown keys raise ``ConfigError``.

        Missing keys take the defaults, so configs written by older versions that lacked a newer
        optional field still load.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{cls.__name__} must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(**dict(d))

    def replace(self: _C, **changes: Any) -> _C:
        """Copy with some fields changed (validated); unknown names raise ``ConfigError``."""
        names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(
                f"unknown {type(self).__name__} key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class EncoderConfig(_ConfigBase):
    """Multi-sequence 3D ViT encoder.

    Args:
        img_size: ROI size in voxels, an int (cube) or (D, H, W).
        patch_size: Edge of the cubic patches; must divide every ``img_size`` entry.
        sequences: The sequence vocabulary (one learned sequence embedding each), in channel order.
        embed_dim: Token width.
        depth: Number of transformer blocks.
        num_heads: Attention heads; must divide ``embed_dim``.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        qkv_bias: Bias in the attention's QKV projection (MAE uses it).
        drop_path_rate: Stochastic depth at the last block (linearly increasing from 0).
        seq_embed_std: Init std of the learned sequence embeddings (timm ``trunc_normal_``, cut at +-2).
            MAE's 0.02 leaves them ~30x smaller than the sin-cos position embedding, so tokens (and the
            decoder's mask tokens, see ``MAEConfig.decoder_seq_embed_std``) barely say which sequence
            they are at the start of training; 0.5 matches the position embedding's scale.
    """

    img_size: int | tuple[int, int, int] = 64
    patch_size: int = 16
    sequences: tuple[str, ...] = SEQUENCES
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    seq_embed_std: float = 0.02

    def __post_init__(self) -> None:
        img = _as_triple(self.img_size, "EncoderConfig.img_size")
        # keep an int when the ROI is a cube so configs stay readable
        object.__setattr__(self, "img_size", img[0] if len(set(img)) == 1 else img)
        for name in ("patch_size", "embed_dim", "depth", "num_heads"):
            _check_int(self, name)
        bad = [s for s in img if s % self.patch_size]
        if bad:
            raise ConfigError(
                f"EncoderConfig.patch_size {self.patch_size} must divide img_size {self.img_size}"
            )
        if isinstance(self.sequences, str) or not all(isinstance(s, str) and s for s in self.sequences):
            raise ConfigError(f"EncoderConfig.sequences must be a list of names, got {self.sequences!r}")
        seqs = tuple(self.sequences)
        if not seqs or len(set(seqs)) != len(seqs):
            raise ConfigError(f"EncoderConfig.sequences must be non-empty and unique, got {list(seqs)}")
        object.__setattr__(self, "sequences", seqs)
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"EncoderConfig.num_heads {self.num_heads} must divide embed_dim {self.embed_dim}"
            )
        _check_float(self, "mlp_ratio", 0.0, 64.0, low_open=True)
        _check_float(self, "drop_path_rate", 0.0, 1.0, high_open=True)
        _check_float(self, "seq_embed_std", 0.0, 10.0, low_open=True)
        _check_bool(self, "qkv_bias")

    @property
    def img_shape(self) -> tuple[int, int, int]:
        """ROI shape (D, H, W) in voxels."""
        return _as_triple(self.img_size, "img_size")

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Patch grid (gd, gh, gw)."""
        return tuple(s // self.patch_size for s in self.img_shape)  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        """Tokens per sequence."""
        gd, gh, gw = self.grid_size
        return gd * gh * gw

    @property
    def patch_volume(self) -> int:
        """Voxels per patch (p^3), the input width of the patch projection."""
        return self.patch_size**3

    @property
    def num_sequences(self) -> int:
        """Size of the sequence vocabulary."""
        return len(self.sequences)


@dataclass(frozen=True)
class MAEConfig(_ConfigBase):
    """Masked-modality autoencoder (pretraining) on top of an :class:`EncoderConfig`.

    Args:
        decoder_dim: Decoder token width.
        decoder_depth: Decoder blocks.
        decoder_heads: Decoder attention heads; must divide ``decoder_dim``.
        decoder_mlp_ratio: Decoder MLP ratio.
        mask_ratio: Fraction of the kept sequences' tokens hidden from the encoder, in (0, 1).
        sequence_drop: Largest fraction of a sample's available sequences dropped whole; the number
            dropped is uniform in ``0 .. min(A - 1, floor(sequence_drop * A))`` for A available
            sequences, so at least one is always kept. 0 disables whole-sequence dropout.
        single_drop_prob: Probability that a sample drops exactly one sequence instead (when it has two
            or more available): the imputation regime, one sequence synthesised from all the others.
            With the uniform count alone a dropped sequence is rarely synthesised from every other one
            (with 8 sequences and ``sequence_drop`` 0.75, 1 in 21 dropped targets). 0 = off, the uniform
            count only (and no extra random draw, so older runs replay exactly). On the 240-case phantom
            imputation benchmark 0.8 added 0.09 dB mean liver PSNR to ``source_features`` 16 but did not
            close t1_art, nor remove its liver offset at seven sources (README; ``mrfound.models.mae``).
        mask_mode: How the hidden tokens of the kept sequences are drawn. ``"random"``: independently
            per (sequence, position) token, so a position hidden in one sequence is usually visible in
            another and can be filled in by translating its contrast. ``"tube"``: one set of positions per
            sample, hidden in every kept sequence alike (VideoMAE's tube masking across frames, here across
            sequences), so a hidden position must be inferred from the spatial context; whole dropped
            sequences still train the cross-sequence synthesis. Visible count as in ``"random"`` (the
            ``1 - mask_ratio`` of the positions, rounded, at least one, times the kept sequences). On the
            phantom ``"tube"`` lowered the probes and fine-tuning in two pretraining seeds: telling lesions
            apart rests on the contrast change between sequences at one place, which ``"random"`` teaches.
        dirichlet_alpha: If set, the visible tokens are split across the kept sequences with
            proportions drawn from Dirichlet(alpha) (MultiMAE); ``None`` = uniform over all kept tokens.
            Needs ``mask_mode="random"``.
        norm_pix_loss: Targets are per-patch normalised voxels (MAE). The decoder then also predicts
            each hidden patch's mean and std (a 2-output "stats" head) so that :meth:`reconstruct`
            can return intensities; see ``mrfound.models.mae``.
        stats_loss_weight: Weight of the patch mean/std regression in ``loss`` (norm-pix only).
        max_decoded: Cap on the hidden tokens decoded per sample (a random subset); ``None`` = all.
        decoder_seq_embed_std: Init std of the decoder's sequence embeddings, the only thing that tells
            a mask token which sequence to synthesise (see ``EncoderConfig.seq_embed_std``).
        source_mixing: Add to each predicted patch a mix of the co-located patches of the source
            sequences (the sequences not dropped, the target's own excluded) and a constant, weighted
            by a learned (target sequence x source) table plus a linear layer of the decoder token. The
            token bottleneck then carries the contrast mapping, not every voxel, so syntheses keep the
            sources' anatomy (see ``mrfound.models.mae``). Costs one (targets x S x p^3) gather per
            step. Needs ``norm_pix_loss=False``.
        source_set_mixing: Let the source-mix weights depend on which sources are present: a
            (target, present source, weight) table adds, for each source present, its own shift to every
            weight, so the mix suits one source and seven alike. Needs ``source_mixing``. Measured worse
            on the phantom imputation benchmark (README), hence off.
        source_features: Width H of a per-voxel hidden layer added to the source mix (0 = off): each
            synthesised voxel adds ``sum_h u_h gelu(W v + c_h)``, ``v`` the voxel's source values and
            ``u``, ``c`` linear maps of the decoder token, so the contrast map can be non-linear and
            differ between tissues inside one patch (a vessel and the parenchyma around it). Costs
            about ``targets x p^3 x S x H`` multiply-adds per step. Needs ``source_mixing``.
        consistency_weight: Weight of the cross-view consistency term (0 = off, the design's objective):
            the mean-pooled encoder features of the training view (sequences dropped, patches masked)
            regress on a stop-gradient *full view* of the same case (every available sequence, patches
            masked at the same ratio), each view's batch centred and scaled by its own spread between
            cases, so that a case's features move less when sequences are missing. Costs one extra
            gradient-free encoder pass per step. 0.01 was measured on the phantom (0.1 stalls the
            reconstruction loss). See ``mrfound.models.mae``.
    """

    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    mask_mode: str = "random"
    sequence_drop: float = 0.5
    single_drop_prob: float = 0.0
    dirichlet_alpha: float | None = None
    norm_pix_loss: bool = True
    stats_loss_weight: float = 1.0
    max_decoded: int | None = None
    decoder_seq_embed_std: float = 0.02
    source_mixing: bool = False
    source_set_mixing: bool = False
    source_features: int = 0
    consistency_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("decoder_dim", "decoder_depth", "decoder_heads"):
            _check_int(self, name)
        if self.decoder_dim % self.decoder_heads:
            raise ConfigError(
                f"MAEConfig.decoder_heads {self.decoder_heads} must divide decoder_dim {self.decoder_dim}"
            )
        _check_float(self, "decoder_mlp_ratio", 0.0, 64.0, low_open=True)
        _check_float(self, "mask_ratio", 0.0, 1.0, low_open=True, high_open=True)
        if self.mask_mode not in MASK_MODES:
            raise ConfigError(
                f"MAEConfig.mask_mode must be one of {', '.join(MASK_MODES)}, got {self.mask_mode!r}"
            )
        if self.mask_mode == "tube" and self.dirichlet_alpha is not None:
            raise ConfigError(
                "MAEConfig.dirichlet_alpha needs mask_mode=random (tube masks positions, not tokens)"
            )
        _check_float(self, "sequence_drop", 0.0, 1.0)
        _check_float(self, "single_drop_prob", 0.0, 1.0)
        if self.dirichlet_alpha is not None:
            _check_float(self, "dirichlet_alpha", 0.0, 1e6, low_open=True)
        _check_bool(self, "norm_pix_loss")
        _check_float(self, "stats_loss_weight", 0.0, 1e6)
        _check_float(self, "decoder_seq_embed_std", 0.0, 10.0, low_open=True)
        _check_bool(self, "source_mixing")
        _check_float(self, "consistency_weight", 0.0, 1e6)
        if self.source_mixing and self.norm_pix_loss:
            raise ConfigError(
                "MAEConfig.source_mixing needs norm_pix_loss=false (it mixes raw source voxels)"
            )
        _check_bool(self, "source_set_mixing")
        _check_int(self, "source_features", low=0)
        for name in ("source_set_mixing", "source_features"):
            if getattr(self, name) and not self.source_mixing:
                raise ConfigError(f"MAEConfig.{name} needs source_mixing=true (it extends the source mix)")
        if self.max_decoded is not None:
            _check_int(self, "max_decoded")
