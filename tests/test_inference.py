"""Tests of mrfound/inference.py: predict / segment / impute on new cases, their grids and streaming.

Tiny random-weight checkpoints (ROI 16 at 6 mm, patch 8, width 32) and a 4-case phantom cohort at a
third of the default resolution keep this fast; the geometry checks do not need trained weights.
``tests/commands/test_predict.py`` and ``test_impute.py`` load :func:`make_cohort` and
:func:`make_checkpoints` from this file by path.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mrfound import inference as inf
from mrfound.data.manifest import read_manifest
from mrfound.errors import CheckpointError, ConfigError, ManifestError, MrfoundError
from mrfound.pipeline import load_pretrained

ROI, PATCH, SPACING = 16, 8, 6.0


# ----------------------------------------------------------------------------------------------------
# builders (also used by the command tests)


def make_cohort(folder: Path, n: int = 4, seed: int = 3) -> Path:
    """A small phantom cohort (cases on their own grids, some sequences missing); returns the manifest."""
    from mrfound.data.phantom import PhantomConfig, generate_cohort

    return generate_cohort(folder, n, seed=seed, config=PhantomConfig(spacing_scale=3.0), workers=1)


def make_checkpoints(folder: Path) -> dict[str, Path]:
    """Random-weight ``autoencoder``, ``segmenter`` and ``classifier`` checkpoints (one encoder size)."""
    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.data.sequences import CLASSES
    from mrfound.models.checkpoint import save_checkpoint
    from mrfound.models.config import EncoderConfig, MAEConfig
    from mrfound.models.encoder import MultiSequenceViT
    from mrfound.models.heads import Classifier, Segmenter, make_classification_head, make_segmentation_head
    from mrfound.models.mae import MaskedModalityAutoencoder

    enc = EncoderConfig(img_size=ROI, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2)
    extra = {"preprocessing": PreprocessConfig(spacing=SPACING, roi_size=ROI).to_dict()}
    torch.manual_seed(0)
    mae = MaskedModalityAutoencoder(enc, MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    e1, e2 = MultiSequenceViT(enc), MultiSequenceViT(enc)
    seg = Segmenter(e1, make_segmentation_head(e1, feature_size=4))
    cls = Classifier(e2, make_classification_head(e2, len(CLASSES)), CLASSES)
    return {
        "autoencoder": save_checkpoint(folder / "mae", mae, extra),
        "segmenter": save_checkpoint(folder / "seg", seg, extra),
        "classifier": save_checkpoint(folder / "cls", cls, extra),
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def models(ckpts) -> dict[str, object]:
    return {k: load_pretrained(v, device="cpu") for k, v in ckpts.items()}


PATH_COLUMNS = ("t2", "dwi", "t1_in", "t1_opp", "t1_pre", "t1_art", "t1_pv", "t1_del", "mask")


def absolute_frame(manifest_path: Path) -> pd.DataFrame:
    """The manifest as strings with absolute paths (rows can then be written to any folder)."""
    frame = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    for col in PATH_COLUMNS:
        if col in frame:
            frame[col] = [str(manifest_path.parent / p) if p else "" for p in frame[col]]
    return frame


def _reference(manifest_path: Path, case) -> nib.Nifti1Image:
    """The case's first available sequence in vocabulary order."""
    man = read_manifest(manifest_path)
    first = next(s for s in man.vocabulary.sequences if s in case.sequences)
    return nib.load(str(case.sequences[first]))


# ----------------------------------------------------------------------------------------------------
# predict


def test_predict_manifest_classifier_rows(models, cohort, tmp_path) -> None:
    out = tmp_path / "out"
    summary = inf.predict_manifest(models["classifier"], cohort, out)
    frame = pd.read_csv(out / "predictions.csv", dtype={"case": str})
    man = read_manifest(cohort)
    classes = list(models["classifier"].model.classes)
    assert summary.n_cases == len(man) == len(frame)
    assert list(frame.columns[:2]) == ["case", "label_pred"]
    assert [c[2:] for c in frame.columns if c.startswith("p_")] == classes
    probs = frame[[f"p_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (frame["label_pred"] == [classes[i] for i in probs.argmax(1)]).all()
    for case, row in zip(man.cases, frame.itertuples()):
        assert row.case == case.case
        expected = [s for s in man.vocabulary.sequences if s in case.sequences]
        assert row.sequences_used.split(";") == expected
        assert row.roi_source == "lesion_xyz"  # the phantom manifest has lesion_x/y/z
    assert not list(out.glob(".predict-*"))  # the private run folder is gone


def test_predict_manifest_segmenter_on_reference_grid(models, cohort, tmp_path) -> None:
    out = tmp_path / "out"
    summary = inf.predict_manifest(models["segmenter"], cohort, out)
    frame = pd.read_csv(out / "predictions.csv", dtype={"case": str})
    man = read_manifest(cohort)
    assert len(summary.segmentations) == len(man)
    for case, row in zip(man.cases, frame.itertuples()):
        img = nib.load(str(out / row.segmentation))
        ref = _reference(cohort, case)
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
        labels = np.asarray(img.dataobj)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
        assert row.reference_sequence == next(s for s in man.vocabulary.sequences if s in case.sequences)


def test_segmentation_geometry_overlays_the_mask(models, cohort, monkeypatch) -> None:
    """Resampling back through the affines: a 'prediction' equal to the preprocessed truth lands on the mask.

    The head is replaced by the case's own mask on the preprocessing grid, so whatever the output file
    disagrees with the original mask (on its own grid, LPS/permuted axes) comes from the geometry.
    """
    from mrfound.data.preprocess import load_case_arrays

    man = read_manifest(cohort)
    model = models["segmenter"]
    case = man.cases[0]

    def fake_segment(m, prepared, overlap, sw_batch_size):
        s = load_case_arrays(case.sequences, m.preprocessing, m.vocabulary, mask=case.mask)
        truth = np.clip(s["mask"][0], 0, 2)
        truth[s["mask"][0] == 3] = 2
        return inf.resample_to_grid(
            truth, s["affine"], prepared.sample["affine"], prepared.sample["image"].shape[1:], nearest=True
        ).astype(np.uint8)

    monkeypatch.setattr(inf, "_segment_prepared", fake_segment)
    img = model.segment(case)
    ref = _reference(cohort, case)
    assert img.shape == ref.shape
    pred = np.asarray(img.dataobj)
    mask_img = nib.load(str(case.mask))
    if mask_img.shape != ref.shape or not np.allclose(mask_img.affine, ref.affine):
        # the mask lies on another sequence's grid: compare there
        pred = inf.resample_to_grid(pred, img.affine, mask_img.affine, mask_img.shape, nearest=True)
    mask = np.asarray(mask_img.dataobj)
    mask = np.where(mask == 3, 2, mask)
    for label, min_dice in ((1, 0.8), (2, 0.5)):  # 6 mm round trip (flipped axes would give ~0)
        p, t = pred == label, mask == label
        dice = 2 * (p & t).sum() / (p.sum() + t.sum())
        assert dice > min_dice, (label, dice)


def test_keep_largest_foreground_drops_islands_keeps_lesion() -> None:
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[1:7, 1:7, 1:7] = 1  # liver
    labels[3:5, 3:5, 3:5] = 2  # lesion inside it
    labels[9:11, 9:11, 9:11] = 1  # island (e.g. spleen taken for liver)
    labels[0, 11, 11] = 2  # lesion blob outside the liver
    kept = inf.keep_largest_foreground(labels)
    expected = labels.copy()
    expected[9:11, 9:11, 9:11] = 0
    expected[0, 11, 11] = 0
    np.testing.assert_array_equal(kept, expected)
    assert kept.dtype == labels.dtype
    diagonal = np.zeros((4, 4, 4), dtype=np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 1  # corner neighbours: one 26-connected component
    np.testing.assert_array_equal(inf.keep_largest_foreground(diagonal), diagonal)
    empty = np.zeros((3, 3, 3), dtype=np.uint8)
    np.testing.assert_array_equal(inf.keep_largest_foreground(empty), empty)


def test_segment_largest_component_option(models, cohort, monkeypatch) -> None:
    man = read_manifest(cohort)
    model = models["segmenter"]

    def islands(image, available, **kwargs):  # two liver blobs, the smaller one an island
        out = torch.zeros(image.shape[0], 1, *image.shape[2:], dtype=torch.int64)
        out[:, :, 2:12, 2:12, 2:12] = 1
        out[:, :, -4:-2, -4:-2, -4:-2] = 1
        return out

    monkeypatch.setattr(model.model, "segment", islands)
    raw = np.asarray(model.segment(man.cases[0]).dataobj)
    kept = np.asarray(model.segment(man.cases[0], largest_component=True).dataobj)
    from scipy import ndimage

    assert ndimage.label(raw > 0, structure=np.ones((3, 3, 3)))[1] == 2
    assert ndimage.label(kept > 0, structure=np.ones((3, 3, 3)))[1] == 1
    assert 0 < kept.sum() < raw.sum()


def test_segmentation_overlap_defaults_to_half_patch_offsets(models, cohort, monkeypatch) -> None:
    man = read_manifest(cohort)
    model = models["segmenter"]
    seen = []
    import monai.inferers

    real = monai.inferers.sliding_window_inference

    def spy(*args, **kwargs):  # the overlap the windows are actually laid out with
        seen.append(kwargs["overlap"])
        return real(*args, **kwargs)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", spy)
    model.segment(man.cases[0])
    model.predict(man.cases[0])
    model.segment(man.cases[0], overlap=0.25)
    auto = inf.default_overlap(min(model.model.roi_size), model.model.encoder.config.patch_size)
    assert seen == [auto, auto, 0.25] and auto != 0.25


def test_predict_single_case_dict_and_bare_arrays(models, cohort) -> None:
    man = read_manifest(cohort)
    case = man.cases[0]
    as_dict = {s: str(p) for s, p in case.sequences.items()}
    res = models["classifier"].predict(as_dict, lesion_xyz=case.lesion_xyz)
    assert abs(sum(res["probabilities"].values()) - 1) < 1e-5
    assert res["label_pred"] == max(res["probabilities"], key=res["probabilities"].get)
    assert res["roi_source"] == "lesion_xyz"
    body = models["classifier"].predict(as_dict)
    assert body["roi_source"] == "body"
    by_mask = models["classifier"].predict(as_dict, mask=str(case.mask))
    assert by_mask["roi_source"] == "mask"
    # the mask's lesion centre is (nearly) the manifest's lesion point: same crop, same probabilities
    np.testing.assert_allclose(
        list(by_mask["probabilities"].values()), list(res["probabilities"].values()), atol=0.02
    )
    with pytest.raises(MrfoundError, match="affine"):
        models["segmenter"].segment({"t2": np.zeros((8, 8, 8), np.float32)})
    table = models["classifier"].predict(cohort)
    assert list(table["case"]) == [c.case for c in man.cases]


def test_predict_errors_name_the_case_and_column(models, cohort, tmp_path) -> None:
    frame = absolute_frame(cohort)
    bad_case = frame.loc[frame["t2"] != "", "case"].iloc[0]
    frame.loc[frame["case"] == bad_case, "t2"] = str(tmp_path / "missing_t2.nii.gz")
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(ManifestError, match=rf"case '{bad_case}', column 't2'"):
        inf.predict_manifest(models["classifier"], bad, tmp_path / "stop")
    assert not (tmp_path / "stop" / "predictions.csv").exists()  # nothing published
    summary = inf.predict_manifest(models["classifier"], bad, tmp_path / "skip", on_error="skip")
    assert [c for c, _ in summary.skipped] == [bad_case]
    skipped = pd.read_csv(tmp_path / "skip" / "skipped.csv", dtype=str)
    assert list(skipped["case"]) == [bad_case] and "missing_t2" in skipped["reason"][0]
    assert bad_case not in set(pd.read_csv(tmp_path / "skip" / "predictions.csv", dtype=str)["case"])
    with pytest.raises(CheckpointError, match="cannot predict"):
        inf.predict_manifest(models["autoencoder"], cohort, tmp_path / "mae")
    with pytest.raises(CheckpointError, match="cannot impute"):
        models["segmenter"].impute(man_case(cohort), "t2")
    with pytest.raises(ConfigError, match="unknown sequence"):
        models["autoencoder"].impute(man_case(cohort), "flair")


def man_case(cohort: Path):
    return read_manifest(cohort).cases[0]


def test_predict_merge_keeps_other_cases(models, cohort, tmp_path) -> None:
    man = read_manifest(cohort)
    frame = absolute_frame(cohort)
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    frame.iloc[:2].to_csv(first, index=False)
    frame.iloc[2:].to_csv(second, index=False)
    out = tmp_path / "out"
    inf.predict_manifest(models["classifier"], first, out)
    inf.predict_manifest(models["classifier"], second, out, merge=True)
    assert sorted(pd.read_csv(out / "predictions.csv", dtype=str)["case"]) == sorted(
        c.case for c in man.cases
    )
    inf.predict_manifest(models["classifier"], second, out)  # no merge: this run's cases only
    assert sorted(pd.read_csv(out / "predictions.csv", dtype=str)["case"]) == sorted(frame["case"][2:])


def test_predict_memory_does_not_grow_with_the_manifest(models, cohort, tmp_path) -> None:
    """Streaming: the peak of traced (numpy) memory with 6 copies of a case is that of 1 case."""
    frame = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    row = frame.iloc[[3]].copy()
    for col in [
        c
        for c in frame.columns
        if c in ("t2", "dwi", "t1_in", "t1_opp", "t1_pre", "t1_art", "t1_pv", "t1_del", "mask")
    ]:
        row[col] = [str(cohort.parent / p) if p else "" for p in row[col]]
    peaks = {}
    for n in (1, 6):
        rows = pd.concat([row] * n, ignore_index=True)
        rows["case"] = [f"copy{i}" for i in range(n)]
        rows["subject"] = rows["case"]
        path = tmp_path / f"m{n}.csv"
        rows.to_csv(path, index=False)
        inf.predict_manifest(models["segmenter"], path, tmp_path / f"warm{n}")  # warm caches and imports
        tracemalloc.start()
        inf.predict_manifest(models["segmenter"], path, tmp_path / f"out{n}", batch_size=2)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[6] < 1.5 * peaks[1], peaks


# ----------------------------------------------------------------------------------------------------
# impute


def test_impute_on_reference_grid_and_hides_the_target(models, cohort) -> None:
    man = read_manifest(cohort)
    case = next(c for c in man.cases if "t2" in c.sequences and len(c.sequences) > 2)
    model = models["autoencoder"]
    img = model.impute(case, "T2WI")  # alias of t2
    ref = nib.load(str(case.sequences["t2"]))  # t2 is the first available: the reference grid
    assert img.shape == ref.shape
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
    vol = np.asarray(img.dataobj)
    assert vol.dtype == np.float32 and np.isfinite(vol).all()
    lo, hi = model.preprocessing.clip
    assert vol.min() >= lo - 1e-6 and vol.max() <= hi + 1e-6
    # the real t2 is never seen: replacing it with noise changes nothing
    arr, aff = ref.get_fdata(dtype=np.float32), ref.affine
    noisy = {s: str(p) for s, p in case.sequences.items()}
    noisy["t2"] = (np.random.default_rng(0).random(arr.shape, dtype=np.float32) * 1000, aff)
    np.testing.assert_array_equal(np.asarray(model.impute(noisy, "t2").dataobj), vol)


def test_impute_with_local_contrast_shrinks_the_same_synthesis(models, cohort) -> None:
    case = next(c for c in read_manifest(cohort).cases if "t2" in c.sequences and len(c.sequences) > 2)
    model = models["autoencoder"]
    plain = np.asarray(model.impute(case, "t2").dataobj)
    same = np.asarray(model.impute(case, "t2", local_contrast=(1.0, 12.0)).dataobj)
    np.testing.assert_array_equal(same, plain)  # gain 1: as decoded
    shrunk = np.asarray(model.impute(case, "t2", local_contrast=(0.5, 12.0)).dataobj)
    assert shrunk.shape == plain.shape and not np.allclose(shrunk, plain)
    # half the contrast around the local mean: the voxel-to-voxel differences shrink
    assert np.abs(np.diff(shrunk, axis=0)).mean() < np.abs(np.diff(plain, axis=0)).mean()
    bad_values = {(1.5, 12.0): "gain must be in", (0.5, 0.0): "sigma must be > 0 mm", (0.5,): "gain, sigma"}
    for bad, msg in bad_values.items():
        with pytest.raises(ConfigError, match=msg):
            model.impute(case, "t2", local_contrast=bad)


def test_impute_manifest_writes_files_and_table(models, cohort, tmp_path) -> None:
    out = tmp_path / "imp"
    summary = inf.impute_manifest(models["autoencoder"], cohort, "t1_art", out)
    man = read_manifest(cohort)
    table = pd.read_csv(summary.table, dtype=str, keep_default_na=False)
    assert len(summary.files) == len(man) == len(table)
    for case, row in zip(man.cases, table.itertuples()):
        img = nib.load(str(out / f"{case.case}_t1_art.nii.gz"))
        ref = _reference(cohort, case)
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
        assert "t1_art" not in row.sources.split(";")
        assert row.target_present == str("t1_art" in case.sequences)


def test_synthesis_of_one_window_equals_reconstruct(models) -> None:
    """The sliding-window tiling is exact when the volume is one window."""
    mae = models["autoencoder"].model
    rng = np.random.default_rng(0)
    image = rng.random((8, ROI, ROI, ROI), dtype=np.float32)
    available = np.array([1, 0, 1, 1, 0, 1, 1, 0], dtype=bool)
    vol = inf.synthesise_volume(mae, image, available, target=5)
    src = torch.from_numpy(available.copy())
    src[5] = False
    ref = mae.reconstruct(torch.from_numpy(image)[None], src[None], ["t1_art"])[0, 5].numpy()
    np.testing.assert_allclose(vol, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(MrfoundError, match="other than the target"):
        inf.synthesise_volume(mae, image, np.eye(8, dtype=bool)[5], target=5)


def test_synthesis_with_local_contrast_is_the_shrunk_synthesis(models) -> None:
    mae = models["autoencoder"].model
    image = np.random.default_rng(1).random((8, ROI, ROI, ROI), dtype=np.float32)
    available = np.array([1, 1, 1, 1, 0, 1, 1, 0], dtype=bool)
    plain = inf.synthesise_volume(mae, image, available, target=5, clip=(0.0, 1.5))
    shrunk = inf.synthesise_volume(
        mae, image, available, target=5, clip=(0.0, 1.5), local_contrast=(0.6, 2.0)
    )
    np.testing.assert_allclose(shrunk, inf.shrink_local_contrast(plain, 0.6, 2.0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(shrunk, plain)


def test_shrink_local_contrast_keeps_the_local_mean_and_scales_the_rest() -> None:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    vol = rng.random((12, 10, 8)).astype(np.float32)
    np.testing.assert_array_equal(inf.shrink_local_contrast(vol, 1.0, 3.0), vol)
    low = gaussian_filter(vol, 2.0, mode="nearest")
    np.testing.assert_allclose(inf.shrink_local_contrast(vol, 0.0, 2.0), low, atol=1e-6)
    half = inf.shrink_local_contrast(vol, 0.5, 2.0)
    np.testing.assert_allclose(half - low, 0.5 * (vol - low), atol=1e-6)
    assert half.dtype == np.float32 and vol.min() <= half.min() and half.max() <= vol.max()
    const = np.full((6, 6, 6), 0.3, np.float32)
    np.testing.assert_allclose(inf.shrink_local_contrast(const, 0.4, 1.5), const, atol=1e-7)
    with pytest.raises(ConfigError, match="gain must be in"):
        inf.shrink_local_contrast(vol, 1.2, 2.0)
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        inf.shrink_local_contrast(vol, 0.5, 0.0)
    # level scales the local mean and leaves the kept contrast as it is
    brighter = inf.shrink_local_contrast(vol, 0.5, 2.0, level=1.2)
    np.testing.assert_allclose(brighter - 1.2 * low, 0.5 * (vol - low), atol=1e-6)
    np.testing.assert_allclose(inf.shrink_local_contrast(const, 1.0, 1.5, level=0.5), 0.5 * const, atol=1e-7)
    for bad in (0.0, 5.0):
        with pytest.raises(ConfigError, match="level must be in"):
            inf.shrink_local_contrast(vol, 0.5, 2.0, level=bad)


def test_local_contrast_mse_matches_the_shrunk_volumes_and_the_choice_follows_the_noise() -> None:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(2)
    shape = (20, 20, 20)
    truth = gaussian_filter(rng.normal(size=shape), 3.0).astype(np.float32)  # smooth anatomy
    region = np.zeros(shape, bool)
    region[4:16, 4:16, 4:16] = True
    sigmas, gains, levels = (1.0, 2.5), (1.0, 0.7, 0.4), (0.9, 1.0, 1.1)
    noisy = truth + 0.5 * truth.std() * rng.normal(size=shape).astype(np.float32)
    table = inf.local_contrast_mse(noisy, truth, region, sigmas, gains, levels)
    assert table.shape == (2, 3, 3)
    for i, sg in enumerate(sigmas):
        for j, g in enumerate(gains):
            for k, lv in enumerate(levels):
                d = (inf.shrink_local_contrast(noisy, g, sg, lv) - truth)[region].astype(np.float64)
                assert table[i, j, k] == pytest.approx(np.mean(d**2), rel=1e-4)
    # a synthesis that carries noise the truth does not have is best shrunk; an exact one is best left alone
    best = inf.choose_local_contrast([table], sigmas, gains, levels)
    assert best["gain"] < 1.0 and best["psnr"] > best["psnr_as_decoded"]
    # one 10 % too dark, alike everywhere, is best brightened by its level
    bright = truth + 1.0
    dark = inf.local_contrast_mse(0.9 * bright, bright, region, sigmas, gains, (1.0, 1.1, 1.2))
    assert inf.choose_local_contrast([dark], sigmas, gains, (1.0, 1.1, 1.2))["level"] == 1.1
    exact_mse = inf.local_contrast_mse(truth, truth, region, sigmas, gains, levels)
    exact = inf.choose_local_contrast([exact_mse], sigmas, gains, levels)
    assert exact["gain"] == 1.0 and exact["level"] == 1.0 and exact["psnr"] == exact["psnr_as_decoded"]
    # a contrast-only table (2-D, as before levels) is read as level 1
    flat = inf.choose_local_contrast([table[:, :, 1]], sigmas, gains)
    assert flat["level"] == 1.0 and flat["psnr"] == pytest.approx(-10 * np.log10(table[:, :, 1].min()))
    with pytest.raises(ConfigError, match="at least one case"):
        inf.choose_local_contrast([], sigmas, gains)
    with pytest.raises(ConfigError, match="region is empty"):
        inf.local_contrast_mse(noisy, truth, np.zeros(shape, bool), sigmas, gains)


@pytest.mark.parametrize("roi,patch", [(64, 16), (32, 8), (16, 8), (96, 16)])
def test_default_overlap_offsets_patch_grids(roi, patch) -> None:
    stride = int(roi * (1 - inf.default_overlap(roi, patch)))  # what MONAI computes
    assert stride % patch == patch // 2 and 0 < stride < roi


def test_resample_to_grid_oblique_matches_axis_aligned() -> None:
    """The MONAI path (oblique grids) and the separable path agree where both apply (a 90° rotation)."""
    rng = np.random.default_rng(1)
    labels = (rng.random((10, 12, 8)) > 0.5).astype(np.float32)
    src = np.diag([2.0, 2.0, 3.0, 1.0])
    rot = np.array([[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    dst = rot @ np.diag([0.7, 0.9, 1.3, 1.0])
    dst[:3, 3] = [21.13, 0.37, 0.29]  # no voxel centre on a half-voxel tie
    fast = inf.resample_to_grid(labels, src, dst, (20, 22, 14), nearest=True)
    tilt = dst.copy()
    tilt[:3, :3] = tilt[:3, :3] @ _rotx(1e-4)  # not axis-aligned any more: MONAI path
    slow = inf.resample_to_grid(labels, src, tilt, (20, 22, 14), nearest=True)
    assert (fast == slow).mean() > 0.99 and fast.sum() > 0


def _rotx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def test_safe_name() -> None:
    assert inf.safe_name("ph00001") == "ph00001"
    odd = inf.safe_name("a/b c")
    assert "/" not in odd and odd.startswith("a_b_c-") and odd != inf.safe_name("a_b c")


def test_masked_psnr_scores_inside_the_mask_only() -> None:
    truth = np.zeros((4, 4, 4), np.float32)
    pred = truth.copy()
    pred[0] = 0.1  # error 0.1 on the first slab only
    pred[3] = 5.0  # a large error outside the mask
    mask = np.zeros_like(truth, dtype=bool)
    mask[:2] = True
    # mean squared error in the mask: half its voxels off by 0.1 -> 0.005 -> 23.01 dB at peak 1
    assert inf.masked_psnr(pred, truth, mask) == pytest.approx(10 * np.log10(1 / 0.005))
    assert inf.masked_psnr(pred, truth, mask, peak=2.0) == pytest.approx(10 * np.log10(4 / 0.005))
    assert np.isnan(inf.masked_psnr(pred, truth, np.zeros_like(mask)))
