"""Preprocessing: one common RAS grid through the affines, normalisation, crops."""

from __future__ import annotations

import numpy as np
import pytest

from mrfound.data.manifest import Case
from mrfound.data.preprocess import (
    PreprocessConfig,
    crop_lesion,
    load_case_arrays,
    log_otsu_threshold,
    otsu_threshold,
    preprocess_case,
    random_crop,
)
from mrfound.data.readers import world_to_voxel, write_nifti
from mrfound.errors import ConfigError

CENTRE = np.array([12.0, -8.0, 15.0])  # sphere centre, world mm (RAS)
RADIUS = 14.0
BODY = np.array([60.0, 45.0, 40.0])  # ellipsoid half-axes around the origin


def _rot_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def _world(shape, affine):
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def _phantom(shape, affine, body_level, lesion_level):
    xyz = _world(shape, affine)
    inside_body = (((xyz / BODY) ** 2).sum(-1)) <= 1
    inside_sphere = np.linalg.norm(xyz - CENTRE, axis=-1) <= RADIUS
    img = np.where(inside_body, body_level, 0.0) + np.where(inside_sphere, lesion_level - body_level, 0.0)
    mask = inside_body.astype(np.uint8) + inside_sphere.astype(np.uint8)  # 1 liver, 2 lesion
    return img.astype(np.float32), mask


def _grid(axes: np.ndarray, spacing, fov_lo, fov_hi):
    """Affine with voxel axes ``axes`` (columns, unit vectors) and spacings, covering a world box."""
    direction = axes * np.asarray(spacing, dtype=float)
    corners = np.array(
        [
            [x, y, z]
            for x in (fov_lo[0], fov_hi[0])
            for y in (fov_lo[1], fov_hi[1])
            for z in (fov_lo[2], fov_hi[2])
        ]
    )
    vox = np.linalg.solve(direction, corners.T).T  # voxel coords of corners with zero origin
    lo = vox.min(0)
    shape = tuple(int(np.ceil(v)) + 1 for v in vox.max(0) - lo)
    affine = np.eye(4)
    affine[:3, :3] = direction
    affine[:3, 3] = direction @ lo
    return affine, shape


@pytest.fixture(scope="module")
def aligned_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("align")
    grids = {
        # RAS axial, fine in-plane, thick slices
        "t2": _grid(np.eye(3), (1.2, 1.2, 3.0), (-70, -55, -45), (70, 55, 45)),
        # LPS axial (x, y axes flipped), another spacing and a shifted, wider field of view
        "t1_pv": _grid(np.diag([-1.0, -1.0, 1.0]), (1.6, 1.6, 2.5), (-80, -50, -48), (66, 62, 50)),
        # coronal: i -> R, j -> S, k -> A (slices along A), coarse
        "dwi": _grid(
            np.array([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]]), (2.0, 2.0, 4.0), (-72, -60, -46), (72, 58, 46)
        ),
        # oblique axial, rotated 12 degrees about S
        "t1_art": _grid(_rot_z(12), (1.5, 1.5, 3.0), (-75, -62, -45), (75, 62, 45)),
    }
    levels = {"t2": (100, 320), "t1_pv": (500, 1800), "dwi": (40, 130), "t1_art": (2000, 7000)}
    paths = {}
    for seq, (affine, shape) in grids.items():
        img, _ = _phantom(shape, affine, *levels[seq])
        paths[seq] = write_nifti(d / f"{seq}.nii.gz", img, affine)
    # the mask lies on its own grid (RAS, 1 x 1 x 2 mm, smaller field of view)
    m_aff, m_shape = _grid(np.eye(3), (1.0, 1.0, 2.0), (-65, -50, -42), (65, 50, 42))
    _, mask = _phantom(m_shape, m_aff, 1, 2)
    mask_path = write_nifti(d / "mask.nii.gz", mask, m_aff, dtype=np.uint8)
    return paths, mask_path


def _centroid(binary: np.ndarray) -> np.ndarray:
    return np.argwhere(binary).mean(0)


def test_sphere_centre_agrees_across_sequences_and_mask(aligned_case):
    paths, mask_path = aligned_case
    case = Case("c1", sequences=paths, mask=mask_path)
    out = preprocess_case(case, PreprocessConfig(spacing=1.5))
    assert out["image"].dtype == np.float32 and out["image"].shape[0] == 8
    assert out["available"].tolist() == [True, True, False, False, False, True, True, False]
    assert np.allclose(np.abs(np.diag(out["affine"])[:3]), 1.5) and np.all(np.diag(out["affine"])[:3] > 0)
    truth = world_to_voxel(CENTRE, out["affine"])
    mask_c = _centroid(out["mask"][0] == 2)
    assert np.linalg.norm(mask_c - truth) < 1.0
    assert np.allclose(out["lesion_center"], mask_c)
    for i, seq in enumerate(("t2", "dwi", "t1_in", "t1_opp", "t1_pre", "t1_art", "t1_pv", "t1_del")):
        if seq not in paths:
            assert not out["image"][i].any()
            continue
        c = _centroid(out["image"][i] > 0.5)
        assert np.linalg.norm(c - mask_c) < 1.0, (seq, c, mask_c)
        assert np.linalg.norm(c - truth) < 1.0, (seq, c, truth)


def test_lesion_point_without_mask_and_crop(aligned_case):
    paths, _ = aligned_case
    out = load_case_arrays(
        {"T2WI": paths["t2"], "C+V": paths["t1_pv"]}, PreprocessConfig(spacing=2.0), lesion_xyz=tuple(CENTRE)
    )
    assert out["mask"] is None
    assert np.allclose(out["lesion_center"], world_to_voxel(CENTRE, out["affine"]))
    roi = crop_lesion(out, 24)
    assert roi["image"].shape == (8, 24, 24, 24) and roi["body"].shape == (24, 24, 24)
    c = _centroid(roi["image"][0] > 0.5)
    assert np.linalg.norm(c - 12) < 1.0  # the lesion voxel sits at roi // 2
    # the crop's affine still maps to the same world point
    assert np.allclose(world_to_voxel(CENTRE, roi["affine"]), roi["lesion_center"])


def test_normalisation_and_body(aligned_case):
    paths, _ = aligned_case
    out = load_case_arrays({"t2": paths["t2"]}, PreprocessConfig(spacing=2.0))
    img, body = out["image"][0], out["body"]
    assert img.min() >= 0.0 and img.max() <= 1.5
    inside = img[body]
    # liver (100) near the low end (partial-volume edges lower the 1st percentile), lesion (320) at 1
    assert 0.0 < np.median(inside) < 0.3
    assert np.isclose(np.percentile(inside, 99.5), 1.0, atol=0.05)
    assert not img[~body].any()
    # the grid was cropped to the body (+ margin): ellipsoid 120 x 90 x 80 mm, margin 10 mm each side
    extent = np.asarray(body.shape) * 2.0
    assert np.all(extent <= np.array([120, 90, 80]) + 2 * 10 + 2 * 8 + 1)
    lo, hi = out["intensity_range"][0]
    assert 0 < lo < 100 and np.isclose(hi, 320, atol=1)


def test_array_inputs_equal_file_inputs(aligned_case):
    import nibabel as nib

    paths, _ = aligned_case
    img = nib.load(str(paths["t2"]))
    a = load_case_arrays({"t2": paths["t2"]}, PreprocessConfig(spacing=3.0))
    b = load_case_arrays({"t2": (img.get_fdata(dtype=np.float32), img.affine)}, PreprocessConfig(spacing=3.0))
    assert np.array_equal(a["image"], b["image"]) and np.allclose(a["affine"], b["affine"])


def test_random_crop_inside_body_and_padding():
    rng = np.random.default_rng(0)
    body = np.zeros((20, 20, 20), bool)
    body[5:15, 5:15, 5:15] = True
    sample = {
        "image": np.ones((2, 20, 20, 20), np.float32),
        "available": np.array([True, False]),
        "mask": None,
        "affine": np.eye(4),
        "lesion_center": None,
        "body": body,
    }
    for _ in range(5):
        roi = random_crop(sample, 8, rng)
        assert roi["image"].shape == (2, 8, 8, 8) and roi["body"].any()
        assert roi["image"].all()  # fits inside the volume: no padding
    # a body crop is centred on a body voxel; anywhere=True centres some crops in the air around it
    centre_in_body = [bool(random_crop(sample, 8, rng)["body"][4, 4, 4]) for _ in range(60)]
    anywhere = [bool(random_crop(sample, 8, rng, anywhere=True)["body"][4, 4, 4]) for _ in range(60)]
    assert all(centre_in_body) and not all(anywhere) and any(anywhere)
    # context: the same ROI (placed by the same draws, shifted to fit as without it) plus a margin
    textured = {**sample, "image": np.random.default_rng(1).random((2, 20, 20, 20)).astype(np.float32)}
    for seed in range(10):
        roi = random_crop(textured, 8, np.random.default_rng(seed))
        wide = random_crop(textured, 8, np.random.default_rng(seed), context=5)
        assert wide["image"].shape == (2, 18, 18, 18)
        np.testing.assert_array_equal(wide["image"][:, 5:13, 5:13, 5:13], roi["image"])
        np.testing.assert_allclose(wide["affine"][:3, 3] + 5, roi["affine"][:3, 3])
    big = random_crop(sample, 32, rng)  # larger than the volume: zero padded
    assert big["image"].shape == (2, 32, 32, 32) and big["image"].sum() == 2 * 20**3
    edge = crop_lesion({**sample, "lesion_center": np.array([0.0, 0.0, 0.0])}, 8)
    assert edge["image"][:, :4].sum() == 0 and edge["image"][:, 4:, 4:, 4:].all()
    assert np.allclose(edge["affine"][:3, 3], [-4, -4, -4])


def test_config_roundtrip_and_errors():
    cfg = PreprocessConfig(spacing=2.0, percentiles=(2, 98))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert "roi_size" not in cfg.cache_dict()
    with pytest.raises(ConfigError):
        PreprocessConfig.from_dict({"spacing": 1.0, "bogus": 1})
    with pytest.raises(ConfigError):
        PreprocessConfig(percentiles=(99, 1))
    with pytest.raises(ConfigError):
        load_case_arrays({"flair": (np.zeros((4, 4, 4)), np.eye(4))})


def test_log_otsu_keeps_a_dark_organ():
    # air (noise near 1), a large dark organ (100, like the liver on fat-suppressed T2), bright tissue (800)
    rng = np.random.default_rng(0)
    img = np.abs(rng.normal(0, 2.0, (40, 40, 40))).astype(np.float32)
    img[5:35, 5:35, 5:35] = 800 + rng.normal(0, 20, (30, 30, 30))
    img[8:32, 8:32, 8:20] = 100 + rng.normal(0, 10, (24, 24, 12))
    organ = np.zeros(img.shape, bool)
    organ[8:32, 8:32, 8:20] = True
    assert otsu_threshold(img) > 150 > log_otsu_threshold(img) > 10
    aff = np.eye(4)
    old = load_case_arrays(
        {"t2": (img, aff)}, PreprocessConfig(spacing=1.0, crop_to_body=False, foreground="otsu")
    )
    new = load_case_arrays({"t2": (img, aff)}, PreprocessConfig(spacing=1.0, crop_to_body=False))
    # raw Otsu: the organ is below the foreground's 1st percentile and clipped to 0; log-Otsu keeps it
    assert np.median(old["image"][0][organ]) == 0.0 and not old["body"][organ].any()
    assert np.median(new["image"][0][organ]) > 0.02 and new["body"][organ].all()
    # air stays outside the body either way
    assert not new["body"][:3].any()
    # log-Otsu is the default; a *saved* config without the field predates it and means raw Otsu, whose
    # cache key is the one it had before the field existed
    assert PreprocessConfig().foreground == "log_otsu"
    legacy = PreprocessConfig(spacing=2.0).to_dict()
    legacy.pop("foreground")
    assert PreprocessConfig.from_saved(legacy).foreground == "otsu"
    assert PreprocessConfig.from_dict(legacy).foreground == "log_otsu"  # settings, not a saved config
    assert PreprocessConfig.from_saved(PreprocessConfig().to_dict()).foreground == "log_otsu"
    assert PreprocessConfig.from_saved({}) == PreprocessConfig()  # nothing saved: today's defaults
    assert "foreground" not in PreprocessConfig(foreground="otsu").cache_dict()
    assert PreprocessConfig().cache_dict()["foreground"] == "log_otsu"
    with pytest.raises(ConfigError, match="foreground"):
        PreprocessConfig(foreground="kmeans")


def test_log_otsu_keeps_the_dark_liver_of_real_chaos_t2(shared_data):
    # CHAOS T2-SPIR cases 15 and 36: raw Otsu puts 10 % and 1 % of the liver in the foreground, so the
    # foreground's 1st percentile lies above the liver and the organ is clipped to 0
    import nibabel as nib

    chaos = shared_data / "chaos_t2"
    if not chaos.is_dir():
        pytest.skip(f"{chaos} is absent")
    for case in ("15", "36"):
        img = nib.load(str(chaos / "images" / f"chaos_{case}_t2.nii.gz"))
        lab = nib.load(str(chaos / "labels" / f"chaos_{case}_labels.nii.gz"))
        arrays = {"t2": (np.asarray(img.dataobj, np.float32), img.affine)}
        liver = {}
        for fg in ("otsu", "log_otsu"):
            out = load_case_arrays(
                arrays,
                PreprocessConfig(spacing=4.0, foreground=fg),
                mask=(np.asarray(lab.dataobj), lab.affine),
            )
            liver[fg] = float(np.median(out["image"][0][out["mask"][0] == 1]))
        assert liver["otsu"] < 0.01 < 0.05 < liver["log_otsu"], (case, liver)


def test_otsu_separates_two_levels():
    v = np.concatenate([np.zeros(1000), np.full(500, 10.0)]) + np.random.default_rng(0).normal(0, 0.5, 1500)
    t = otsu_threshold(v)
    assert 2 < t < 8


@pytest.mark.parametrize("nearest", [False, True])
def test_separable_resample_equals_monai(nearest):
    from mrfound.data.preprocess import _meta, _resampler, _template, axis_aligned_map, separable_resample

    rng = np.random.default_rng(3)
    src = rng.random((13, 11, 7)).astype(np.float32)
    if nearest:
        src = np.rint(src * 3)
    src_aff = np.array(
        [[0, 0, -3.0, 20], [1.3, 0, 0, -7], [0, -1.1, 0, 4], [0, 0, 0, 1]]
    )  # permuted, flipped
    dst_aff = np.diag([0.9, 1.7, 1.2, 1.0])
    dst_aff[:3, 3] = [-6.3, -5.2, -9.1]
    shape = (14, 9, 12)
    fast = separable_resample(src, src_aff, dst_aff, shape, nearest=nearest)
    mode = "nearest" if nearest else "bilinear"
    ref = _resampler(["x"], [mode])({"x": _meta(src, src_aff), "__grid__": _template(shape, dst_aff)})["x"]
    ref = np.asarray(ref)[0]
    assert fast.shape == ref.shape == shape and np.abs(fast).sum() > 0
    if nearest:
        assert np.mean(fast == ref) > 0.995  # ties at exactly .5 may round differently in float32
    else:
        assert np.allclose(fast, ref, atol=1e-4)
    assert axis_aligned_map(src_aff, dst_aff) is not None
    oblique = dst_aff.copy()
    oblique[:3, :3] = _rot_z(5) @ oblique[:3, :3]
    assert separable_resample(src, src_aff, oblique, shape) is None


def test_fast_and_monai_paths_agree(aligned_case):
    paths, mask_path = aligned_case
    seqs = {k: paths[k] for k in ("t2", "t1_pv", "dwi")}
    a = load_case_arrays(seqs, PreprocessConfig(spacing=3.0), mask=mask_path)
    b = load_case_arrays(seqs, PreprocessConfig(spacing=3.0, fast_resample=False), mask=mask_path)
    assert np.allclose(a["affine"], b["affine"]) and a["image"].shape == b["image"].shape
    assert np.abs(a["image"] - b["image"]).max() < 1e-3
    # nearest-neighbour ties (a grid point exactly halfway between two mask voxels) may round either way
    assert np.mean(a["mask"] == b["mask"]) > 0.99
    assert np.linalg.norm(_centroid(a["mask"][0] == 2) - _centroid(b["mask"][0] == 2)) < 0.5


def test_non_finite_voxels_do_not_poison_the_output():
    img = np.zeros((12, 12, 12), np.float32)
    img[2:10, 2:10, 2:10] = 100
    img[5, 5, 5] = np.nan
    img[6, 6, 6] = np.inf
    out = load_case_arrays({"t2": (img, np.eye(4))}, PreprocessConfig(spacing=1.0))
    assert np.isfinite(out["image"]).all() and out["image"][0].max() > 0
