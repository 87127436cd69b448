"""Bad-input corpus (issue 7.1): one manifest per fault, each made of small valid cases plus one bad row.

Every image is a tiny synthetic NIfTI (an ellipsoid "liver" with a brighter "lesion", 20^3 voxels at
1.5 mm) written with nibabel, so the corpus builds in about a second. The 10000x10000x1 image is a sparse
file (header + ``truncate``): it occupies no disk and is never read into memory by a guarded command.

Fixtures:
    corpus: session-wide :class:`Corpus` (faults by name, the clean manifest, the combined manifest with
        every row-level fault at once).
    deny_access: monkeypatches ``os.access`` so that the corpus's "unreadable" file reads as not
        readable (tests run as root, where ``chmod`` changes nothing).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SIZE = 20
SPACING = 1.5
AFFINE = np.diag([SPACING, SPACING, SPACING, 1.0])
COLUMNS = ["case", "subject", "center", "label", "t2", "t1_pre", "mask", "lesion_x", "lesion_y", "lesion_z"]
N_GOOD = 6
ROW_FAULTS = (
    "missing_file", "truncated_gz", "not_nifti", "image_2d", "image_4d", "nan_voxels", "inf_voxels",
    "all_zero", "singular_affine", "nonfinite_affine", "one_voxel", "huge_slice", "mask_foreign_labels",
    "mask_no_overlap", "lesion_outside", "unknown_label", "path_is_folder", "unreadable", "duplicate_case",
)  # fmt: skip
"""Faults of one row (the other rows are valid)."""
FILE_FAULTS = ("empty_manifest", "header_only", "non_utf8", "semicolon_csv")
"""Faults of the manifest file as a whole."""


def pytest_generate_tests(metafunc):
    """Parametrize ``fault_name`` / ``row_fault_name`` / ``file_fault_name`` arguments by the corpus."""
    for arg, names in (
        ("fault_name", ROW_FAULTS + FILE_FAULTS),
        ("row_fault_name", ROW_FAULTS),
        ("file_fault_name", FILE_FAULTS),
    ):
        if arg in metafunc.fixturenames:
            metafunc.parametrize(arg, names)


@dataclass
class Fault:
    """One fault of the corpus.

    Attributes:
        name: Short id (test ids).
        manifest: The manifest holding the good rows plus the fault (or the faulty file itself).
        case: Case id of the bad row (``None`` for a problem of the whole file).
        column: Column of the bad value (``None`` for a problem of the whole file or row).
        words: Phrase the error message must contain.
        bad_cases: Case ids ``--on-error skip`` must reject (empty for file-level faults).
    """

    name: str
    manifest: Path
    case: str | None
    column: str | None
    words: str
    bad_cases: tuple[str, ...] = ()

    @property
    def row_level(self) -> bool:
        return self.case is not None


@dataclass
class Corpus:
    """The written corpus."""

    root: Path
    faults: dict[str, Fault]
    clean: Path
    combined: Path
    good_cases: list[str]
    unreadable: Path
    combined_bad: dict[str, str] = field(default_factory=dict)  # bad case -> phrase of its reason


def _body(seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, SIZE)] * 3, indexing="ij"))
    body = ((g / np.array([0.85, 0.75, 0.8])[:, None, None, None]) ** 2).sum(0) < 1
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-0.3, 0.3, 3)
    lesion = ((g - centre[:, None, None, None]) ** 2).sum(0) < 0.06
    return body, lesion & body


def write_case(folder: Path, name: str, seed: int) -> dict[str, str]:
    """Write a valid case (t2, t1_pre, mask) and return its manifest cells (paths relative to folder)."""
    body, lesion = _body(seed)
    rng = np.random.default_rng(seed + 1000)
    cells: dict[str, str] = {}
    for seq, (base, les) in {"t2": (100.0, 250.0), "t1_pre": (150.0, 60.0)}.items():
        vol = body * base + lesion * (les - base) + rng.normal(0, 3, body.shape)
        nib.save(nib.Nifti1Image(vol.astype(np.float32), AFFINE), str(folder / f"{name}_{seq}.nii.gz"))
        cells[seq] = f"{name}_{seq}.nii.gz"
    mask = body.astype(np.uint8) + lesion.astype(np.uint8)  # 0 bg, 1 liver, 2 lesion
    nib.save(nib.Nifti1Image(mask, AFFINE), str(folder / f"{name}_mask.nii.gz"))
    cells["mask"] = f"{name}_mask.nii.gz"
    centre = np.argwhere(lesion).mean(0)
    xyz = (AFFINE @ np.append(centre, 1.0))[:3]
    cells.update({"lesion_x": f"{xyz[0]:.2f}", "lesion_y": f"{xyz[1]:.2f}", "lesion_z": f"{xyz[2]:.2f}"})
    return cells


def write_raw_nifti(path: Path, data: np.ndarray, srow: np.ndarray) -> None:
    """Write NIfTI-1 bytes directly (nibabel would 'fix' a NaN affine on save)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr["vox_offset"] = 352
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = srow[0], srow[1], srow[2]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    blob = hdr.binaryblock + b"\0" * 4 + np.asarray(data).tobytes(order="F")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(blob)


def write_huge_slice(path: Path, shape: tuple[int, int, int] = (10000, 10000, 1)) -> None:
    """A uint8 NIfTI of ``shape`` as a sparse file: header written, voxel bytes never materialised."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.uint8)
    hdr.set_sform(np.eye(4), code=1)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    with open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)
        f.truncate(352 + int(np.prod(shape)))


def _csv(rows: list[dict[str, str]], sep: str = ",") -> str:
    lines = [sep.join(COLUMNS)] + [sep.join(r.get(c, "") for c in COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def build_corpus(root: Path) -> Corpus:
    """Write the images, one manifest per fault, the clean and the combined manifests under ``root``."""
    img = root / "images"
    img.mkdir(parents=True)
    good = []
    for i in range(N_GOOD):
        cells = write_case(img, f"good{i}", seed=i)
        good.append(
            {
                "case": f"good_{i}",
                "subject": f"subj_{i}",
                "center": "A" if i % 2 else "B",
                "label": "hcc" if i % 2 else "cyst",
                **{k: f"images/{v}" if k in ("t2", "t1_pre", "mask") else v for k, v in cells.items()},
            }
        )
    base = write_case(img, "bad", seed=99)  # the bad row's valid files; one cell per fault is replaced
    base = {k: f"images/{v}" if k in ("t2", "t1_pre", "mask") else v for k, v in base.items()}

    body, lesion = _body(3)
    vol = (body * 100.0 + lesion * 150.0).astype(np.float32)

    def save(name: str, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
        nib.save(nib.Nifti1Image(data, affine), str(img / name))
        return f"images/{name}"

    # the faulty files
    (img / "truncated_t2.nii.gz").write_bytes((img / "good0_t2.nii.gz").read_bytes()[:1500])
    (img / "notnifti_t2.nii.gz").write_bytes(b"this is a text file, not an image\n" * 40)
    nan_vol = vol.copy()
    nan_vol[5, 5, 5] = np.nan
    inf_vol = vol.copy()
    inf_vol[6, 6, 6] = np.inf
    singular = AFFINE[:3].copy()
    singular[2, 2] = 0.0  # zero voxel size along k
    write_raw_nifti(img / "singular_t2.nii.gz", vol, singular)
    nan_srow = AFFINE[:3].copy()
    nan_srow[0, 0] = np.nan
    write_raw_nifti(img / "nanaffine_t2.nii.gz", vol, nan_srow)
    write_huge_slice(img / "huge_t2.nii")
    foreign = (body.astype(np.uint8) + lesion.astype(np.uint8)).copy()
    foreign[body & ~lesion] = 7
    shifted = AFFINE.copy()
    shifted[:3, 3] = 5000.0
    (img / "folder_t2.nii.gz").mkdir()
    unreadable = img / "unreadable_t2.nii.gz"
    unreadable.write_bytes((img / "good1_t2.nii.gz").read_bytes())

    row_faults: dict[str, tuple[str, str, str]] = {  # name -> (column, new cell, phrase)
        "missing_file": ("t2", "images/does_not_exist_t2.nii.gz", "file not found"),
        "truncated_gz": ("t2", "images/truncated_t2.nii.gz", "corrupt NIfTI"),
        "not_nifti": ("t2", "images/notnifti_t2.nii.gz", "not a NIfTI or DICOM"),
        "image_2d": ("t2", save("2d_t2.nii.gz", vol[:, :, 10]), "not 3D"),
        "image_4d": ("t2", save("4d_t2.nii.gz", np.stack([vol, vol], -1)), "not 3D"),
        "nan_voxels": ("t2", save("nan_t2.nii.gz", nan_vol), "NaN/Inf voxels"),
        "inf_voxels": ("t1_pre", save("inf_t1.nii.gz", inf_vol), "NaN/Inf voxels"),
        "all_zero": ("t2", save("zero_t2.nii.gz", np.zeros_like(vol)), "constant image"),
        "singular_affine": ("t2", "images/singular_t2.nii.gz", "singular"),
        "nonfinite_affine": ("t2", "images/nanaffine_t2.nii.gz", "NaN/Inf entries"),
        "one_voxel": ("t2", save("onevox_t2.nii.gz", np.ones((1, 1, 1), np.float32)), "too small"),
        "huge_slice": ("t2", "images/huge_t2.nii", "too large"),
        "mask_foreign_labels": ("mask", save("foreign_mask.nii.gz", foreign), "mask values outside"),
        "mask_no_overlap": (
            "mask",
            save("far_mask.nii.gz", body.astype(np.uint8), shifted),
            "does not overlap",
        ),
        "lesion_outside": ("lesion_x", "9999", "outside the image grid"),
        "unknown_label": ("label", "tumourish", "unknown label"),
        "path_is_folder": ("t2", "images/folder_t2.nii.gz", "is a folder"),
        "unreadable": ("t2", "images/unreadable_t2.nii.gz", "permission denied"),
    }
    faults: dict[str, Fault] = {}
    mdir = root / "manifests"
    mdir.mkdir()

    def write_manifest(name: str, text: str | bytes) -> Path:
        p = root / f"{name}.csv"
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text, encoding="utf-8")
        return p

    combined_rows = list(good)
    combined_bad: dict[str, str] = {}
    for name, (column, cell, words) in row_faults.items():
        case = f"bad_{name}"
        row = {**base, "case": case, "subject": case, "center": "A", "label": "hcc", column: cell}
        faults[name] = Fault(
            name, write_manifest(name, _csv(good[:2] + [row] + good[2:])), case, column, words, (case,)
        )
        combined_rows.append(row)
        combined_bad[case] = words
    dup = [{**base, "case": "dup", "subject": "dup_a"}, {**base, "case": "dup", "subject": "dup_b"}]
    faults["duplicate_case"] = Fault(
        "duplicate_case",
        write_manifest("duplicate_case", _csv(good + dup)),
        "dup",
        "case",
        "duplicate case id",
        ("dup",),
    )
    combined_rows += dup
    combined_bad["dup"] = "duplicate case id"
    file_faults = {
        "empty_manifest": (b"", "manifest is empty"),
        "header_only": (_csv([]), "header but no rows"),
        "non_utf8": (_csv([{**good[0], "center": "H\u00f4pital"}, *good[1:]]).encode("latin-1"), "not UTF-8"),
        "semicolon_csv": (_csv(good, sep=";"), "semicolon-separated"),
    }
    for name, (text, words) in file_faults.items():
        faults[name] = Fault(name, write_manifest(name, text), None, None, words)
    assert tuple(faults) == ROW_FAULTS[:-1] + ("duplicate_case",) + FILE_FAULTS
    return Corpus(
        root=root,
        faults=faults,
        clean=write_manifest("clean", _csv(good)),
        combined=write_manifest("combined", _csv(combined_rows)),
        good_cases=[r["case"] for r in good],
        unreadable=unreadable,
        combined_bad=combined_bad,
    )


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    """The bad-input corpus (read-only: tests must not modify it)."""
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def deny_access(monkeypatch, corpus):
    """Make the corpus's 'unreadable' file unreadable to this process (as chmod 000 would for a user)."""
    real = os.access
    denied = {os.path.abspath(corpus.unreadable)}

    def access(path, mode, *args, **kwargs):
        if os.path.abspath(os.fspath(path)) in denied and mode & os.R_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return denied


def tree_state(folder: Path) -> dict[str, tuple[int, int]] | None:
    """``relative path -> (size, mtime_ns)`` of every entry under ``folder`` (``None`` if absent)."""
    if not folder.exists():
        return None
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


@pytest.fixture(scope="session")
def pretrain_opts() -> list[str]:
    """:data:`TINY_PRETRAIN_SETS` as a fixture."""
    return list(TINY_PRETRAIN_SETS)


@pytest.fixture(scope="session")
def tree():
    """``tree_state`` as a fixture (test modules cannot import this conftest under importlib mode)."""
    return tree_state


ROI = 16
TINY_ENCODER = {"img_size": ROI, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_PRETRAIN_SETS = [
    "--model", "tiny", "--roi-size", str(ROI),
    "--set", "model_overrides.patch_size=8", "--set", "model_overrides.embed_dim=32",
    "--set", "model_overrides.depth=1", "--set", "model_overrides.num_heads=2",
    "--set", "mae.decoder_dim=32", "--set", "mae.decoder_depth=1", "--set", "mae.decoder_heads=2",
]  # fmt: skip
"""``mrfound pretrain`` options for a model small enough to train one step in a fraction of a second."""


def make_tiny_checkpoints(folder: Path, classes: tuple[str, ...] = ("hcc", "cyst")) -> dict[str, Path]:
    """Save a tiny masked-modality autoencoder and a tiny classifier (random weights, seeded)."""
    import torch

    from mrfound.models.checkpoint import save_checkpoint
    from mrfound.models.config import EncoderConfig, MAEConfig
    from mrfound.models.encoder import MultiSequenceViT
    from mrfound.models.heads import Classifier, make_classification_head
    from mrfound.models.mae import MaskedModalityAutoencoder

    torch.manual_seed(0)
    enc = EncoderConfig(**TINY_ENCODER)
    mae = MaskedModalityAutoencoder(enc, MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    encoder = MultiSequenceViT(enc)
    clf = Classifier(encoder, make_classification_head(encoder, len(classes)), classes=classes)
    return {
        "autoencoder": save_checkpoint(folder / "mae", mae),
        "classifier": save_checkpoint(folder / "classifier", clf),
    }


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``{"autoencoder": folder, "classifier": folder}`` of tiny models (16^3 ROI, 1 block, width 32)."""
    return make_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test starts without a leftover Accelerate singleton (in-process pretrain/finetune runs)."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def write_load_cohort(folder: Path, n_cases: int, size: int = 24) -> Path:
    """``n_cases`` phantom-like cases (t2 + t1_pre, int16 ``size``^3 at 1.5 mm, lesion point), each its own
    files; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    body = ((g / np.array([0.85, 0.75, 0.8])[:, None, None, None]) ** 2).sum(0) < 1
    rng = np.random.default_rng(0)
    lines = ["case,subject,center,t2,t1_pre,lesion_x,lesion_y,lesion_z"]
    for i in range(n_cases):
        c = rng.uniform(-0.3, 0.3, 3)
        lesion = (((g - c[:, None, None, None]) ** 2).sum(0) < 0.05) & body
        for seq, (base, les) in {"t2": (400, 900), "t1_pre": (600, 250)}.items():
            vol = body * base + lesion * (les - base) + rng.normal(0, 12, body.shape)
            nib.save(nib.Nifti1Image(vol.astype(np.int16), AFFINE), str(folder / f"c{i:04d}_{seq}.nii.gz"))
        xyz = (AFFINE @ np.append((c + 1) / 2 * (size - 1), 1.0))[:3]
        lines.append(
            f"c{i:04d},s{i:04d},{'AB'[i % 2]},c{i:04d}_t2.nii.gz,c{i:04d}_t1_pre.nii.gz,"
            f"{xyz[0]:.2f},{xyz[1]:.2f},{xyz[2]:.2f}"
        )
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="session")
def load_cohort(tmp_path_factory) -> Path:
    """Manifest of 500 phantom-like 24^3 cases (2 sequences each, 1000 files)."""
    return write_load_cohort(tmp_path_factory.mktemp("load"), 500)
