"""Folder importers: filename patterns (alias table, mask remapping) and the LLD-MMRI 2023 layout."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mrfound.data.importers import (
    import_lld_mmri,
    import_pattern,
    lld_category,
    parse_mask_map,
    pattern_regex,
)
from mrfound.data.manifest import read_manifest
from mrfound.data.readers import voxel_to_world, write_nifti
from mrfound.data.validate import validate_manifest
from mrfound.errors import ConfigError, ManifestError

AFF = np.diag([2.0, 2.0, 3.0, 1.0])
LLD_PHASES = {
    "T2WI": "t2",
    "DWI": "dwi",
    "In Phase": "t1_in",
    "Out Phase": "t1_opp",
    "C-pre": "t1_pre",
    "C+A": "t1_art",
    "C+V": "t1_pv",
    "C+Delay": "t1_del",
}


def _img(seed=0, shape=(10, 10, 6)):
    return np.random.default_rng(seed).random(shape).astype(np.float32) + 1


def test_pattern_regex():
    rx = pattern_regex("{case}/{sequence}.nii.gz")
    assert rx.fullmatch("p01/C+A.nii.gz").groupdict() == {"case": "p01", "sequence": "C+A"}
    assert rx.fullmatch("p01/sub/x.nii.gz") is None
    assert pattern_regex("{center}/*_{case}/{case}_{sequence}.nii").fullmatch("A/x_7/7_t2.nii")
    assert not pattern_regex("{case}/{case}_{sequence}.nii").fullmatch("7/8_t2.nii")
    with pytest.raises(ConfigError):
        pattern_regex("{sequence}.nii")
    with pytest.raises(ConfigError):
        pattern_regex("{case}/{phase}.nii")


def test_pattern_import_with_aliases_labels_and_mask_map(tmp_path):
    root = tmp_path / "raw"
    for i, case in enumerate(("p1", "p2")):
        for name in ("T2WI", "C+A", "pv", "notes"):
            write_nifti(root / case / f"{name}.nii.gz", _img(i), AFF)
        labels = np.zeros((10, 10, 6), np.uint8)
        labels[2:5] = 1
        labels[5:7] = 4
        write_nifti(root / "seg" / f"{case}_seg.nii.gz", labels, AFF, dtype=np.uint8)
    (tmp_path / "labels.csv").write_text("case,label,center\np1,HCC,X\n")
    out = tmp_path / "out" / "m.csv"
    res = import_pattern(
        root,
        "{case}/{sequence}.nii.gz",
        out,
        mask_pattern="seg/{case}_seg.nii.gz",
        mask_map="1:1,4:0",
        label_table=tmp_path / "labels.csv",
    )
    assert res.n_cases == 2 and len(res.skipped) == 2 and "notes" in res.skipped[0]
    m = read_manifest(out)
    p1, p2 = m.cases
    assert set(p1.sequences) == {"t2", "t1_art", "t1_pv"} and p1.label == "hcc" and p1.center == "X"
    assert p2.label is None and p2.center == ""
    assert p1.mask.parent == tmp_path / "out" / "m_masks"
    mask = np.asarray(nib.load(str(p1.mask)).dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1} and mask[2:5].all()
    assert validate_manifest(out, progress=False).ok


def test_pattern_errors(tmp_path):
    write_nifti(tmp_path / "a_t2.nii.gz", _img(), AFF)
    with pytest.raises(ConfigError, match="--sequence"):
        import_pattern(tmp_path, "{case}_t2.nii.gz", tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="no file"):
        import_pattern(tmp_path, "{case}_t1.nii.gz", tmp_path / "m.csv", sequence="t2")
    with pytest.raises(ConfigError):
        parse_mask_map("1:7")
    assert parse_mask_map("1:1, 2:0") == {1: 1, 2: 0}


def test_lld_category_mapping():
    assert lld_category("Hepatic_hemangioma") == "hemangioma"
    assert lld_category("Intrahepatic_cholangiocarcinoma") == "icca"
    assert lld_category("FOCAL_NODULAR_HYPERPLASIA") == "fnh" and lld_category("FNH") == "fnh"
    assert lld_category("HCC") == "hcc" and lld_category("Hepatic_cyst") == "cyst"
    assert lld_category("Hepatic_abscess") == "abscess" and lld_category("Hepatic_metastasis") == "metastasis"
    assert lld_category(6) == "hcc" and lld_category("0") == "hemangioma" and lld_category(-1) is None
    with pytest.raises(ManifestError):
        lld_category("Lymphoma")


def _box(lo, hi):
    return {"x_min": lo[0], "y_min": lo[1], "z_min": lo[2], "x_max": hi[0], "y_max": hi[1], "z_max": hi[2]}


def test_lld_mmri_phase_named_layout(tmp_path):
    root = tmp_path / "LLD"
    info = {}
    affines = {}
    for ci, case in enumerate(("MR-1001", "MR-1002")):
        items = []
        for pi, (phase, _seq) in enumerate(LLD_PHASES.items()):
            aff = AFF.copy()
            aff[:3, 3] = [pi * 1.0, -pi * 0.5, 0]  # each phase has its own grid
            if phase == "DWI":
                aff[0, 0] = -2.0  # and its own orientation
            affines[(case, phase)] = aff
            write_nifti(root / "images" / case / f"{phase}.nii.gz", _img(ci * 10 + pi), aff)
            lesions = {
                "0": {
                    "category": ["Hepatocellular_carcinoma", "Hepatic_cyst"][ci],
                    "bbox": {"3D_box": _box((2, 3, 1), (6, 5, 3))},
                }
            }
            if ci == 1:
                lesions["1"] = {"category": "Hepatic_cyst", "bbox": {"3D_box": _box((6, 6, 2), (8, 8, 4))}}
            items.append(
                {
                    "studyUID": "1.2",
                    "seriesUID": f"1.2.{pi}",
                    "phase": phase,
                    "annotation": {"lesion": lesions},
                }
            )
        info[case] = items
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "Annotation.json").write_text(json.dumps({"Annotation_info": info}))
    write_nifti(root / "images" / "MR-1003" / "T2WI.nii.gz", _img(99), AFF)  # not annotated (test set)

    out = tmp_path / "lld.csv"
    res = import_lld_mmri(root, out)
    assert res.n_cases == 4
    m = read_manifest(out)
    by = {c.case: c for c in m}
    assert set(by) == {"MR-1001", "MR-1002", "MR-1002_1", "MR-1003"}
    a = by["MR-1001"]
    assert list(a.sequences) == list(LLD_PHASES.values()) and a.label == "hcc" and a.subject == "MR-1001"
    assert by["MR-1002"].label == "cyst" and by["MR-1002_1"].subject == "MR-1002"
    assert by["MR-1003"].label is None and by["MR-1003"].lesion_xyz is None
    # box centre (4, 4, 2) through each phase's affine; the row holds the median over phases
    centres = [voxel_to_world(np.array([4.0, 4.0, 2.0]), affines[("MR-1001", p)]) for p in LLD_PHASES]
    assert np.allclose(a.lesion_xyz, np.median(centres, axis=0), atol=1e-3)
    assert validate_manifest(out, progress=False).ok


def test_lld_mmri_series_uid_layout(tmp_path):
    root = tmp_path / "LLD"
    items = []
    for pi, phase in enumerate(("T2WI", "C+V")):
        write_nifti(root / "MR-7" / "1.2.3" / f"1.2.3.{pi}.nii.gz", _img(pi), AFF)
        items.append(
            {
                "studyUID": "1.2.3",
                "seriesUID": f"1.2.3.{pi}",
                "phase": phase,
                "annotation": {
                    "lesion": {"0": {"category": 5, "bbox": {"3D_box": _box((1, 1, 1), (3, 3, 3))}}}
                },
            }
        )
    (root / "Annotation.json").write_text(json.dumps({"MR-7": items}))
    import_lld_mmri(root, tmp_path / "m.csv")
    (case,) = read_manifest(tmp_path / "m.csv").cases
    assert set(case.sequences) == {"t2", "t1_pv"} and case.label == "fnh"
    assert np.allclose(case.lesion_xyz, voxel_to_world(np.array([2.0, 2, 2]), AFF))
