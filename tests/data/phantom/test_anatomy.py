"""Synthetic and real (label-map) anatomy, tissue signals."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mrfound.data.phantom import anatomy as anat
from mrfound.data.phantom import simulate_case
from mrfound.data.phantom.cohort import PhantomConfig


@pytest.fixture(scope="module")
def body():
    return anat.synthetic_anatomy(np.random.default_rng(4), spacing=3.0)


def _centroid(a, label):
    idx = np.argwhere(a.labels == anat.T[label])
    return a.grid.origin + a.grid.spacing * idx.mean(0)


def test_synthetic_anatomy_has_the_organs_in_place(body):
    present = set(np.unique(body.labels))
    for t in ("subcut_fat", "muscle", "liver", "portal_vein", "hepatic_vein", "ivc", "aorta", "spleen",
              "kidney_cortex", "kidney_medulla", "marrow", "csf", "gallbladder", "lung", "air"):
        assert anat.T[t] in present, t
    liver, spleen = _centroid(body, "liver"), _centroid(body, "spleen")
    assert liver[0] > 20 > -20 > spleen[0]  # liver on the patient's right (+x in RAS), spleen left
    assert _centroid(body, "kidney_cortex")[1] < liver[1]  # kidneys posterior
    assert _centroid(body, "lung")[2] > liver[2]  # lung bases above the liver
    assert body.liver.sum() > 0.9 * (body.labels == anat.T["liver"]).sum()
    assert (body.labels[0] == 0).all()  # air around the body


def test_anatomy_is_a_function_of_the_seed():
    a = anat.synthetic_anatomy(np.random.default_rng(1), spacing=4.0)
    b = anat.synthetic_anatomy(np.random.default_rng(1), spacing=4.0)
    c = anat.synthetic_anatomy(np.random.default_rng(2), spacing=4.0)
    assert np.array_equal(a.labels, b.labels)
    assert a.labels.shape != c.labels.shape or not np.array_equal(a.labels, c.labels)


def test_tissue_tables():
    t2 = anat.tissue_lut("t2")
    assert t2[anat.T["liver"]] == 1.0 and t2[anat.T["csf"]] > 3 and t2[anat.T["portal_vein"]] < 0.5
    assert anat.tissue_lut("t2", t2_fat_sat=False)[anat.T["subcut_fat"]] > 1.0
    # fluid loses signal faster than liver at higher b
    csf = anat.T["csf"]
    assert anat.tissue_lut("dwi", b_value=1000)[csf] < anat.tissue_lut("dwi", b_value=600)[csf]
    early = anat.tissue_lut("t1_art", arterial_timing=0.1)
    late = anat.tissue_lut("t1_art", arterial_timing=1.0)
    assert early[anat.T["portal_vein"]] < late[anat.T["portal_vein"]]
    assert early[anat.T["aorta"]] > late[anat.T["aorta"]]
    water, fat = anat.dual_echo_luts(0.2)
    assert water[anat.T["liver"]] == pytest.approx(0.8) and fat[anat.T["liver"]] == pytest.approx(0.2)


def _write_label_map(folder, name="case_01_labels.nii.gz", with_image=True):
    lab = np.zeros((40, 36, 12), np.uint8)
    lab[20:34, 8:30, 2:10] = 1  # liver on the right (+x)
    lab[4:12, 10:18, 3:8] = 4  # spleen
    lab[22:28, 2:7, 1:5] = 2
    lab[8:14, 2:7, 1:5] = 3
    aff = np.diag([5.0, 5.0, 8.0, 1.0])
    aff[:3, 3] = [-100, -90, -40]
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(lab, aff), str(folder / "labels" / name))
    if with_image:
        img = np.full(lab.shape, 100.0, np.float32)
        img[:2] = img[-2:] = 0.0  # air at the sides
        (folder / "images").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(img, aff), str(folder / "images" / name.replace("_labels", "_t2")))
    return folder / "labels"


def test_companion_image_lookup(tmp_path):
    labels = _write_label_map(tmp_path)
    files = anat.list_label_maps(labels)
    assert anat.companion_image(files[0]).name == "case_01_t2.nii.gz"


def test_label_map_anatomy_keeps_the_real_organs(tmp_path):
    labels = _write_label_map(tmp_path)
    a = anat.label_map_anatomy(anat.list_label_maps(labels)[0], np.random.default_rng(0), spacing=4.0)
    assert a.source == "case_01_labels.nii.gz"
    liver = a.grid.origin + a.grid.spacing * np.argwhere(a.labels == anat.T["liver"]).mean(0)
    np.testing.assert_allclose(liver[:2], [-100 + 5 * 26.5, -90 + 5 * 18.5], atol=8.0)
    assert (a.labels == anat.T["spleen"]).any() and (a.labels == anat.T["kidney_cortex"]).any()


def test_inserting_lesions_into_real_label_maps(shared_data):
    folder = shared_data / "chaos_t2" / "labels"
    cfg = PhantomConfig(anatomy_dir=str(folder), spacing_scale=3.0, world_spacing=4.0,
                        diameter_range=(25.0, 40.0))
    case = simulate_case(0, 1, cfg)
    assert case.info["anatomy"].startswith("chaos_")
    src = nib.load(str(folder / case.info["anatomy"]))
    ijk = np.linalg.solve(src.affine[:3, :3], np.array(case.lesion_xyz) - src.affine[:3, 3])
    ijk = np.clip(np.round(ijk).astype(int), 0, np.array(src.shape) - 1)
    assert np.asarray(src.dataobj)[tuple(ijk)] == 1  # the lesion sits in the real liver
