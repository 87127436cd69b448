"""Masked-modality autoencoder for self-supervised pretraining (DESIGN §4).

Per sample (all randomness from ``generator``, or torch's global RNG when it is None, so the trainer's
RNG-state checkpointing makes resumed runs exact):

1. **Sequence dropout.** Of the A available sequences, ``k`` whole sequences are dropped, ``k``
   uniform in ``0 .. min(A - 1, floor(sequence_drop * A))``: at least one sequence is always kept.
   With probability ``single_drop_prob`` a sample with A >= 2 drops exactly one instead (the
   imputation regime).
2. **Patch masking.** Of the T tokens of the kept sequences, ``V = clamp(floor((1 - mask_ratio) * T
   + 0.5), 1, T)`` are visible: uniformly over all kept tokens, or split across the kept sequences
   with Dirichlet(``dirichlet_alpha``) proportions (MultiMAE; quotas capped at L tokens per sequence
   and rounded by largest remainder so they sum to V). With ``mask_mode="tube"`` one set of positions is
   visible in every kept sequence instead (VideoMAE's tube masking, across sequences).
3. The encoder sees only the visible tokens (packed, see :mod:`mrfound.models.layers`).
4. The light decoder gets the encoded visible tokens (projected to ``decoder_dim``, plus decoder
   sequence and position embeddings) and one mask token per *target* (mask token + sequence +
   position embedding). Targets are every hidden token of every available sequence, the dropped
   sequences included (or a random ``max_decoded`` of them per sample).
5. Loss: MSE per target patch on per-patch normalised voxels (``norm_pix_loss``, MAE) or on the raw
   (already per-sequence normalised) voxels, averaged over the hidden patches only. It is reported
   separately for patches of kept sequences (``loss_inpaint``) and of dropped ones (``loss_synth``).

**Intensities from norm-pix predictions (imputation).** A norm-pix prediction fixes a patch's shape
but not its offset and scale, which are unknown for a missing sequence. So a norm-pix model also has
a 2-output linear *stats head* on the same decoder tokens that regresses each target patch's mean and
std (``sqrt(var + 1e-6)``, the same std the normalisation divides by); ``loss`` adds this regression
weighted by ``stats_loss_weight`` (logged as ``loss_stats``). :meth:`reconstruct` returns
``pred * std_hat + mean_hat``. With ``norm_pix_loss=False`` the decoder predicts voxels directly and
no stats head exists. This keeps the MAE objective, costs one tiny Linear, and is honest: every
intensity returned is a model prediction, never borrowed from the hidden ground truth.

**Source mixing (option, for imputation).** A decoder token of ``decoder_dim`` values cannot carry the
p^3 voxels of a patch, so a synthesised sequence loses the anatomy the sources show voxel by voxel (in a
check on the phantom a least-squares per-voxel linear map of the sources scored ~3 dB above the plain
decoder). With ``source_mixing`` the prediction of a target patch is ``decoder_pred(x) + sum_s w_s *
source_s + w_0``: the co-located patches of the *source* sequences (not dropped; the target's own
sequence never, so a target is never copied from itself) and a constant offset, weighted by a learned
table per (target sequence, source), i.e. a global contrast map, plus a linear layer of the decoder
token that adapts it to the context (both zero-initialised, so training starts from the plain decoder).
The sources' hidden patches are readable by this head, as they are at imputation time when every source
voxel is known; the encoder still sees only the visible tokens.

**Source-set mixing (option, ``source_set_mixing``).** The mixing weights above do not depend on how many
sources there are, but the right weights do: a model trained with whole-sequence dropout fits a mix of a
few sources, and with every other sequence present (as in imputation) it adds too much of them. On the
phantom, a 60-case imputation model (the recipe with a 256-wide decoder) synthesised the arterial liver
0.016 too dark from one source and 0.012-0.016 too bright from six or seven. This adds a
zero-initialised (target, present source, weight) table, so each source present moves each weight (a
second-order contrast map). Measured on the 240-case phantom benchmark it did not calibrate the count:
the offset at three to six sources grew and the mean liver PSNR fell (README); kept, off, as the record.
Nor did training in the imputation regime (``single_drop_prob``): with 80 % of the samples dropping one
sequence the arterial liver still came out +0.022 too bright from seven sources, so the source count is not
the main cause of that offset (README).

**Per-voxel source features (option, ``source_features`` H > 0).** The mix above weighs a whole source patch
alike, so inside one patch it maps every tissue with the same weights: a hepatic vein bright in the portal
phase and dark in the arterial one pulls the arterial synthesis of the parenchyma around it up. This adds
one hidden layer per voxel over the voxel's source values, ``sum_h u_h gelu(W v + c_h)``, whose biases ``c``
and output weights ``u`` are linear maps of the decoder token (``u`` zero-initialised): a non-linear contrast
map that the context sets and that separates tissues voxel by voxel.

**Cross-view consistency (option, ``consistency_weight > 0``).** The reconstruction loss asks the encoder
to carry what a *decoder* needs to fill in dropped sequences, not that a case's *features* stay put when
sequences go missing, which is what a probe fitted on complete exams needs at test time. So the mean of the
encoded training-view tokens (sequences dropped, patches masked) regresses on the mean of a second,
gradient-free *full view* of the same case: every available sequence, a fresh patch mask at the same ratio
(so it costs one extra forward pass of about as many tokens, no backward). Each view's batch of pooled
features is centred and divided by its own RMS spread between cases, the training view's with the gradient,
so the term compares how the cases lie relative to one another and cannot be lowered by shrinking that
spread. (Dividing both by the full view's spread, a constant to the gradient, let the term rise and the
reconstruction loss stall from step 300 on the phantom at weight 0.01 and 0.001; with a negligible weight
the reconstruction followed the plain run.) With each view's own spread, weight 0.01 leaves the
reconstruction loss on the plain run's curve and 0.1 stalls it too (``results/consistency_term/``).
Stop-gradient target from the current weights, as in data2vec / BYOL but without their EMA teacher and
predictor.

Lightly's masking helpers were read and judged: ``random_token_mask`` draws one fixed ``num_keep`` for
the whole batch from the global RNG, over a fixed-length token axis, so it cannot express per-sample
sequence availability, whole-sequence dropout or an explicit generator; the masks here are therefore
drawn by rank-of-noise directly. Lightly's ``set_at_index`` is used to scatter packed predictions back
onto the token grid (:func:`mrfound.models.layers.scatter_tokens`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from mrfound.data.sequences import Vocabulary
from mrfound.errors import MrfoundError
from mrfound.models.config import EncoderConfig, MAEConfig
from mrfound.models.encoder import (
    LayerNorm,
    MultiSequenceViT,
    init_mae_weights,
    make_blocks,
    run_blocks,
)
from mrfound.models.layers import gather_patches, pack_tokens, scatter_tokens, sincos_pos_embed_3d, unpatchify

NORM_EPS = 1e-6
"""Added to the patch variance before the square root (MAE's norm-pix epsilon)."""


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """(B, C) features centred on the batch mean and divided by one scale, their RMS spread between cases
    (for a batch of one: centred and scaled over the features)."""
    x = x - (x.mean(dim=0, keepdim=True) if x.shape[0] > 1 else x.mean())
    return x / torch.sqrt(x.square().mean() + NORM_EPS)


def _ranks(noise: torch.Tensor) -> torch.Tensor:
    """Rank of each entry along the last axis (0 = smallest)."""
    return torch.argsort(torch.argsort(noise, dim=-1), dim=-1)


def _lowest(noise: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(B, S, L) bool: the ``count[b]`` entries of each sample with the lowest noise, over all its tokens."""
    b, s, n = noise.shape
    return _ranks(noise.reshape(b, s * n)).reshape(b, s, n) < count.view(b, 1, 1)


def sample_gamma(
    alpha: torch.Tensor, generator: torch.Generator | None = None, max_rounds: int = 64
) -> torch.Tensor:
    """Gamma(alpha, 1) samples with an optional explicit generator (Marsaglia-Tsang).

    ``torch.distributions.Gamma`` cannot take a generator; this keeps the Dirichlet split reproducible
    from the same RNG as the rest of the masking.

    Args:
        alpha: Positive shape parameters (any shape).
        generator: Torch generator on ``alpha``'s device, or None for the global RNG.
        max_rounds: Rejection rounds (each accepts > 95 % of the remaining draws).

    Returns:
        Float64 tensor of ``alpha``'s shape.
    """
    alpha = alpha.to(torch.float64)
    boost = alpha < 1
    a = torch.where(boost, alpha + 1, alpha)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.ones_like(a)
    done = torch.zeros_like(a, dtype=torch.bool)
    kw = {"generator": generator, "device": a.device, "dtype": torch.float64}
    for _ in range(max_rounds):
        x = torch.randn(a.shape, **kw)
        u = torch.rand(a.shape, **kw)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out = torch.where(ok & ~done, d * v, out)
        done = done | ok
        if bool(done.all()):
            break
    u = torch.rand(a.shape, **kw)
    return torch.where(boost, out * u.clamp_min(1e-300) ** (1.0 / alpha), out)


def dirichlet_quotas(weights: torch.Tensor, total: torch.Tensor, cap: int) -> torch.Tensor:
    """Split ``total`` tokens across sequences in proportion to ``weights``, at most ``cap`` each.

    Overflow above the cap is re-distributed proportionally among the uncapped sequences (water
    filling), then the real-valued quotas are rounded by largest remainder so they sum to ``total``.

    Args:
        weights: (B, S) non-negative proportions (zero for sequences that cannot receive tokens).
        total: (B,) integers with ``total <= cap * (number of positive weights)``.
        cap: Tokens per sequence (L).

    Returns:
        (B, S) long quotas.
    """
    w = weights.to(torch.float64)
    eligible = w > 0
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-300)
    tot = total.to(torch.float64)
    q = w * tot.unsqueeze(1)
    for _ in range(w.shape[1]):
        over = (q - cap).clamp_min(0)
        if not bool((over > 1e-9).any()):
            break
        capped = q >= cap - 1e-9
        q = q.clamp_max(cap)
        free = eligible & ~capped
        share = torch.where(free, w, torch.zeros_like(w))
        share_sum = share.sum(dim=1, keepdim=True)
        # all-zero shares among the free sequences (weights underflowed): split evenly
        even = free.to(torch.float64) / free.sum(dim=1, keepdim=True).clamp_min(1)
        share = torch.where(share_sum > 0, share / share_sum.clamp_min(1e-300), even)
        q = q + share * over.sum(dim=1, keepdim=True)
    q = q.clamp(0, cap)
    base = torch.floor(q + 1e-9).long()
    remainder = (total.long() - base.sum(dim=1)).clamp_min(0)
    frac = torch.where(eligible & (base < cap), q - base, torch.full_like(q, -1.0))
    rank = _ranks(-frac)
    return base + (rank < remainder.unsqueeze(1)).long()


VOXEL_IN_GAIN = 10.0
"""Scale of the source voxels entering the per-voxel hidden layer (``source_features``). Normalised
intensities span about 0..1 and tissues differ by 0.1-0.5, so at Xavier init the GELU units would be
nearly linear over that range and a kink between two tissues would take thousands of steps to grow; with
the gain the initial units already bend within it (the step-shaped toy map of ``tests/models/test_mae.py``,
300 steps: MSE 0.155 with the gain, 0.251 without, 0.25 for the best linear map;
``results/imputation_source_count/voxel_toy_and_step_time.py``)."""
VOXEL_GAIN = 5.0
"""Scale of the token-made output weights of the per-voxel features (zero-initialised), for the same
reason as :data:`MIX_TABLE_GAIN`."""
MIX_TABLE_GAIN = 20.0
"""Scale of the source-mixing table in the forward pass. AdamW moves a parameter by about the learning
rate per step whatever its gradient, so an unscaled table of weights of order 1 would take thousands of
steps at 5e-4; the gain gives it a 20x larger effective learning rate."""


class MaskedModalityAutoencoder(nn.Module):
    """Encoder + light decoder trained by whole-sequence dropout and patch masking.

    Args:
        encoder_config: Encoder configuration (also defines the sequence vocabulary and ROI).
        mae_config: Decoder, masking and loss configuration.

    Training protocol: ``model(batch)`` with the collated dict (``image`` (B, S, D, H, W),
    ``available`` (B, S) bool) returns a dict of scalar tensors: ``loss`` (to backpropagate),
    ``loss_recon`` (pixel MSE over all hidden patches), ``loss_inpaint`` (masked patches of kept
    sequences), ``loss_synth`` (patches of dropped sequences), ``loss_stats`` (patch mean/std
    regression, norm-pix only), ``loss_consistency`` (cross-view consistency, only with
    ``consistency_weight > 0``), ``n_inpaint`` and ``n_synth`` (how many patches each partial loss
    averages; a partial loss is 0 when its count is 0).
    """

    architecture = "masked_modality_autoencoder"

    def __init__(self, encoder_config: EncoderConfig, mae_config: MAEConfig | None = None) -> None:
        super().__init__()
        mae_config = mae_config or MAEConfig()
        self.config = mae_config
        self.encoder_config = encoder_config
        self.encoder = MultiSequenceViT(encoder_config)
        cd = mae_config.decoder_dim
        self.decoder_embed = nn.Linear(encoder_config.embed_dim, cd)
        self.mask_token = nn.Parameter(torch.zeros(1, cd))
        self.decoder_seq_embed = nn.Parameter(torch.zeros(encoder_config.num_sequences, cd))
        self.register_buffer(
            "decoder_pos_embed", sincos_pos_embed_3d(encoder_config.grid_size, cd), persistent=False
        )
        self.decoder_blocks = make_blocks(
            cd,
            mae_config.decoder_depth,
            mae_config.decoder_heads,
            mae_config.decoder_mlp_ratio,
            qkv_bias=True,
        )
        self.decoder_norm = LayerNorm(cd)
        self.decoder_pred = nn.Linear(cd, encoder_config.patch_volume)
        self.decoder_stats = nn.Linear(cd, 2) if mae_config.norm_pix_loss else None
        s = encoder_config.num_sequences
        # per-token weights of the S sources and of a constant patch (an intensity offset) ...
        self.decoder_mix = nn.Linear(cd, s + 1) if mae_config.source_mixing else None
        # ... plus a learned (target sequence x source) table: the global contrast map of each target
        self.decoder_mix_table = nn.Parameter(torch.zeros(s, s + 1)) if mae_config.source_mixing else None
        # ... plus, optionally, a (target x present source x weight) table: how each source that is present
        # moves each weight, so the mix is right whether 1 or 7 sources are there
        self.decoder_mix_pairs = (
            nn.Parameter(torch.zeros(s, s, s + 1)) if mae_config.source_set_mixing else None
        )
        # ... plus, optionally, a per-voxel hidden layer over the source voxels whose biases and output
        # weights come from the decoder token: a non-linear contrast map that can differ voxel by voxel
        h = mae_config.source_features
        self.decoder_voxel_in = nn.Linear(s, h, bias=False) if h else None
        self.decoder_voxel_ctx = nn.Linear(cd, h) if h else None
        self.decoder_voxel_avail = nn.Linear(s, h, bias=False) if h else None
        self.decoder_voxel_out = nn.Linear(cd, h) if h else None
        for module in (
            self.decoder_embed,
            self.decoder_blocks,
            self.decoder_norm,
            self.decoder_pred,
            self.decoder_stats,
            self.decoder_voxel_in,
            self.decoder_voxel_ctx,
            self.decoder_voxel_avail,
        ):
            if module is not None:
                module.apply(init_mae_weights)
        if self.decoder_mix is not None:  # start as the plain decoder; the mix is learned
            nn.init.zeros_(self.decoder_mix.weight)
            nn.init.zeros_(self.decoder_mix.bias)
        if self.decoder_voxel_out is not None:  # the voxel features join the same way, from zero
            nn.init.zeros_(self.decoder_voxel_out.weight)
            nn.init.zeros_(self.decoder_voxel_out.bias)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.decoder_seq_embed, std=mae_config.decoder_seq_embed_std)

    # ------------------------------------------------------------------ bookkeeping
    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay (timm convention)."""
        return {
            "encoder.seq_embed",
            "mask_token",
            "decoder_seq_embed",
            "decoder_mix_table",
            "decoder_mix_pairs",
        }

    def checkpoint_config(self) -> dict[str, Any]:
        """The architecture part of a checkpoint ``config.json``."""
        return {
            "architecture": self.architecture,
            "encoder": self.encoder_config.to_dict(),
            "mae": self.config.to_dict(),
        }

    @property
    def num_patches(self) -> int:
        """Tokens per sequence (L)."""
        return self.encoder_config.num_patches

    # ------------------------------------------------------------------ masking
    def random_masking(
        self, available: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Draw the sequence dropout, the visible tokens and the decoder targets.

        Args:
            available: (B, S) bool.
            generator: Optional torch generator on ``available``'s device (else the global RNG).

        Returns:
            ``dropped`` (B, S) bool (available sequences dropped whole), ``visible`` (B, S, L) bool
            (tokens the encoder sees; only kept sequences), ``target`` (B, S, L) bool (tokens the
            decoder predicts: hidden tokens of available sequences, capped at ``max_decoded``).
        """
        cfg = self.config
        b, s = available.shape
        n = self.num_patches
        dev = available.device
        kw: dict[str, Any] = {"generator": generator, "device": dev}
        available = available.bool()

        # 1. whole-sequence dropout: k uniform in 0..kmax, kmax = min(A - 1, floor(sequence_drop * A))
        n_avail = available.sum(dim=1)
        k_max = torch.minimum(n_avail - 1, torch.floor(cfg.sequence_drop * n_avail.double()).long())
        k_max = k_max.clamp_min(0)
        k = torch.floor(torch.rand(b, dtype=torch.float64, **kw) * (k_max + 1).double()).long()
        k = torch.minimum(k, k_max)
        if cfg.single_drop_prob > 0:
            single = torch.rand(b, dtype=torch.float64, **kw) < cfg.single_drop_prob
            k = torch.where(single & (n_avail >= 2), torch.ones_like(k), k)
        seq_noise = torch.where(available, torch.rand(b, s, **kw), torch.full((b, s), 2.0, device=dev))
        dropped = available & (_ranks(seq_noise) < k.unsqueeze(1))
        kept = available & ~dropped

        # 2. patch masking of the kept sequences
        kept_tok, n_visible, tok_noise = self._token_noise(kept, generator)
        if cfg.dirichlet_alpha is None:
            visible = _lowest(tok_noise, n_visible)
        else:
            alpha = torch.full((b, s), float(cfg.dirichlet_alpha), dtype=torch.float64, device=dev)
            # + tiny floor: every kept sequence stays eligible even if its gamma draw underflows,
            # so the capped quotas can always reach n_visible (<= L * kept sequences)
            weights = (sample_gamma(alpha, generator) + 1e-12) * kept
            quotas = dirichlet_quotas(weights, n_visible, n)
            visible = _ranks(tok_noise) < quotas.unsqueeze(-1)
        visible = visible & kept_tok

        # 3. targets: every hidden token of every available sequence (dropped ones included)
        target = available.unsqueeze(-1).expand(b, s, n) & ~visible
        if cfg.max_decoded is not None:
            t_noise = torch.where(target, torch.rand(b, s, n, **kw), torch.full((b, s, n), 2.0, device=dev))
            target = target & _lowest(t_noise, torch.full((b,), cfg.max_decoded, device=dev))
        return {"dropped": dropped, "visible": visible, "target": target}

    def full_view_mask(
        self, available: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Visible tokens of the consistency term's full view: a random ``1 - mask_ratio`` of the tokens of
        every available sequence (no sequence dropped), at least one per sample. Returns (B, S, L) bool."""
        tok, n_visible, noise = self._token_noise(available.bool(), generator)
        return _lowest(noise, n_visible) & tok

    def _token_noise(
        self, kept: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For (B, S) sequences whose tokens may be shown: their (B, S, L) token mask, the (B,) number of
        visible tokens (``1 - mask_ratio`` of them, rounded, at least one; in ``tube`` mode of the
        positions, times the kept sequences) and (B, S, L) uniform noise to rank them by (2.0, never
        chosen, on the other tokens; in ``tube`` mode the same along S)."""
        b, s = kept.shape
        n = self.num_patches
        dev = kept.device
        kept_tok = kept.unsqueeze(-1).expand(b, s, n)
        if self.config.mask_mode == "tube":
            # one noise per position shared by every sequence: the lowest n_pos positions are visible in
            # each kept sequence (ties are only between copies of one position, so the count is exact)
            n_pos = max(1, math.floor((1.0 - self.config.mask_ratio) * n + 0.5))
            n_visible = kept.sum(dim=1) * n_pos
            noise = torch.rand(b, 1, n, generator=generator, device=dev).expand(b, s, n)
        else:
            total = kept.sum(dim=1) * n
            n_visible = torch.floor((1.0 - self.config.mask_ratio) * total.double() + 0.5).long()
            n_visible = torch.minimum(n_visible.clamp_min(1), total)
            noise = torch.rand(b, s, n, generator=generator, device=dev)
        return kept_tok, n_visible, torch.where(kept_tok, noise, torch.full((b, s, n), 2.0, device=dev))

    # ------------------------------------------------------------------ model
    def forward_encoder(
        self, image: torch.Tensor, available: torch.Tensor, visible: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Encode the visible tokens only. Returns the encoder dict (tokens, valid, seq_idx, pos_idx)."""
        return self.encoder(image, available, token_mask=visible)

    def forward_decoder(
        self,
        encoded: Mapping[str, torch.Tensor],
        target: torch.Tensor,
        sources: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Predict the target patches from the encoded visible tokens.

        Args:
            encoded: Output of :meth:`forward_encoder`.
            target: (B, S, L) bool tokens to predict.
            sources: ``(image (B, S, D, H, W), source (B, S) bool)``: the volume and the sequences whose
                voxels the source-mixing head may read; required with ``source_mixing``, else ignored.

        Returns:
            ``pred`` (B, Nt, p^3) (normalised voxels if ``norm_pix_loss``), ``stats`` (B, Nt, 2) predicted
            patch mean and std (norm-pix only, else absent), ``target_index`` (B, Nt) token index
            ``s * L + l``, ``target_valid`` (B, Nt), ``target_seq`` and ``target_pos`` (B, Nt).
        """
        b = target.shape[0]
        n = self.num_patches
        t_index, t_valid = pack_tokens(target.reshape(b, -1))
        t_seq = torch.div(t_index, n, rounding_mode="floor")
        t_pos = t_index % n
        x_vis = self.decoder_embed(encoded["tokens"])
        x_vis = (
            x_vis + self.decoder_seq_embed[encoded["seq_idx"]] + self.decoder_pos_embed[encoded["pos_idx"]]
        )
        x_tgt = self.mask_token + self.decoder_seq_embed[t_seq] + self.decoder_pos_embed[t_pos]
        x = torch.cat([x_vis, x_tgt.to(x_vis.dtype)], dim=1)
        valid = torch.cat([encoded["valid"], t_valid], dim=1)
        x = run_blocks(self.decoder_blocks, x, valid)
        x = self.decoder_norm(x[:, x_vis.shape[1] :])
        pred = self.decoder_pred(x)
        if self.decoder_mix is not None:
            if sources is None:
                raise MrfoundError("a source-mixing model needs the source volume to decode")
            table = MIX_TABLE_GAIN * self.decoder_mix_table[t_seq].to(x.dtype)
            weights = self.decoder_mix(x) + table
            pred = pred + self._mix_sources(x, weights, sources, t_seq, t_pos)
        out = {
            "pred": pred,
            "target_index": t_index,
            "target_valid": t_valid,
            "target_seq": t_seq,
            "target_pos": t_pos,
        }
        if self.decoder_stats is not None:
            out["stats"] = self.decoder_stats(x)
        return out

    def _mix_sources(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        sources: tuple[torch.Tensor, torch.Tensor],
        t_seq: torch.Tensor,
        t_pos: torch.Tensor,
    ) -> torch.Tensor:
        """``sum_s weights[..., s] * patch(source s, target position) + weights[..., S]`` (allowed sources).

        With ``source_set_mixing`` each weight also adds ``sum_j pairs[target, j, weight]`` over the allowed
        sources j. With ``source_features`` H > 0 it adds ``sum_h u_h * gelu(W_in v + c_h + W_a a)`` per
        voxel: ``v`` the voxel's S allowed source values (others zeroed), ``a`` the (B, Nt, S)
        allowed-source flags, and ``c``, ``u`` two linear maps of the decoder token (``u`` zero-initialised).

        Args:
            x: (B, Nt, decoder_dim) normed decoder tokens of the targets.
            weights: (B, Nt, S + 1) mixing weights of each target token (the last: a constant offset).
            sources: ``(image, source mask (B, S))``.
            t_seq, t_pos: (B, Nt) sequence and position of each target token.

        Returns:
            (B, Nt, p^3).
        """
        image, source = sources
        b, nt = t_pos.shape
        s = self.encoder_config.num_sequences
        seq = torch.arange(s, device=t_pos.device).expand(b, nt, s)
        patches = gather_patches(
            image, self.encoder_config.patch_size, seq.reshape(b, -1), t_pos.repeat_interleave(s, dim=1)
        ).reshape(b, nt, s, -1)
        # a target never reads its own sequence, nor a sequence that is not a source
        allowed = source.bool().unsqueeze(1) & (seq != t_seq.unsqueeze(-1))
        flags = allowed.to(weights.dtype)
        if self.decoder_mix_pairs is not None:
            pairs = MIX_TABLE_GAIN * self.decoder_mix_pairs[t_seq].to(weights.dtype)  # (B, Nt, S, S + 1)
            weights = weights + torch.einsum("bns,bnsw->bnw", flags, pairs)
        w = weights[..., :s] * flags
        mixed = torch.einsum("bns,bnsv->bnv", w, patches.to(w.dtype)) + weights[..., s:]
        if self.decoder_voxel_in is None:
            return mixed
        flags = flags.to(x.dtype)
        voxels = (patches.to(x.dtype) * flags.unsqueeze(-1)).transpose(-1, -2)  # (B, Nt, p^3, S)
        bias = self.decoder_voxel_ctx(x) + self.decoder_voxel_avail(flags)  # (B, Nt, H)
        hidden = F.gelu(self.decoder_voxel_in(VOXEL_IN_GAIN * voxels) + bias.unsqueeze(2))
        out = VOXEL_GAIN * self.decoder_voxel_out(x).to(hidden.dtype)
        return mixed + torch.einsum("bnvh,bnh->bnv", hidden, out)

    def patch_targets(
        self, image: torch.Tensor, decoded: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Decoded patches' ground truth: ``pixels`` (B, Nt, p^3) float32, ``mean``, ``std`` (B, Nt, 1) and
        ``centred`` = ``pixels - mean``.

        ``std`` is ``sqrt(unbiased variance + 1e-6)`` as ``torch.var``, but computed in two plain passes over
        the centred voxels (2-3x faster on CPU than ``torch.var``'s Welford kernel, and as accurate).
        """
        pix = gather_patches(
            image, self.encoder_config.patch_size, decoded["target_seq"], decoded["target_pos"]
        ).float()
        mean = pix.mean(dim=-1, keepdim=True)
        centred = pix - mean
        n = pix.shape[-1]
        ss = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square()
        std = torch.sqrt(ss / max(n - 1, 1) + NORM_EPS)
        return {"pixels": pix, "mean": mean, "std": std, "centred": centred}

    def forward_loss(
        self, image: torch.Tensor, decoded: Mapping[str, torch.Tensor], dropped: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Masked-patch losses (see the class docstring for the keys).

        Args:
            image: (B, S, D, H, W) input volume.
            decoded: Output of :meth:`forward_decoder`.
            dropped: (B, S) bool sequences dropped whole.
        """
        with torch.no_grad():
            gt = self.patch_targets(image, decoded)
            target = gt["centred"].div_(gt["std"]) if self.config.norm_pix_loss else gt["pixels"]
        # one fused (a - b)^2 kernel forward and one backward, instead of sub + pow + their backwards
        per_patch = F.mse_loss(decoded["pred"].float(), target, reduction="none").mean(dim=-1)
        valid = decoded["target_valid"]
        synth = torch.gather(dropped, 1, decoded["target_seq"]) & valid
        inpaint = valid & ~synth

        def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            w = mask.to(values.dtype)
            return (values * w).sum() / w.sum().clamp_min(1.0)

        loss_recon = masked_mean(per_patch, valid)
        out = {
            "loss_recon": loss_recon,
            "loss_inpaint": masked_mean(per_patch.detach(), inpaint),
            "loss_synth": masked_mean(per_patch.detach(), synth),
            "n_inpaint": inpaint.sum().float(),
            "n_synth": synth.sum().float(),
        }
        loss = loss_recon
        if "stats" in decoded:
            stats_gt = torch.cat([gt["mean"], gt["std"]], dim=-1)
            loss_stats = masked_mean((decoded["stats"].float() - stats_gt).pow(2).mean(dim=-1), valid)
            out["loss_stats"] = loss_stats.detach()
            loss = loss + self.config.stats_loss_weight * loss_stats
        out["loss"] = loss
        return out

    def forward_consistency(
        self,
        image: torch.Tensor,
        available: torch.Tensor,
        encoded: Mapping[str, torch.Tensor],
        full_visible: torch.Tensor,
    ) -> torch.Tensor:
        """Cross-view consistency loss (see the module docstring).

        Args:
            image: (B, S, D, H, W).
            available: (B, S) bool.
            encoded: :meth:`forward_encoder` output of the training view (carries the gradient).
            full_visible: (B, S, L) visible tokens of the full view (:meth:`full_view_mask`).

        Returns:
            Scalar: mean squared difference of the standardised pooled features.
        """
        with torch.no_grad():
            full = self.encoder(image, available, token_mask=full_visible)
            target = _standardise(MultiSequenceViT.pool(full["tokens"], full["valid"]).float())
        # the training view by its own statistics, with the gradient: scaled by the target's spread
        # instead, shrinking the spread between cases lowers the loss, and reconstruction stalled
        pooled = _standardise(MultiSequenceViT.pool(encoded["tokens"], encoded["valid"]).float())
        return F.mse_loss(pooled, target)

    def forward(
        self,
        batch_or_image: Mapping[str, Any] | torch.Tensor,
        available: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        return_details: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One pretraining forward pass.

        Args:
            batch_or_image: The collated batch dict (``image``, ``available``) or the image tensor.
            available: (B, S) bool when an image tensor is given.
            generator: Optional torch generator for the masking (else torch's global RNG).
            return_details: Also return the non-scalar tensors ``pred``, ``stats``, ``target_index``,
                ``target_valid``, ``visible``, ``dropped``, ``target`` (off by default so that every
                returned value is a loggable scalar).

        Returns:
            Dict of scalar tensors (``loss`` first for backprop), see the class docstring.
        """
        image, available = self._unpack(batch_or_image, available)
        masks = self.random_masking(available, generator)
        encoded = self.forward_encoder(image, available, masks["visible"])
        kept = available & ~masks["dropped"]
        decoded = self.forward_decoder(encoded, masks["target"], (image, kept))
        out = self.forward_loss(image, decoded, masks["dropped"])
        if self.config.consistency_weight > 0:
            # drawn after the training view's masks, so those stay the same draws as without the term
            full_visible = self.full_view_mask(available, generator)
            consistency = self.forward_consistency(image, available, encoded, full_visible)
            out["loss_consistency"] = consistency.detach()
            out["loss"] = out["loss"] + self.config.consistency_weight * consistency
        out = {"loss": out.pop("loss"), **out}
        if return_details:
            out.update(
                {k: v for k, v in decoded.items() if k in ("pred", "stats", "target_index", "target_valid")}
            )
            out.update(masks)
        return out

    @staticmethod
    def _unpack(
        batch_or_image: Mapping[str, Any] | torch.Tensor, available: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch_or_image, Mapping):
            image, available = batch_or_image["image"], batch_or_image["available"]
        else:
            image = batch_or_image
        if available is None:
            raise MrfoundError("available (B, S) is required when an image tensor is given")
        return image, available.bool()

    # ------------------------------------------------------------------ inference helpers
    def _to_intensity(self, decoded: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Predicted voxel values (B, Nt, p^3): ``pred * std_hat + mean_hat`` for norm-pix models."""
        pred = decoded["pred"].float()
        if "stats" not in decoded:
            return pred
        stats = decoded["stats"].float()
        return pred * stats[..., 1:2].clamp_min(0) + stats[..., 0:1]

    def _tokens_to_image(
        self, values: torch.Tensor, decoded: Mapping[str, torch.Tensor], shape: torch.Size
    ) -> torch.Tensor:
        b, s = shape[:2]
        n = self.num_patches
        full = scatter_tokens(values, decoded["target_index"], decoded["target_valid"], s * n)
        return unpatchify(
            full.reshape(b, s, n, -1), self.encoder_config.grid_size, self.encoder_config.patch_size
        )

    def _target_mask(
        self, targets: Sequence[str] | torch.Tensor, shape: torch.Size, device: torch.device
    ) -> torch.Tensor:
        b, s = shape[:2]
        if isinstance(targets, torch.Tensor):
            mask = targets.to(device=device, dtype=torch.bool)
            if mask.ndim == 1:
                mask = mask.unsqueeze(0).expand(b, s)
            if tuple(mask.shape) != (b, s):
                raise MrfoundError(f"targets must be (B, S) = {(b, s)} bool or a list of sequence names")
            return mask
        vocab = Vocabulary(sequences=self.encoder_config.sequences)
        mask = torch.zeros(b, s, dtype=torch.bool, device=device)
        for name in targets:
            canon = vocab.canonical_sequence(name)
            if canon is None:
                raise MrfoundError(
                    f"unknown sequence {name!r}; the model knows {', '.join(self.encoder_config.sequences)}"
                )
            mask[:, vocab.sequences.index(canon)] = True
        return mask

    @torch.no_grad()
    def reconstruct(
        self, image: torch.Tensor, available: torch.Tensor, targets: Sequence[str] | torch.Tensor
    ) -> torch.Tensor:
        """Synthesise whole sequences from the other available ones (no patch masking).

        The encoder sees every token of the sources (available and not a target); the decoder predicts
        every patch of the targets. A target that is also available is hidden from the encoder, so a
        held-out sequence can be compared with its synthesis.

        Args:
            image: (B, S, D, H, W).
            available: (B, S) bool.
            targets: Sequence names (aliases accepted) or a (B, S) / (S,) bool mask.

        Returns:
            (B, S, D, H, W) float32: target channels synthesised (intensities, see the module
            docstring), source channels copied from ``image``, other channels zero.
        """
        available = available.bool()
        target_seq = self._target_mask(targets, image.shape, image.device)
        sources = available & ~target_seq
        if not bool(sources.any(dim=1).all()):
            raise MrfoundError("every case needs at least one available sequence that is not a target")
        if not bool(target_seq.any()):
            raise MrfoundError("no target sequence to reconstruct")
        encoded = self.encoder(image, sources)
        target_tok = target_seq.unsqueeze(-1).expand(-1, -1, self.num_patches)
        decoded = self.forward_decoder(encoded, target_tok, (image, sources))
        synth = self._tokens_to_image(self._to_intensity(decoded), decoded, image.shape)
        keep = sources.view(*sources.shape, 1, 1, 1)
        tgt = target_seq.view(*target_seq.shape, 1, 1, 1)
        return torch.where(tgt, synth, torch.where(keep, image.float(), torch.zeros_like(synth)))

    @torch.no_grad()
    def complete(self, image: torch.Tensor, available: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill in every absent sequence from the available ones (the test-time use of pretraining).

        Args:
            image: (B, S, D, H, W).
            available: (B, S) bool; every case needs at least one available sequence.

        Returns:
            ``(image, available)``: the available channels unchanged (in ``image``'s dtype), the absent
            ones synthesised by :meth:`reconstruct`, and an all-True (B, S) availability.
        """
        available = available.bool()
        if bool(available.all()):
            return image, available
        full = self.reconstruct(image, available, ~available).to(image.dtype)
        return full, torch.ones_like(available)

    @torch.no_grad()
    def reconstruction_images(
        self,
        batch_or_image: Mapping[str, Any] | torch.Tensor,
        available: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Volumes for figures: what the encoder saw and what the model reconstructs.

        Draws a masking as in training and decodes every hidden token (ignoring ``max_decoded``).

        Returns:
            ``image`` (B, S, D, H, W) input; ``masked`` input with hidden patches zeroed;
            ``recon`` visible patches from the input, hidden ones predicted (intensities);
            ``visible`` (B, S, L), ``dropped`` (B, S), ``available`` (B, S) bool.
        """
        image, available = self._unpack(batch_or_image, available)
        masks = self.random_masking(available, generator)
        n = self.num_patches
        target = available.unsqueeze(-1).expand(-1, -1, n) & ~masks["visible"]
        encoded = self.forward_encoder(image, available, masks["visible"])
        decoded = self.forward_decoder(encoded, target, (image, available & ~masks["dropped"]))
        pred = self._tokens_to_image(self._to_intensity(decoded), decoded, image.shape)
        p3 = self.encoder_config.patch_volume
        vis = masks["visible"].unsqueeze(-1).expand(-1, -1, -1, p3).float()
        vis = unpatchify(vis, self.encoder_config.grid_size, self.encoder_config.patch_size)
        masked = image.float() * vis
        recon = masked + pred * (1 - vis) * available.view(*available.shape, 1, 1, 1)
        return {
            "image": image.float(),
            "masked": masked,
            "recon": recon,
            "visible": masks["visible"],
            "dropped": masks["dropped"],
            "available": available,
        }
