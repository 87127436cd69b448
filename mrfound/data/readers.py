"""Image readers: NIfTI (nibabel) and DICOM (SimpleITK), all in the NIfTI RAS+ world frame.

Every reader returns a ``float32`` array indexed ``(i, j, k)`` (the file's voxel axes) and a 4x4
``float64`` affine mapping voxel indices to world millimetres in RAS+ (+x towards the patient's
Right, +y Anterior, +z Superior), the frame of the NIfTI affine and of the manifest's
``lesion_x/y/z`` columns.

* NIfTI: nibabel's ``img.affine`` (the sform if set, else the qform) is used unchanged.
* DICOM: DICOM patient coordinates are LPS (+x Left, +y Posterior, +z Superior); the affine built
  from origin, direction and spacing is converted with :func:`lps_to_ras` (negate world x and y),
  as ITK, MONAI's ``ITKReader`` and dcm2niix do, so a DICOM series and its NIfTI conversion agree.

A 4D image whose last axis has length 1 is squeezed to 3D; other non-3D images are rejected.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrfound.errors import ManifestError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ImageReadError(ManifestError):
    """An image file is missing, not an image, corrupt, or not a usable 3D volume."""


@dataclass
class ImageHeader:
    """Geometry of an image, read without its voxel data where the format allows.

    Attributes:
        shape: Spatial shape (3 ints) after squeezing a trailing singleton 4th axis.
        affine: 4x4 voxel -> world (RAS+, mm) matrix.
        kind: ``"nifti"``, ``"dicom"`` (one file) or ``"dicom_series"`` (a folder).
        raw_shape: Shape as stored in the file (may be 4D or 2D).
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    kind: str
    raw_shape: tuple[int, ...]


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """Convert a voxel -> LPS world affine (DICOM/ITK) to voxel -> RAS world (NIfTI)."""
    return _LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def is_nifti_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` ends in ``.nii`` or ``.nii.gz``."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_series_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding DICOM files (``.dcm`` or the ``DICM`` preamble magic)."""
    p = Path(path)
    if not p.is_dir():
        return False
    for child in sorted(p.iterdir())[:64]:
        if child.is_file() and (child.suffix.lower() == ".dcm" or _has_dicom_magic(child)):
            return True
    return False


def sniff_kind(path: str | os.PathLike) -> str:
    """Identify a file by its content (not its name).

    Returns:
        ``"nifti"`` (NIfTI-1/2, plain or gzipped), ``"dicom"``, ``"dicom_series"`` (a folder of DICOM
        files), ``"folder"`` (any other folder), or ``"unknown"``.
    """
    p = Path(path)
    if p.is_dir():
        return "dicom_series" if is_dicom_series_dir(p) else "folder"
    with open(p, "rb") as f:
        head = f.read(540)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(p, "rb") as g:
                head = g.read(540)
        except (OSError, EOFError):
            return "unknown"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if len(head) >= 8 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return "nifti"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return "unknown"


def _squeeze_shape(raw: tuple[int, ...], path: Path) -> tuple[int, ...]:
    if len(raw) == 4 and raw[3] == 1:
        return _check_size(tuple(raw[:3]), path)
    if len(raw) == 3:
        return _check_size(tuple(raw), path)
    raise ImageReadError(f"image is not 3D (shape {tuple(int(s) for s in raw)})", path=str(path))


MAX_AXIS_VOXELS = 4096
"""No MRI volume has more voxels along an axis; such a header is refused before its voxels are read."""


def _check_size(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """Refuse implausible shapes from the header alone (a bad header must not exhaust memory)."""
    shown = "x".join(str(int(s)) for s in shape)
    if any(s > MAX_AXIS_VOXELS for s in shape):
        raise ImageReadError(
            f"image too large ({shown} voxels; at most {MAX_AXIS_VOXELS} per axis)", path=str(path)
        )
    if sum(s >= 2 for s in shape) < 2:
        raise ImageReadError(
            f"image too small ({shown} voxels; a volume needs at least 2 voxels along two axes)",
            path=str(path),
        )
    return shape


def _check_affine(affine: np.ndarray, path: Path) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise ImageReadError("affine has NaN/Inf entries", path=str(path))
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise ImageReadError("affine is singular (zero voxel size or collinear axes)", path=str(path))
    return affine


def _open_nifti(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises many types for bad headers
        raise ImageReadError(f"unreadable NIfTI header ({type(e).__name__}: {e})", path=str(path)) from e


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Read an image's geometry cheaply (NIfTI: header only; DICOM: metadata only).

    Raises:
        ImageReadError: missing, not an image, unreadable header, not 3D, or a bad affine.
    """
    p = Path(path)
    kind = _kind_or_raise(p)
    if kind == "nifti":
        img = _open_nifti(p)
        raw = tuple(int(s) for s in img.shape)
        shape = _squeeze_shape(raw, p)
        return ImageHeader(shape, _check_affine(img.affine, p), kind, raw)
    img = _sitk_read(p, kind, header_only=True)
    return _sitk_header(img, p, kind)


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D image as ``(float32 array (I, J, K), 4x4 RAS affine)``.

    Args:
        path: ``.nii``/``.nii.gz`` file, a single DICOM file or a DICOM series folder.

    Raises:
        ImageReadError: for every way the file can be unusable (one line naming the file).
    """
    p = Path(path)
    kind = _kind_or_raise(p)
    if kind == "nifti":
        img = _open_nifti(p)
        shape = _squeeze_shape(tuple(int(s) for s in img.shape), p)
        affine = _check_affine(img.affine, p)
        try:
            data = np.asarray(img.get_fdata(dtype=np.float32))
        except Exception as e:  # truncated gzip, short file, bad scaling...
            raise ImageReadError(
                f"corrupt NIfTI: voxel data unreadable ({type(e).__name__}: {e})", path=str(p)
            ) from e
        return data.reshape(shape), affine
    img = _sitk_read(p, kind, header_only=False)
    header = _sitk_header(img, p, kind)
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img)  # (k, j, i) for 3D
    if arr.ndim == 2:
        arr = arr[None]
    data = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)), dtype=np.float32)
    return data.reshape(header.shape), header.affine


def _kind_or_raise(p: Path) -> str:
    if not p.exists():
        raise ImageReadError("file not found", path=str(p))
    if not os.access(p, os.R_OK):
        raise ImageReadError("permission denied (not readable)", path=str(p))
    try:
        kind = sniff_kind(p)
    except OSError as e:
        raise ImageReadError(f"unreadable ({e.strerror or e})", path=str(p)) from e
    if kind == "folder":
        raise ImageReadError("is a folder, not a NIfTI file or a DICOM series folder", path=str(p))
    if kind == "unknown":
        raise ImageReadError("not a NIfTI or DICOM file (no NIfTI/DICOM magic bytes)", path=str(p))
    return kind


def _sitk_read(p: Path, kind: str, header_only: bool):
    try:
        import SimpleITK as sitk
    except ImportError as e:  # the optional 'dicom' extra
        raise ImageReadError(
            "reading DICOM needs SimpleITK: pip install 'mrfound[dicom]'", path=str(p)
        ) from e
    try:
        if kind == "dicom_series":
            reader = sitk.ImageSeriesReader()
            ids = reader.GetGDCMSeriesIDs(str(p))
            if not ids:
                raise ImageReadError("folder holds no readable DICOM series", path=str(p))
            if len(ids) > 1:
                raise ImageReadError(
                    f"folder holds {len(ids)} DICOM series; point at one series folder", path=str(p)
                )
            files = reader.GetGDCMSeriesFileNames(str(p), ids[0])
            reader.SetFileNames(files)
            return reader.Execute()
        if header_only:
            r = sitk.ImageFileReader()
            r.SetFileName(str(p))
            r.ReadImageInformation()
            return r
        return sitk.ReadImage(str(p))
    except ImageReadError:
        raise
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ImageReadError(f"unreadable DICOM ({msg})", path=str(p)) from e


def _sitk_header(img, p: Path, kind: str) -> ImageHeader:
    """Geometry of a SimpleITK image or ImageFileReader (same accessor names)."""
    size = tuple(int(s) for s in img.GetSize())
    ncomp = (
        img.GetNumberOfComponents()
        if hasattr(img, "GetNumberOfComponents")
        else img.GetNumberOfComponentsPerPixel()
    )
    if ncomp != 1:
        raise ImageReadError("DICOM image is not greyscale (vector/RGB pixels)", path=str(p))
    dim = len(size)
    spacing = np.array(img.GetSpacing(), dtype=np.float64)
    origin = np.array(img.GetOrigin(), dtype=np.float64)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    if dim == 2:  # a single slice: add the slice-normal axis
        size = size + (1,)
        d3 = np.eye(3)
        d3[:2, :2] = direction
        d3[:, 2] = np.cross(d3[:, 0], d3[:, 1])
        direction, spacing, origin = d3, np.append(spacing, 1.0), np.append(origin, 0.0)
    if dim not in (2, 3):
        raise ImageReadError(f"image is not 3D (shape {size})", path=str(p))
    if size[2] == 1:  # one slice: its thickness is the only sensible k spacing
        thick = _slice_thickness(img)
        if thick:
            spacing[2] = thick
    _check_size(size, p)
    aff = np.eye(4)
    aff[:3, :3] = direction @ np.diag(spacing)
    aff[:3, 3] = origin
    return ImageHeader(size, _check_affine(lps_to_ras(aff), p), kind, size)


def _slice_thickness(img) -> float | None:
    for key in ("0018|0088", "0018|0050"):  # spacing between slices, slice thickness
        try:
            if img.HasMetaDataKey(key):
                v = float(img.GetMetaData(key).strip())
                if v > 0:
                    return v
        except (RuntimeError, ValueError, AttributeError):
            continue
    return None


def write_nifti(
    path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, dtype: np.dtype | type | None = None
) -> Path:
    """Write a 3D array as NIfTI atomically (sform and qform set to ``affine``).

    Args:
        path: Target ``.nii`` or ``.nii.gz`` path.
        array: Voxel data indexed ``(i, j, k)``.
        affine: 4x4 voxel -> RAS world matrix.
        dtype: On-disk data type (default: the array's).

    Returns:
        The written path.
    """
    import nibabel as nib

    from mrfound.utils.io import atomic_write_with

    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return atomic_write_with(path, lambda tmp: nib.save(img, str(tmp)))


def world_bounds(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world box (min xyz, max xyz) covering the voxel centres' outer half-voxel faces."""
    lo = np.array([-0.5, -0.5, -0.5])
    hi = np.asarray(shape[:3], dtype=np.float64) - 0.5
    corners = np.array(
        [[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    world = corners @ np.asarray(affine, dtype=np.float64).T
    return world[:, :3].min(0), world[:, :3].max(0)


def world_to_voxel(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map world points (N, 3) or (3,) in mm to continuous voxel coordinates through ``affine``."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    homo = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    vox = homo @ np.linalg.inv(np.asarray(affine, dtype=np.float64)).T
    out = vox[:, :3]
    return out[0] if np.ndim(points) == 1 else out


def voxel_to_world(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map voxel coordinates (N, 3) or (3,) to world mm through ``affine``."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    homo = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    out = (homo @ np.asarray(affine, dtype=np.float64).T)[:, :3]
    return out[0] if np.ndim(points) == 1 else out
