"""Content-addressed preprocessing cache."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest

from mrfound.data.cache import PreprocessCache, file_digest
from mrfound.data.manifest import Case
from mrfound.data.preprocess import PreprocessCache as ReExported
from mrfound.data.preprocess import PreprocessConfig
from mrfound.data.readers import write_nifti


def _case(tmp_path, name="a", seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((20, 20, 20), np.float32)
    img[4:16, 4:16, 4:16] = 100 + rng.random((12, 12, 12)) * 10
    img[8:12, 8:12, 8:12] = 300
    mask = (img > 0).astype(np.uint8) + (img >= 300).astype(np.uint8)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    return Case(
        name,
        sequences={
            "t2": write_nifti(tmp_path / f"{name}_t2.nii.gz", img, aff),
            "t1_pv": write_nifti(tmp_path / f"{name}_pv.nii.gz", img * 3, aff),
        },
        mask=write_nifti(tmp_path / f"{name}_mask.nii.gz", mask, aff, dtype=np.uint8),
    )


def test_second_get_is_a_hit_with_equal_arrays(tmp_path):
    assert ReExported is PreprocessCache
    case = _case(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", PreprocessConfig(spacing=3.0))
    first, hit1 = cache.get_with_status(case)
    second, hit2 = cache.get_with_status(case)
    assert (hit1, hit2) == (False, True) and cache.has(case)
    assert second["image"].dtype == np.float32 and second["image"].shape == first["image"].shape
    assert np.allclose(second["image"], first["image"], atol=2e-3)  # stored as float16
    for k in ("available", "mask", "body", "affine", "lesion_center"):
        assert np.array_equal(second[k], first[k]), k
    # no pickle: every member is a plain .npy array loadable with allow_pickle=False
    path = cache.path(case)
    with zipfile.ZipFile(path) as zf:
        assert {n.split(".")[0] for n in zf.namelist()} >= {"image", "available", "mask", "affine", "body"}
    with np.load(path, allow_pickle=False) as z:
        assert z["image"].dtype == np.float16 and z["image"].shape[0] == 2  # only the available channels


def test_key_follows_content_not_names(tmp_path):
    case = _case(tmp_path)
    cfg = PreprocessConfig(spacing=3.0)
    cache = PreprocessCache(tmp_path / "cache", cfg)
    k = cache.key(case)
    # renamed copies of the same bytes (and another case id): same key
    for s, p in case.sequences.items():
        shutil.copy(p, tmp_path / f"copy_{s}.nii.gz")
    shutil.copy(case.mask, tmp_path / "copy_mask.nii.gz")
    moved = Case(
        "other",
        sequences={s: tmp_path / f"copy_{s}.nii.gz" for s in case.sequences},
        mask=tmp_path / "copy_mask.nii.gz",
    )
    assert cache.key(moved) == k
    # roi_size does not change the arrays, the spacing does
    assert PreprocessCache(tmp_path / "cache", PreprocessConfig(spacing=3.0, roi_size=16)).key(case) == k
    assert PreprocessCache(tmp_path / "cache", PreprocessConfig(spacing=2.0)).key(case) != k
    # edited bytes, a lesion point or a dropped sequence change it
    other = _case(tmp_path, "b", seed=1)
    assert (
        cache.key(
            Case(
                "a", sequences={"t2": other.sequences["t2"], "t1_pv": case.sequences["t1_pv"]}, mask=case.mask
            )
        )
        != k
    )
    assert cache.key(Case("a", sequences=case.sequences, mask=case.mask, lesion_xyz=(1, 2, 3))) != k
    assert cache.key(Case("a", sequences={"t2": case.sequences["t2"]}, mask=case.mask)) != k


def test_damaged_entry_is_recomputed(tmp_path):
    case = _case(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", PreprocessConfig(spacing=3.0))
    cache.get(case)
    cache.path(case).write_bytes(b"garbage")
    sample, hit = cache.get_with_status(case)
    assert not hit and sample["image"].shape[0] == 8 and cache.get_with_status(case)[1]


def test_file_digest_of_folder(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "1.dcm").write_bytes(b"a")
    d1 = file_digest(tmp_path / "s")
    (tmp_path / "s" / "2.dcm").write_bytes(b"b")
    assert file_digest(tmp_path / "s") != d1


def test_mapped_entry_matches_full_read_and_damage_is_detected(tmp_path):
    from mrfound.data import cache as cache_mod
    from mrfound.data.cache import expand_compact

    case = _case(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", PreprocessConfig(spacing=3.0))
    full = cache.get(case)
    path = cache.path(case)
    mapped = PreprocessCache.load_compact(path, mmap=True)
    assert isinstance(mapped["image"], np.memmap)  # a crop reads only its ROI
    np.testing.assert_array_equal(expand_compact(mapped)["image"], full["image"])
    del mapped
    # flip one byte inside the stored image data: the CRC check of the first map in a process catches it
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo("image.npy").header_offset
    raw = bytearray(path.read_bytes())
    data = raw.index(b"\x93NUMPY", offset) + 200
    raw[data] ^= 0xFF
    path.write_bytes(bytes(raw))
    cache_mod._VERIFIED.clear()
    with pytest.raises(zipfile.BadZipFile):
        PreprocessCache.load_compact(path, mmap=True)
    compact = cache.get_compact(case)  # recomputed and rewritten
    np.testing.assert_array_equal(expand_compact(compact)["image"], full["image"])
    assert cache.get_with_status(case)[1]
