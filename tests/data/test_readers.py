"""Readers: NIfTI and DICOM into float32 + RAS affine."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from mrfound.data.readers import (
    ImageReadError,
    lps_to_ras,
    read_header,
    read_image,
    sniff_kind,
    voxel_to_world,
    world_bounds,
    world_to_voxel,
    write_nifti,
)

DCM = "misc_real_mr/siemens_abdomen_t1_post_contrast.dcm"


def test_nifti_roundtrip_and_squeeze(tmp_path):
    aff = np.diag([-1.5, 1.0, 2.0, 1.0])
    aff[:3, 3] = [10, -20, 30]
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    p = write_nifti(tmp_path / "a.nii.gz", arr, aff)
    data, affine = read_image(p)
    assert data.dtype == np.float32 and data.shape == (4, 5, 6)
    assert np.array_equal(data, arr) and np.allclose(affine, aff)
    assert read_header(p).shape == (4, 5, 6) and sniff_kind(p) == "nifti"
    nib.save(nib.Nifti1Image(arr[..., None].astype(np.float32), aff), str(tmp_path / "b.nii"))
    data4, _ = read_image(tmp_path / "b.nii")  # 4D with a trailing singleton: squeezed
    assert data4.shape == (4, 5, 6)


@pytest.mark.parametrize("kind", ["2d", "4d", "text", "truncated", "singular", "missing"])
def test_bad_files_raise_one_line(tmp_path, kind):
    p = tmp_path / "x.nii.gz"
    if kind == "2d":
        nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(p))
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), str(p))
    elif kind == "text":
        p.write_text("not an image")
    elif kind == "truncated":
        write_nifti(p, np.random.default_rng(0).random((20, 20, 20)), np.eye(4))
        raw = gzip.decompress(p.read_bytes())
        p.write_bytes(gzip.compress(raw[: len(raw) // 2])[:-8])
    elif kind == "singular":
        img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None)
        img.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # sform wins over the qform
        nib.save(img, str(p))
    expect = {
        "2d": "not 3D",
        "4d": "not 3D",
        "text": "not a NIfTI",
        "truncated": "corrupt",
        "singular": "singular",
        "missing": "not found",
    }[kind]
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert expect in str(e.value) and "\n" not in str(e.value) and str(p) in str(e.value)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)


def test_affine_helpers():
    aff = np.array([[0, 0, 2.0, 5], [1.5, 0, 0, -3], [0, -1, 0, 7], [0, 0, 0, 1]])
    pts = np.array([[1.0, 2.0, 3.0], [0, 0, 0]])
    assert np.allclose(world_to_voxel(voxel_to_world(pts, aff), aff), pts)
    lo, hi = world_bounds((10, 10, 10), np.eye(4))
    assert np.allclose(lo, -0.5) and np.allclose(hi, 9.5)
    assert np.allclose(lps_to_ras(np.eye(4)), np.diag([-1, -1, 1, 1]))


def test_dicom_single_file_lps_to_ras(shared_data):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("SimpleITK")
    path = shared_data / DCM
    if not path.exists():
        pytest.skip(f"{path} is absent")
    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    data, affine = read_image(path)
    assert data.shape == (int(ds.Columns), int(ds.Rows), 1) and data.dtype == np.float32
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    lps = lambda v: np.array([-v[0], -v[1], v[2]])  # noqa: E731
    # voxel (0,0,0) is the first pixel's centre; i steps along the row direction by the column spacing
    assert np.allclose(voxel_to_world(np.zeros(3), affine), lps(ipp), atol=1e-4)
    assert np.allclose(
        voxel_to_world(np.array([1.0, 0, 0]), affine), lps(ipp + iop[:3] * col_spacing), atol=1e-4
    )
    assert np.allclose(
        voxel_to_world(np.array([0, 1.0, 0]), affine), lps(ipp + iop[3:] * row_spacing), atol=1e-4
    )
    ref = pydicom.dcmread(str(path)).pixel_array  # (rows, cols)
    assert np.array_equal(data[:, :, 0], ref.T.astype(np.float32))
    assert read_header(path).shape == data.shape and sniff_kind(path) == "dicom"


def test_dicom_series_folder(shared_data, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("SimpleITK")
    path = shared_data / DCM
    if not path.exists():
        pytest.skip(f"{path} is absent")
    series = tmp_path / "series"
    series.mkdir()
    base = pydicom.dcmread(str(path))
    ipp0 = np.array(base.ImagePositionPatient, dtype=float)
    for k in range(3):  # three slices 5 mm apart along the slice normal (+z LPS)
        ds = pydicom.dcmread(str(path))
        ds.ImagePositionPatient = [float(v) for v in ipp0 + np.array([0, 0, 5.0 * k])]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = f"{base.SOPInstanceUID}.{k + 1}"
        ds.save_as(str(series / f"slice{k}.dcm"))
    assert sniff_kind(series) == "dicom_series"
    data, affine = read_image(series)
    assert data.shape == (int(base.Columns), int(base.Rows), 3)
    assert np.allclose(
        voxel_to_world(np.array([0, 0, 2.0]), affine), [-ipp0[0], -ipp0[1], ipp0[2] + 10], atol=1e-3
    )
    single, _ = read_image(path)
    assert np.array_equal(data[..., 1], single[..., 0])
