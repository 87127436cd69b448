"""Tests of mrfound/models/mae.py: masking invariants, losses, gradients, reconstruction."""

from __future__ import annotations

import math

import pytest
import torch

from mrfound.errors import ConfigError, MrfoundError
from mrfound.models.mae import MIX_TABLE_GAIN, MaskedModalityAutoencoder, dirichlet_quotas, sample_gamma

L = 64  # tokens per sequence of the test config (32^3 ROI, patch 8)


@pytest.fixture()
def model(enc_cfg, mae_cfg) -> MaskedModalityAutoencoder:
    torch.manual_seed(0)
    return MaskedModalityAutoencoder(enc_cfg, mae_cfg)


def _random_available(b: int, s: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    avail = torch.rand(b, s, generator=g) > 0.5
    avail[torch.arange(b), torch.randint(0, s, (b,), generator=g)] = True  # at least one each
    return avail


def _check_invariants(masks, avail, mask_ratio, sequence_drop) -> None:
    dropped, visible, target = masks["dropped"], masks["visible"], masks["target"]
    avail_tok = avail.unsqueeze(-1).expand_as(visible)
    kept = avail & ~dropped
    assert not (dropped & ~avail).any(), "only available sequences can be dropped"
    assert kept.any(1).all(), "at least one sequence is kept"
    n_avail = avail.sum(1)
    assert (dropped.sum(1) <= torch.floor(sequence_drop * n_avail.double()).long()).all()
    assert not (visible & ~kept.unsqueeze(-1)).any(), "dropped/missing sequences are fully hidden"
    total = kept.sum(1) * L
    want = torch.clamp(torch.floor((1 - mask_ratio) * total.double() + 0.5).long(), min=1)
    assert torch.equal(visible.sum((1, 2)), torch.minimum(want, total)), "visible count as configured"
    assert (visible.sum((1, 2)) >= 1).all()
    assert torch.equal(target, avail_tok & ~visible), "targets = every hidden token of available sequences"
    assert target[dropped].all(), "dropped sequences are decoded whole"


@pytest.mark.parametrize("alpha", [None, 0.3, 0.005])
def test_masking_invariants(model, mae_cfg, alpha) -> None:
    model.config = mae_cfg.replace(dirichlet_alpha=alpha)
    for seed in range(5):
        avail = _random_available(16, 8, seed)
        masks = model.random_masking(avail, torch.Generator().manual_seed(seed))
        _check_invariants(masks, avail, 0.75, 0.5)
    # sequence dropout actually happens, and never drops the last sequence
    masks = model.random_masking(torch.ones(64, 8, dtype=torch.bool), torch.Generator().manual_seed(1))
    assert masks["dropped"].any() and (masks["dropped"].sum(1) <= 4).all()
    single = torch.zeros(8, 8, dtype=torch.bool)
    single[:, 2] = True
    assert not model.random_masking(single)["dropped"].any()


def test_single_drop_puts_samples_in_the_imputation_regime(model, mae_cfg) -> None:
    avail = _random_available(256, 8, 3)
    n_avail = avail.sum(1)
    off = model.random_masking(avail, torch.Generator().manual_seed(4))
    # p = 1: every sample with two or more sequences drops exactly one; a lone sequence is never dropped
    model.config = mae_cfg.replace(single_drop_prob=1.0)
    one = model.random_masking(avail, torch.Generator().manual_seed(4))
    _check_invariants(one, avail, 0.75, 0.5)
    assert torch.equal(one["dropped"].sum(1), (n_avail >= 2).long())
    # p = 0.5: about half the samples, the rest keep the uniform count
    model.config = mae_cfg.replace(single_drop_prob=0.5)
    half = model.random_masking(avail, torch.Generator().manual_seed(4))
    _check_invariants(half, avail, 0.75, 0.5)
    multi = n_avail >= 4  # the uniform count is 1 for at most 1 in 3 of these
    share_one = float((half["dropped"][multi].sum(1) == 1).float().mean())
    share_off = float((off["dropped"][multi].sum(1) == 1).float().mean())
    assert share_one > share_off + 0.25
    # p = 0 (the default) draws nothing extra: the masks replay a run made before the option existed
    model.config = mae_cfg.replace(single_drop_prob=0.0)
    again = model.random_masking(avail, torch.Generator().manual_seed(4))
    assert all(torch.equal(again[k], off[k]) for k in off)


def test_dirichlet_split_is_uneven_and_capped(model, mae_cfg) -> None:
    model.config = mae_cfg.replace(dirichlet_alpha=0.2, mask_ratio=0.5, sequence_drop=0.0)
    avail = torch.ones(32, 4, dtype=torch.bool)
    masks = model.random_masking(avail, torch.Generator().manual_seed(0))
    per_seq = masks["visible"].sum(-1)  # (B, S)
    assert (per_seq.sum(1) == 128).all() and (per_seq <= L).all()
    assert per_seq.float().std(1).mean() > 10  # far from the uniform split (std ~ 3)
    quotas = dirichlet_quotas(torch.tensor([[0.97, 0.01, 0.02, 0.0]]), torch.tensor([150]), cap=64)
    assert quotas.tolist()[0][0] == 64 and quotas.sum() == 150 and quotas[0, 3] == 0


def test_gamma_sampler_moments() -> None:
    g = torch.Generator().manual_seed(0)
    for alpha in (0.3, 2.0):
        x = sample_gamma(torch.full((20000,), alpha, dtype=torch.float64), g)
        assert (x > 0).all()
        assert math.isclose(float(x.mean()), alpha, rel_tol=0.05)
        assert math.isclose(float(x.var()), alpha, rel_tol=0.1)


def test_max_decoded_caps_targets(model, mae_cfg) -> None:
    model.config = mae_cfg.replace(max_decoded=20)
    avail = _random_available(8, 8, 3)
    masks = model.random_masking(avail, torch.Generator().manual_seed(0))
    hidden = avail.unsqueeze(-1).expand_as(masks["visible"]) & ~masks["visible"]
    assert torch.equal(masks["target"].sum((1, 2)), hidden.sum((1, 2)).clamp_max(20))
    assert not (masks["target"] & ~hidden).any()


def test_tube_masking_hides_the_same_positions_in_every_kept_sequence(model, mae_cfg) -> None:
    avail = _random_available(32, 8, 5)
    model.config = mae_cfg.replace(mask_mode="tube")
    masks = model.random_masking(avail, torch.Generator().manual_seed(2))
    dropped, visible, target = masks["dropped"], masks["visible"], masks["target"]
    kept = avail & ~dropped
    assert kept.any(1).all() and not (visible & ~kept.unsqueeze(-1)).any()
    # the kept sequences of a sample show one set of positions, 16 of 64 at mask ratio 0.75
    for b in range(32):
        rows = visible[b][kept[b]]
        assert (rows == rows[0]).all() and int(rows[0].sum()) == 16
    assert torch.equal(target, avail.unsqueeze(-1).expand_as(visible) & ~visible)
    assert target[dropped].all()
    # a position hidden in one kept sequence is visible in none (random masking leaks it from others)
    hidden_somewhere = (kept.unsqueeze(-1) & ~visible).any(1)
    assert not (hidden_somewhere & visible.any(1)).any()
    model.config = mae_cfg
    leaky = model.random_masking(avail, torch.Generator().manual_seed(2))
    kept_r = avail & ~leaky["dropped"]
    assert ((kept_r.unsqueeze(-1) & ~leaky["visible"]).any(1) & leaky["visible"].any(1)).any()
    # the full view of the consistency term follows the mode too; at least one position stays visible
    model.config = mae_cfg.replace(mask_mode="tube", mask_ratio=0.999)
    vis = model.full_view_mask(avail, torch.Generator().manual_seed(0))
    assert torch.equal(vis.sum(-1), avail.long()), "one position per available sequence"
    assert (vis.any(1).sum(-1) == 1).all(), "the same one in each"


def test_mask_mode_is_validated(mae_cfg) -> None:
    with pytest.raises(ConfigError, match="mask_mode must be one of random, tube"):
        mae_cfg.replace(mask_mode="block")
    with pytest.raises(ConfigError, match="dirichlet_alpha needs mask_mode=random"):
        mae_cfg.replace(mask_mode="tube", dirichlet_alpha=0.5)


def test_masking_randomness_is_reproducible(model) -> None:
    avail = _random_available(4, 8, 0)
    a = model.random_masking(avail, torch.Generator().manual_seed(7))
    b = model.random_masking(avail, torch.Generator().manual_seed(7))
    c = model.random_masking(avail, torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visible"], c["visible"])
    torch.manual_seed(3)
    d = model.random_masking(avail)
    torch.manual_seed(3)
    e = model.random_masking(avail)
    assert all(torch.equal(d[k], e[k]) for k in d)  # global RNG (the trainer checkpoints its state)


def test_forward_protocol_returns_scalars_and_trains_every_parameter(model, batch) -> None:
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert list(out)[0] == "loss"
    assert {"loss", "loss_inpaint", "loss_synth", "loss_recon", "loss_stats", "n_inpaint", "n_synth"} <= set(
        out
    )
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    assert out["n_synth"] > 0 and out["n_inpaint"] > 0
    recon = (out["loss_inpaint"] * out["n_inpaint"] + out["loss_synth"] * out["n_synth"]) / (
        out["n_inpaint"] + out["n_synth"]
    )
    torch.testing.assert_close(recon, out["loss_recon"].detach())
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    same = model(batch["image"], batch["available"], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same["loss"], out["loss"])


def test_loss_is_zero_for_a_perfect_prediction(model, batch) -> None:
    masks = model.random_masking(batch["available"], torch.Generator().manual_seed(0))
    enc = model.forward_encoder(batch["image"], batch["available"], masks["visible"])
    dec = dict(model.forward_decoder(enc, masks["target"]))
    gt = model.patch_targets(batch["image"], dec)
    dec["pred"] = (gt["pixels"] - gt["mean"]) / gt["std"]
    dec["stats"] = torch.cat([gt["mean"], gt["std"]], -1)
    out = model.forward_loss(batch["image"], dec, masks["dropped"])
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-10)
    # and the reconstruction from such a prediction gives back the voxels
    voxels = model._to_intensity(dec)
    torch.testing.assert_close(voxels, gt["pixels"], atol=1e-5, rtol=1e-5)


def test_no_sequence_dropout_means_no_synthesis_loss(enc_cfg, mae_cfg, batch) -> None:
    model = MaskedModalityAutoencoder(enc_cfg, mae_cfg.replace(sequence_drop=0.0))
    out = model(batch)
    assert out["n_synth"] == 0 and out["loss_synth"] == 0


def test_raw_voxel_model_has_no_stats_head(enc_cfg, mae_cfg, batch) -> None:
    model = MaskedModalityAutoencoder(enc_cfg, mae_cfg.replace(norm_pix_loss=False))
    assert model.decoder_stats is None
    out = model(batch)
    assert "loss_stats" not in out and torch.equal(out["loss"], out["loss_recon"])


def test_reconstruct_synthesises_targets_from_sources(model, batch) -> None:
    model.eval()
    image, avail = batch["image"], batch["available"]
    out = model.reconstruct(image, avail, ["T2WI", "pv"])  # aliases of t2 and t1_pv
    assert out.shape == image.shape and torch.isfinite(out).all()
    t2, pv = 0, 6
    sources = avail.clone()
    sources[:, [t2, pv]] = False
    for b in range(image.shape[0]):
        for s in range(8):
            if s in (t2, pv):
                assert not torch.equal(out[b, s], image[b, s])
            elif sources[b, s]:
                assert torch.equal(out[b, s], image[b, s])
            else:
                assert not out[b, s].any()
    # the synthesis does not depend on the hidden target's own voxels
    leaked = image.clone()
    leaked[:, t2] = 5.0
    torch.testing.assert_close(model.reconstruct(leaked, avail, ["t2", "pv"])[:, t2], out[:, t2])
    with pytest.raises(MrfoundError, match="unknown sequence"):
        model.reconstruct(image, avail, ["flair"])
    only_t2 = torch.zeros_like(avail)
    only_t2[:, 0] = True
    with pytest.raises(MrfoundError, match="not a target"):
        model.reconstruct(image, only_t2, ["t2"])


def test_complete_fills_in_only_the_absent_sequences(model, batch) -> None:
    model.eval()
    image, avail = batch["image"], batch["available"]
    assert not bool(avail.all())  # the fixture has cases with missing sequences
    full, full_avail = model.complete(image, avail)
    assert full.dtype == image.dtype and bool(full_avail.all()) and full_avail.shape == avail.shape
    keep = avail.view(*avail.shape, 1, 1, 1).expand_as(image)
    assert torch.equal(full[keep], image[keep])
    torch.testing.assert_close(full[~keep], model.reconstruct(image, avail, ~avail)[~keep])
    # nothing absent: returned as given
    everything = torch.ones_like(avail)
    same, same_avail = model.complete(image, everything)
    assert same is image and bool(same_avail.all())


def test_reconstruction_images_show_visible_patches(model, batch) -> None:
    from mrfound.models.layers import unpatchify

    rec = model.reconstruction_images(batch, generator=torch.Generator().manual_seed(0))
    image = batch["image"]
    assert rec["masked"].shape == image.shape == rec["recon"].shape
    vis = unpatchify(rec["visible"].unsqueeze(-1).expand(-1, -1, -1, 512).float(), (4, 4, 4), 8).bool()
    assert 0 < vis.float().mean() < 0.5
    assert torch.equal(rec["masked"], torch.where(vis, image, torch.zeros_like(image)))
    assert torch.equal(rec["recon"][vis], image[vis])  # visible patches are copied
    hidden = ~vis & batch["available"].view(3, 8, 1, 1, 1)
    assert not torch.equal(rec["recon"][hidden], image[hidden])  # hidden ones are predicted
    assert not rec["visible"][rec["dropped"]].any()


def test_sequence_embedding_init_scale_follows_the_configs(enc_cfg, mae_cfg) -> None:
    torch.manual_seed(0)
    default = MaskedModalityAutoencoder(enc_cfg, mae_cfg)
    assert default.encoder.seq_embed.std().item() == pytest.approx(0.02, rel=0.2)
    assert default.decoder_seq_embed.std().item() == pytest.approx(0.02, rel=0.2)
    wide = MaskedModalityAutoencoder(
        enc_cfg.replace(seq_embed_std=0.5), mae_cfg.replace(decoder_seq_embed_std=0.5)
    )
    assert wide.encoder.seq_embed.std().item() == pytest.approx(0.5, rel=0.2)
    assert wide.decoder_seq_embed.std().item() == pytest.approx(0.5, rel=0.2)
    # an older checkpoint config without the fields loads with the defaults
    d = enc_cfg.to_dict()
    d.pop("seq_embed_std")
    assert type(enc_cfg).from_dict(d).seq_embed_std == 0.02


def test_source_mixing_needs_raw_voxel_loss(mae_cfg) -> None:
    with pytest.raises(ConfigError, match="source_mixing needs norm_pix_loss=false"):
        mae_cfg.replace(source_mixing=True)
    assert mae_cfg.replace(norm_pix_loss=False, source_mixing=True).source_mixing


def test_source_mixing_reads_sources_only_never_the_target(enc_cfg, mae_cfg, batch) -> None:
    torch.manual_seed(0)
    cfg = mae_cfg.replace(norm_pix_loss=False, source_mixing=True)
    model = MaskedModalityAutoencoder(enc_cfg, cfg).eval()
    image, avail = batch["image"], batch["available"].clone()
    avail[0] = True  # sample 0: all 8 sequences; synthesise t2 (index 0) from the others
    plain = MaskedModalityAutoencoder(enc_cfg, mae_cfg.replace(norm_pix_loss=False)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)  # same weights, no mixing head
    with torch.no_grad():
        # zero-initialised mixing: the model starts as the plain decoder
        torch.testing.assert_close(
            model.reconstruct(image, avail, ["t2"]), plain.reconstruct(image, avail, ["t2"])
        )
        torch.nn.init.normal_(model.decoder_mix.weight, std=0.5)
        base = model.reconstruct(image, avail, ["t2"])[0, 0]
        # the target's own voxels (hidden) never reach its synthesis
        other = image.clone()
        other[0, 0] = torch.randn_like(other[0, 0]) * 5
        torch.testing.assert_close(model.reconstruct(other, avail, ["t2"])[0, 0], base)
        # a source's voxels do (the mixing head reads them, every patch of them)
        other = image.clone()
        other[0, 3] += 1.0
        assert not torch.allclose(model.reconstruct(other, avail, ["t2"])[0, 0], base)
    with pytest.raises(MrfoundError, match="needs the source volume"):
        enc = model.encoder(image, avail)
        model.forward_decoder(enc, avail.unsqueeze(-1).expand(-1, -1, L))


def test_source_mixing_learns_a_voxelwise_copy_the_plain_decoder_cannot(enc_cfg, mae_cfg) -> None:
    """t1_del = 2 * t1_pv voxel by voxel, both pure noise: only the mixing head can synthesise it."""
    g = torch.Generator().manual_seed(0)
    pv = torch.rand(4, 32, 32, 32, generator=g)
    image = torch.zeros(4, 8, 32, 32, 32)
    image[:, 6], image[:, 7] = pv, 2 * pv
    avail = torch.zeros(4, 8, dtype=torch.bool)
    avail[:, 6:] = True
    losses = {}
    for mixing in (False, True):
        torch.manual_seed(0)
        cfg = mae_cfg.replace(norm_pix_loss=False, source_mixing=mixing, sequence_drop=0.5)
        model = MaskedModalityAutoencoder(enc_cfg, cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(60):
            opt.zero_grad()
            model(image, avail)["loss"].backward()
            opt.step()
        with torch.no_grad():
            synth = model.eval().reconstruct(image, avail, ["t1_del"])[:, 7]
        losses[mixing] = float(((synth - image[:, 7]) ** 2).mean())
    # noise variance of t1_del is 4/12 = 0.33: the plain decoder stays near it, the mixing head copies
    assert losses[False] > 0.2
    assert losses[True] < 0.2 * losses[False]


def test_source_features_need_source_mixing(mae_cfg) -> None:
    raw = mae_cfg.replace(norm_pix_loss=False)
    with pytest.raises(ConfigError, match="source_features needs source_mixing=true"):
        raw.replace(source_features=4)
    with pytest.raises(ConfigError, match="source_features must be an int >= 0"):
        raw.replace(source_mixing=True, source_features=-1)
    assert raw.replace(source_mixing=True, source_features=4).source_features == 4
    assert mae_cfg.source_features == 0  # off by default: the design's decoder


def test_source_set_mixing_starts_as_the_plain_mix_and_depends_on_the_sources_present(
    enc_cfg, mae_cfg, batch
) -> None:
    raw = mae_cfg.replace(norm_pix_loss=False)
    with pytest.raises(ConfigError, match="source_set_mixing needs source_mixing=true"):
        raw.replace(source_set_mixing=True)
    torch.manual_seed(0)
    model = MaskedModalityAutoencoder(enc_cfg, raw.replace(source_mixing=True, source_set_mixing=True)).eval()
    plain = MaskedModalityAutoencoder(enc_cfg, raw.replace(source_mixing=True)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    image, avail = batch["image"][:1], batch["available"][:1] | True
    few = avail.clone()
    few[0, 1:5] = False  # t2 from t1_art, t1_pv and t1_del only
    with torch.no_grad():
        torch.testing.assert_close(
            model.reconstruct(image, avail, ["t2"]), plain.reconstruct(image, avail, ["t2"])
        )
        # t2's weight of t1_del moves by 1 for every other source present: 7 here, 3 with `few`
        model.decoder_mix_pairs[0, :, 7] = 1.0 / MIX_TABLE_GAIN
        plain.decoder_mix_table[0, 7] = 7.0 / MIX_TABLE_GAIN
        torch.testing.assert_close(
            model.reconstruct(image, avail, ["t2"]), plain.reconstruct(image, avail, ["t2"])
        )
        plain.decoder_mix_table[0, 7] = 3.0 / MIX_TABLE_GAIN
        torch.testing.assert_close(
            model.reconstruct(image, few, ["t2"]), plain.reconstruct(image, few, ["t2"])
        )
    assert "decoder_mix_pairs" in model.no_weight_decay()


def test_source_features_start_as_the_linear_mix_and_never_read_the_target(enc_cfg, mae_cfg, batch) -> None:
    torch.manual_seed(0)
    cfg = mae_cfg.replace(norm_pix_loss=False, source_mixing=True)
    model = MaskedModalityAutoencoder(enc_cfg, cfg.replace(source_features=4)).eval()
    linear = MaskedModalityAutoencoder(enc_cfg, cfg).eval()
    linear.load_state_dict(model.state_dict(), strict=False)  # same weights, no per-voxel layer
    image, avail = batch["image"], batch["available"] | True
    with torch.no_grad():
        torch.nn.init.normal_(model.decoder_mix.weight, std=0.5)  # a non-trivial linear mix, in both
        linear.decoder_mix.weight.copy_(model.decoder_mix.weight)
        # zero-initialised output weights: the model starts as the linear source mix
        torch.testing.assert_close(
            model.reconstruct(image, avail, ["t2"]), linear.reconstruct(image, avail, ["t2"])
        )
        torch.nn.init.normal_(model.decoder_voxel_out.weight, std=0.5)
        base = model.reconstruct(image, avail, ["t2"])[:, 0]
        assert not torch.allclose(base, linear.reconstruct(image, avail, ["t2"])[:, 0])
        other = image.clone()
        other[:, 0] = torch.randn_like(other[:, 0]) * 5  # the hidden target's own voxels never count
        torch.testing.assert_close(model.reconstruct(other, avail, ["t2"])[:, 0], base)


def test_source_features_learn_a_step_shaped_contrast_no_linear_mix_can(enc_cfg, mae_cfg) -> None:
    """t1_del = 2 [t1_pv > 0.5] voxel by voxel (two 'tissues'); a linear map of t1_pv leaves MSE >= 0.25."""
    g = torch.Generator().manual_seed(0)
    pv = torch.rand(2, 32, 32, 32, generator=g)
    image = torch.zeros(2, 8, 32, 32, 32)
    image[:, 6], image[:, 7] = pv, 2.0 * (pv > 0.5)
    avail = torch.zeros(2, 8, dtype=torch.bool)
    avail[:, 6:] = True
    torch.manual_seed(0)
    cfg = mae_cfg.replace(norm_pix_loss=False, source_mixing=True, source_features=16, sequence_drop=0.5)
    model = MaskedModalityAutoencoder(enc_cfg, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        model(image, avail)["loss"].backward()
        opt.step()
    with torch.no_grad():
        synth = model.eval().reconstruct(image, avail, ["t1_del"])[:, 7]
    # var(2 [u > 0.5]) = 1, of which a linear map of u explains 3/4: no linear mix gets below 0.25
    assert float(((synth - image[:, 7]) ** 2).mean()) < 0.2


def test_consistency_off_by_default_and_on_adds_a_finite_term(enc_cfg, mae_cfg, batch) -> None:
    torch.manual_seed(0)
    plain = MaskedModalityAutoencoder(enc_cfg, mae_cfg)
    assert mae_cfg.consistency_weight == 0 and "loss_consistency" not in plain(batch)
    torch.manual_seed(0)
    model = MaskedModalityAutoencoder(enc_cfg, mae_cfg.replace(consistency_weight=0.5))
    out = model(batch, generator=torch.Generator().manual_seed(0))
    base = plain(batch, generator=torch.Generator().manual_seed(0))
    # same weights, same training-view masks (the full view is drawn after them): only the term is added
    torch.testing.assert_close(out["loss_recon"], base["loss_recon"])
    assert out["loss_consistency"] > 0
    torch.testing.assert_close(out["loss"], base["loss"] + 0.5 * out["loss_consistency"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)


def test_full_view_keeps_every_available_sequence_at_the_mask_ratio(model) -> None:
    avail = _random_available(16, 8, 3)
    vis = model.full_view_mask(avail, torch.Generator().manual_seed(0))
    assert not (vis & ~avail.unsqueeze(-1)).any()
    want = torch.floor(0.25 * avail.sum(1).double() * L + 0.5).long()
    assert torch.equal(vis.sum((1, 2)), want)
    # every available sequence shows up (~16 of 64 tokens each, none dropped whole)
    assert torch.equal(vis.any(-1), avail)


def test_consistency_is_zero_for_identical_views_and_scale_free(enc_cfg, mae_cfg, batch) -> None:
    model = MaskedModalityAutoencoder(enc_cfg, mae_cfg.replace(consistency_weight=1.0))
    avail = batch["available"]
    full = avail.unsqueeze(-1).expand(-1, -1, L)
    enc = model.forward_encoder(batch["image"], avail, full)
    # the training view equal to the full view: nothing to regress
    assert model.forward_consistency(batch["image"], avail, enc, full).item() == pytest.approx(0, abs=1e-8)
    # a view that lost sequences is penalised
    one = torch.zeros_like(avail)
    one[:, 0] = True
    part = model.forward_encoder(batch["image"], one, one.unsqueeze(-1).expand(-1, -1, L))
    loss = model.forward_consistency(batch["image"], avail, part, full)
    assert loss > 0.01
    single = {k: v[:1] for k, v in part.items()}  # a batch of one: one scale over the features
    assert torch.isfinite(model.forward_consistency(batch["image"][:1], avail[:1], single, full[:1]))


def test_consistency_weight_is_validated(mae_cfg) -> None:
    with pytest.raises(ConfigError, match="consistency_weight"):
        mae_cfg.replace(consistency_weight=-1.0)
