"""Cohort planning, per-case simulation, determinism and the written layout."""

from __future__ import annotations

import csv
import dataclasses
import hashlib

import nibabel as nib
import numpy as np
import pytest

from mrfound.data.phantom import (
    MANIFEST_COLUMNS,
    PhantomConfig,
    generate_cohort,
    plan_case,
    plan_cohort,
    simulate_case,
    simulate_cohort,
)
from mrfound.data.sequences import CLASSES, SEQUENCES
from mrfound.errors import ConfigError

from .conftest import TINY_CONFIG


def test_same_seed_same_arrays_other_seed_differs():
    a = simulate_case(3, 21, TINY_CONFIG)
    b = simulate_case(3, 21, TINY_CONFIG)
    c = simulate_case(3, 22, TINY_CONFIG)
    assert a.images.keys() == b.images.keys()
    for s in a.images:
        np.testing.assert_array_equal(a.images[s][0], b.images[s][0])
        np.testing.assert_array_equal(a.images[s][1], b.images[s][1])
    np.testing.assert_array_equal(a.mask[0], b.mask[0])
    assert c.lesion_xyz != a.lesion_xyz


def test_case_in_memory_matches_cohort_case():
    cohort = simulate_cohort(3, 4, TINY_CONFIG)
    one = simulate_case(2, 4, TINY_CONFIG)
    assert cohort[2].case == one.case == "ph00002"
    for s in one.images:
        np.testing.assert_array_equal(cohort[2].images[s][0], one.images[s][0])


def test_each_sequence_on_its_own_grid_and_mask_on_one_of_them():
    case = simulate_case(0, 1, TINY_CONFIG, center="uni_3t", cls="fnh")
    assert set(case.images) <= set(SEQUENCES) and len(case.images) >= 5
    for arr, aff in case.images.values():
        assert arr.dtype == np.int16 and arr.ndim == 3 and aff.shape == (4, 4)
    mask, maff = case.mask
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2, 3} and (mask == 2).any()
    assert np.array_equal(maff, case.images[case.mask_sequence][1])
    assert mask.shape == case.images[case.mask_sequence][0].shape
    # the dynamic phases share a grid (one 3D protocol) but t2 and dwi have their own
    assert np.array_equal(case.images["t1_art"][1], case.images["t1_pv"][1])
    assert not np.array_equal(case.images["t2"][1], case.images["t1_pv"][1])
    # the lesion centre is inside the target label
    ijk = np.round(np.linalg.solve(maff[:3, :3], np.array(case.lesion_xyz) - maff[:3, 3])).astype(int)
    assert mask[tuple(ijk)] == 2


def test_affines_differ_between_centre_profiles():
    """The same sequence gets a different grid (spacing/orientation) at each centre that acquires it."""
    cases = {c: simulate_case(0, 2, TINY_CONFIG, center=c, cls="cyst")
             for c in ("uni_3t", "community_15t", "oncology", "surveillance", "private_15t")}
    for seq in SEQUENCES:
        mats = {c: case.images[seq][1][:3, :3].round(3).tobytes()
                for c, case in cases.items() if seq in case.images}
        assert len(mats) >= 2, seq
        assert len(set(mats.values())) == len(mats), seq
    axcodes = {nib.aff2axcodes(case.images["t2"][1]) for case in cases.values()}
    assert len(axcodes) >= 3  # axial RAS, axial LPS, coronal


def test_plan_is_prefix_stable_and_pairs_subjects():
    cfg = PhantomConfig(p_second_exam=0.5)
    a = plan_cohort(40, 9, cfg)
    b = plan_cohort(60, 9, cfg)
    assert a == b[:40]
    assert plan_case(17, 9, cfg) == b[17]
    subjects = [s.subject for s in b]
    repeated = {s for s in subjects if subjects.count(s) == 2}
    assert repeated  # some subjects have two exams
    for spec in b:
        if spec.subject in repeated:
            mate = next(o for o in b if o.subject == spec.subject and o.index != spec.index)
            assert mate.center == spec.center and abs(mate.index - spec.index) == 1


def test_id_prefix_renames_cases_and_subjects_only():
    plain = plan_cohort(12, 4, PhantomConfig(p_second_exam=0.5))
    pref = plan_cohort(12, 4, PhantomConfig(p_second_exam=0.5, id_prefix="u"))
    for a, b in zip(plain, pref):
        assert (b.case, b.subject) == ("u" + a.case, "u" + a.subject)
        assert dataclasses.replace(b, case=a.case, subject=a.subject) == a  # same centre, class, pairing


def test_centre_class_mix_and_unlabeled_fraction():
    specs = plan_cohort(400, 3, PhantomConfig(unlabeled_fraction=0.25))
    assert 0.15 < np.mean([not s.labeled for s in specs]) < 0.35
    by_centre = {}
    for s in specs:
        by_centre.setdefault(s.center, []).append(s.cls)
    assert len(by_centre) == 5
    hcc_share = {c: v.count("hcc") / len(v) for c, v in by_centre.items()}
    assert hcc_share["surveillance"] > 2 * hcc_share["community_15t"]  # referral patterns differ
    balanced = plan_cohort(16, 3, PhantomConfig(balanced=True))
    assert [s.cls for s in balanced[:8]] == list(CLASSES)


def test_manifest_layout(tiny_cohort):
    root = tiny_cohort.parent
    with open(tiny_cohort, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
    assert len(rows) == 6
    assert any(r["label"] == "" for r in rows) and any(r["label"] in CLASSES for r in rows)
    for r in rows:
        assert r["mask"] and (root / r["mask"]).is_file()
        present = [s for s in SEQUENCES if r[s]]
        assert len(present) >= 2
        for s in present:
            assert r[s] == f"cases/{r['case']}/{s}.nii.gz" and (root / r[s]).is_file()
        xyz = [float(r[k]) for k in ("lesion_x", "lesion_y", "lesion_z")]
        m = nib.load(root / r["mask"])
        ijk = np.round(np.linalg.solve(m.affine[:3, :3], np.array(xyz) - m.affine[:3, 3])).astype(int)
        assert np.asarray(m.dataobj)[tuple(ijk)] == 2
    assert not list(root.parent.glob(".cohort.*"))  # no temporary folder left


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_files_identical_for_one_or_two_workers(tmp_path):
    cfg = dataclasses.replace(TINY_CONFIG, spacing_scale=4.0)
    m1 = generate_cohort(tmp_path / "w1", 4, 8, cfg, workers=1, progress=False)
    m2 = generate_cohort(tmp_path / "w2", 4, 8, cfg, workers=2, progress=False)
    d1, d2 = _digest(m1.parent), _digest(m2.parent)
    assert len(d1) > 10 and d1 == d2


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an earlier phantom cohort"):
        generate_cohort(tmp_path / "mine", 1, 0, TINY_CONFIG, workers=1, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, match", [
    ({"centers": ("nowhere",)}, "unknown centre"),
    ({"classes": ("hcc", "lipoma")}, "no signature"),
    ({"unlabeled_fraction": 1.5}, "unlabeled"),
    ({"anatomy_dir": "/nonexistent/labels"}, "does not exist"),
    ({"id_prefix": "../x"}, "--id-prefix may hold letters"),
])
def test_bad_config_is_a_one_line_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PhantomConfig(**kwargs).validate()
