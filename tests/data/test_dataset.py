"""MRDataset samples and collate_cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrfound.data.dataset import MRDataset, collate_cases
from mrfound.data.manifest import Case, Manifest
from mrfound.data.preprocess import PreprocessConfig
from mrfound.data.readers import write_nifti
from mrfound.errors import ConfigError


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    img = np.zeros((24, 24, 24), np.float32)
    img[3:21, 3:21, 3:21] = 100
    img[10:14, 10:14, 10:14] = 300
    mask = (img > 0).astype(np.uint8) + (img >= 300).astype(np.uint8)
    p = {n: write_nifti(d / f"{n}.nii.gz", img * (i + 1), aff) for i, n in enumerate(("t2", "dwi", "pv"))}
    m = write_nifti(d / "mask.nii.gz", mask, aff, dtype=np.uint8)
    cases = [
        Case("a", subject="s1", center="A", label="hcc", sequences={"t2": p["t2"], "t1_pv": p["pv"]}, mask=m),
        Case("b", subject="s2", center="B", sequences={"dwi": p["dwi"]}, lesion_xyz=(24.0, 24.0, 24.0)),
    ]
    return Manifest.from_cases(cases, d)


def test_lesion_mode_sample(manifest, tmp_path):
    ds = MRDataset(
        manifest, PreprocessConfig(spacing=2.0, roi_size=16), mode="lesion", cache_dir=tmp_path / "c"
    )
    s = ds[0]
    assert s["image"].shape == (8, 16, 16, 16) and s["image"].dtype == torch.float32
    assert s["available"].dtype == torch.bool and s["available"].tolist() == [1, 0, 0, 0, 0, 0, 1, 0]
    assert s["mask"].shape == (1, 16, 16, 16) and s["mask"].dtype == torch.int64
    assert s["mask"][0, 8, 8, 8] == 2  # the lesion is centred
    assert s["label"] == 0 and (s["case"], s["subject"], s["center"]) == ("a", "s1", "A")
    assert not s["image"][1].any()  # missing dwi is zeros
    t = ds[1]
    assert "mask" not in t and t["label"] == -1 and t["available"].tolist()[1]
    # the world lesion point maps to the crop centre: bright lesion voxels there
    assert t["image"][1, 8, 8, 8] > 0.5


def test_collate_different_available_sets(manifest):
    ds = MRDataset(manifest, PreprocessConfig(spacing=2.0, roi_size=12), mode="lesion")
    batch = collate_cases([ds[0], ds[1]])
    assert batch["image"].shape == (2, 8, 12, 12, 12) and batch["available"].shape == (2, 8)
    assert batch["available"].sum(1).tolist() == [2, 1]
    assert batch["label"].tolist() == [0, -1] and batch["label"].dtype == torch.long
    assert "mask" not in batch  # only one sample has a mask
    assert (
        batch["case"] == ["a", "b"] and batch["center"] == ["A", "B"] and batch["affine"].shape == (2, 4, 4)
    )
    both = collate_cases([ds[0], ds[0]])
    assert both["mask"].shape == (2, 1, 12, 12, 12)


def test_random_and_full_modes(manifest, tmp_path):
    cfg = PreprocessConfig(spacing=2.0, roi_size=8)
    ds = MRDataset(manifest, cfg, mode="random", cache_dir=tmp_path / "c", samples_per_case=3, seed=1)
    assert len(ds) == 6
    crops = [ds[i]["affine"][:3, 3] for i in range(3)]
    assert ds[0]["image"].shape == (8, 8, 8, 8)
    again = [ds[i]["affine"][:3, 3] for i in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(crops, again))  # reproducible
    ds.set_epoch(1)
    assert any(
        not torch.equal(a, ds[i]["affine"][:3, 3]) for i, a in enumerate(crops)
    )  # new epoch, new crops
    full = MRDataset(manifest, cfg, mode="full", cache_dir=tmp_path / "c")
    f0, f1 = full[0], full[1]
    assert f0["image"].shape[1:] == f0["mask"].shape[1:]
    batch = collate_cases([f0, f1])  # different volume sizes are zero-padded
    assert batch["image"].shape[2:] == tuple(np.maximum(f0["image"].shape[1:], f1["image"].shape[1:]))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_cases)
    assert next(iter(loader))["image"].shape == (2, 8, 8, 8, 8)


def test_lesion_crops_keep_the_lesion_in_view(manifest, tmp_path):
    cfg = PreprocessConfig(spacing=2.0, roi_size=8)
    kw = {"mode": "random", "cache_dir": tmp_path / "c", "samples_per_case": 40, "seed": 3}
    lesion = MRDataset(manifest, cfg, lesion_fraction=1.0, **kw)
    body = MRDataset(manifest, cfg, **kw)
    # case "a": the lesion (label 2) is voxels 10..13 of the 24^3 grid; a lesion crop is shifted by at
    # most roi // 4 = 2 voxels from the lesion centre, so the lesion is always in view
    seen = [int((lesion[i]["mask"] == 2).sum()) for i in range(40)]
    assert min(seen) > 0
    starts = {tuple(lesion[i]["affine"][:3, 3].tolist()) for i in range(40)}
    assert len(starts) > 1  # shifted, not one fixed crop
    assert sum(int((body[i]["mask"] == 2).sum()) > 0 for i in range(40)) < 40  # body crops miss it
    # case "b" has a lesion point and no mask: the crop centre stays within the shift of that point
    centre = np.array([24.0, 24.0, 24.0])
    for i in range(40, 50):
        corner = lesion[i]["affine"][:3, 3].numpy()
        mid = corner + 2.0 * (8 // 2)  # world position of the crop's centre voxel (2 mm, axis-aligned)
        assert np.all(np.abs(mid - centre) <= 2.0 * 2 + 2.0)
    # 0 (the default) leaves the body crops exactly as they were
    plain = MRDataset(manifest, cfg, lesion_fraction=0.0, **kw)
    assert all(torch.equal(plain[i]["affine"], body[i]["affine"]) for i in range(10))


def test_background_crops_show_air(tmp_path):
    # a small body (8^3 voxels) in a 32^3 volume of air (kept whole: no crop to the body box)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    img = np.zeros((32, 32, 32), np.float32)
    img[12:20, 12:20, 12:20] = 100
    small = Manifest.from_cases(
        [Case("c", sequences={"t2": write_nifti(tmp_path / "t2.nii.gz", img, aff)})], tmp_path
    )
    cfg = PreprocessConfig(spacing=2.0, roi_size=8, crop_to_body=False)
    kw = {"mode": "random", "cache_dir": tmp_path / "c", "samples_per_case": 40, "seed": 3}
    body = MRDataset(small, cfg, **kw)
    anywhere = MRDataset(small, cfg, background_fraction=1.0, **kw)
    # a body crop is centred on a body voxel, so it is never all air; crops centred anywhere sometimes are
    assert all(bool(body[i]["image"].any()) for i in range(40))
    assert any(not bool(anywhere[i]["image"].any()) for i in range(40))
    # 0 (the default) leaves the body crops exactly as they were
    plain = MRDataset(small, cfg, background_fraction=0.0, **kw)
    assert all(torch.equal(plain[i]["affine"], body[i]["affine"]) for i in range(10))


def test_intensity_augment_keeps_crops_and_changes_contrast(manifest, tmp_path):
    cfg = PreprocessConfig(spacing=2.0, roi_size=8)
    kw = {"mode": "random", "cache_dir": tmp_path / "c", "samples_per_case": 6, "seed": 1}
    plain = MRDataset(manifest, cfg, **kw)
    aug = MRDataset(manifest, cfg, intensity_augment=1.0, **kw)
    changed = []
    for i in range(len(plain)):
        p, a = plain[i], aug[i]
        # the same crop (its own random stream) and mask, other intensities in the present sequences only
        assert torch.equal(p["affine"], a["affine"])
        assert ("mask" in p) == ("mask" in a) and ("mask" not in p or torch.equal(p["mask"], a["mask"]))
        present = p["available"]
        changed.append(not torch.allclose(p["image"][present], a["image"][present]))
        assert torch.equal(p["image"][~present], a["image"][~present])
        assert torch.equal(a["image"], aug[i]["image"])  # reproducible
    assert any(changed)  # (most crops show only the uniform body, normalised to 0, which stays 0)
    lesion = MRDataset(manifest, cfg, mode="lesion", cache_dir=tmp_path / "c", intensity_augment=1.0)
    assert not torch.allclose(
        lesion[0]["image"], MRDataset(manifest, cfg, cache_dir=tmp_path / "c")[0]["image"]
    )


def test_organ_augment_changes_the_liver_only(manifest, tmp_path):
    from scipy.ndimage import binary_dilation

    cfg = PreprocessConfig(spacing=2.0, roi_size=8)
    kw = {"mode": "random", "cache_dir": tmp_path / "c", "samples_per_case": 6, "seed": 1}
    plain = MRDataset(manifest, cfg, intensity_augment=0.5, **kw)
    organ = MRDataset(manifest, cfg, intensity_augment=0.5, organ_augment=1.0, **kw)
    only_organ = MRDataset(manifest, cfg, organ_augment=1.0, **kw)
    changed = 0
    for i in range(len(plain)):
        p, o, oo = plain[i], organ[i], only_organ[i]
        assert torch.equal(p["affine"], o["affine"])
        if "mask" not in p:  # a case without a mask is left alone
            assert "mask" not in o and torch.equal(p["image"], o["image"])
            continue
        assert torch.equal(p["mask"], o["mask"])
        liver = p["mask"][0].numpy() == 1
        # beyond the smoothing of the organ weight, every voxel is what it was without the option
        far = ~binary_dilation(liver, iterations=4)
        assert torch.equal(p["image"][:, torch.from_numpy(far)], o["image"][:, torch.from_numpy(far)])
        if liver.any():
            present = oo["available"]
            plain_i = MRDataset(manifest, cfg, **kw)[i]
            changed += not torch.allclose(oo["image"][present], plain_i["image"][present])
        assert torch.equal(o["image"], organ[i]["image"])  # reproducible
    assert changed > 0
    with pytest.raises(ConfigError, match="organ_augment"):
        MRDataset(manifest, organ_augment=1.5)


def test_spatial_augment_rotates_crops_with_their_masks(manifest, tmp_path):
    cfg = PreprocessConfig(spacing=2.0, roi_size=8)
    kw = {"cache_dir": tmp_path / "c", "samples_per_case": 4, "seed": 1}
    for mode in ("random", "lesion"):
        plain = MRDataset(manifest, cfg, mode=mode, **kw)
        warped = MRDataset(manifest, cfg, mode=mode, spatial_augment=1.0, **kw)
        changed = 0
        for i in range(len(plain)):
            p, w = plain[i], warped[i]
            assert w["image"].shape == p["image"].shape and torch.equal(w["available"], p["available"])
            assert torch.equal(w["image"], warped[i]["image"])  # reproducible
            # the ROI is placed exactly as without the option (near the border too), so the same affine
            np.testing.assert_allclose(w["affine"].numpy(), p["affine"].numpy(), atol=1e-9)
            changed += not torch.allclose(w["image"], p["image"])
            if "mask" in p:
                assert w["mask"].shape == p["mask"].shape and w["mask"].dtype == p["mask"].dtype
                assert set(w["mask"].unique().tolist()) <= set(range(3))
        assert changed > 0, mode
    # lesion-centred random crops keep the ROI's jitter: the same ROI before rotation, every item
    jit = MRDataset(manifest, cfg, mode="random", lesion_fraction=1.0, **kw)
    jit_w = MRDataset(manifest, cfg, mode="random", lesion_fraction=1.0, spatial_augment=1.0, **kw)
    for i in range(len(jit)):
        np.testing.assert_allclose(jit_w[i]["affine"].numpy(), jit[i]["affine"].numpy(), atol=1e-9)
    half = MRDataset(manifest, cfg, mode="random", spatial_augment=0.5, **kw)
    plain = MRDataset(manifest, cfg, mode="random", **kw)
    same = [torch.equal(half[i]["image"], plain[i]["image"]) for i in range(len(plain))]
    assert any(same) and not all(same)  # the unchosen items are the plain crops
    with pytest.raises(ConfigError, match="spatial_augment"):
        MRDataset(manifest, spatial_augment=2.0)
    with pytest.raises(ConfigError, match="spatial_augment needs crops"):
        MRDataset(manifest, mode="full", spatial_augment=0.5)


def test_bad_arguments(manifest):
    with pytest.raises(ConfigError):
        MRDataset(manifest, mode="crop")
    with pytest.raises(ConfigError, match="lesion_fraction"):
        MRDataset(manifest, mode="random", lesion_fraction=1.5)
    with pytest.raises(ConfigError, match="background_fraction"):
        MRDataset(manifest, mode="random", lesion_fraction=0.5, background_fraction=0.6)
    with pytest.raises(ConfigError, match="intensity_augment"):
        MRDataset(manifest, intensity_augment=-0.1)
    with pytest.raises(IndexError):
        MRDataset(manifest)[5]
