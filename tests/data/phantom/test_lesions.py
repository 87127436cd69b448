"""The signature table (as data) and the signature test: every direction of the table, measured on
written files and masks only."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mrfound.data.phantom import lesions as les
from mrfound.data.phantom.measure import lesion_statistics, load_case_images
from mrfound.data.sequences import CLASSES, SEQUENCES


def test_table_covers_every_class_and_sequence():
    assert set(les.SIGNATURES) == set(CLASSES)
    for cls, sig in les.SIGNATURES.items():
        assert set(sig["table"]) == set(SEQUENCES), cls
        assert set(sig["checks"]) == set(SEQUENCES), cls
        for seq in ("t2", "dwi", "t1_in", "t1_pre", "t1_art", "t1_pv", "t1_del"):
            assert "core" in sig["signal"][seq], (cls, seq)
            for comp, mag in sig["signal"][seq].items():
                assert len(mag) == 2 and mag[0] > 0 and mag[1] >= 0, (cls, seq, comp)


def test_variation_zero_draws_the_table_means():
    rng = np.random.default_rng(0)
    lesion = les.draw_lesion("hcc", rng, variation=0.0, variants=False)
    table = les.SIGNATURES["hcc"]["signal"]
    assert lesion.signal["t1_art"]["core"] == pytest.approx(table["t1_art"]["core"][0])
    assert lesion.signal["t2"]["core"] == pytest.approx(1.35)
    assert 7.5 <= lesion.radius <= 40.0


def test_magnitudes_vary_per_case_and_variants_occur():
    rng = np.random.default_rng(1)
    draws = [les.draw_lesion("hemangioma", rng) for _ in range(200)]
    t2 = np.array([d.signal["t2"]["core"] for d in draws])
    assert t2.std() / t2.mean() > 0.08  # per-case variation of every magnitude
    flash = [d for d in draws if d.variant == "flash_filling"]
    assert flash and all(d.diameter_mm <= 25.0 for d in flash)
    assert all("nodules" not in d.signal["t1_art"] for d in flash)


def test_arterial_factor_early_weaker_than_late():
    assert les.arterial_factor(0.0) < les.arterial_factor(0.5) < les.arterial_factor(0.9) == 1.0
    assert les.arterial_factor(1.4) < 1.0


def _check(measure: dict[str, float], check: str) -> tuple[bool, str]:
    """Evaluate one check of the table (``ratio>1.1``, ``rim>centre``, ``drop``...) on median measures."""
    if check == "rim>centre":
        return measure["rim_centre"] > 1.04, f"rim/centre {measure['rim_centre']:.2f}"
    if check == "centre>rim":
        return measure["rim_centre"] < 1 / 1.04, f"rim/centre {measure['rim_centre']:.2f}"
    if check == "drop":
        return measure["opp_in"] < 0.8, f"opposed/in {measure['opp_in']:.2f}"
    if check == "nodrop":
        return measure["opp_in"] > 0.88, f"opposed/in {measure['opp_in']:.2f}"
    for op in (">", "<"):
        if op in check:
            name, value = check.split(op)
            v = measure[name]
            return (v > float(value)) if op == ">" else (v < float(value)), f"{name} {v:.2f}"
    raise AssertionError(f"unknown check {check!r}")


@pytest.mark.slow
def test_signatures_measured_on_written_files(signature_cohort):
    """Median lesion/liver ratios per class and sequence (rim vs centre, halo, opposed-phase drop) follow
    every direction of the table. Only the NIfTI files, the masks and their affines are used."""
    root = signature_cohort.parent
    with open(signature_cohort, newline="") as f:
        rows = list(csv.DictReader(f))
    per: dict[str, dict[str, dict[str, list[float]]]] = {}
    for row in rows:
        images, mask, aff = load_case_images(row, root, SEQUENCES)
        stats = lesion_statistics(images, mask, aff)
        d = per.setdefault(row["label"], {})
        for seq, st in stats.items():
            for k, v in st.items():
                d.setdefault(seq, {}).setdefault(k, []).append(v)
        if "t1_in" in stats and "t1_opp" in stats:
            opp_in = stats["t1_opp"]["ratio"] / stats["t1_in"]["ratio"]
            d.setdefault("t1_opp", {}).setdefault("opp_in", []).append(opp_in)
    assert set(per) == set(CLASSES)
    failures = []
    n_checks = 0
    for cls in CLASSES:
        for seq, checks in les.SIGNATURES[cls]["checks"].items():
            med = {k: float(np.nanmedian(v)) for k, v in per[cls][seq].items()}
            for check in checks:
                ok, got = _check(med, check)
                n_checks += 1
                if not ok:
                    text = les.SIGNATURES[cls]["table"][seq]
                    failures.append(f"{cls} {seq}: expected {check} ({text}), got {got}")
    assert n_checks >= 80
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_single_sequences_leave_classes_confused(signature_cohort):
    """Design confusions of the table: cyst and haemangioma are both very bright on T2; hcc and fnh both
    enhance strongly in the arterial phase; adenoma and fnh are near-iso on T2; the opposed phase (drop)
    and the portal/delayed phases separate them."""
    root = signature_cohort.parent
    with open(signature_cohort, newline="") as f:
        rows = list(csv.DictReader(f))
    ratio: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row["label"] not in ("cyst", "hemangioma", "hcc", "fnh", "adenoma"):
            continue
        images, mask, aff = load_case_images(row, root, ("t2", "t1_art", "t1_pv"))
        for seq, st in lesion_statistics(images, mask, aff).items():
            ratio.setdefault((row["label"], seq), []).append(st["ratio"])
    med = {k: float(np.median(v)) for k, v in ratio.items()}
    assert med[("cyst", "t2")] > 2.2 and med[("hemangioma", "t2")] > 2.2
    assert med[("hcc", "t1_art")] > 1.3 and med[("fnh", "t1_art")] > 1.3
    assert abs(np.log(med[("adenoma", "t2")] / med[("fnh", "t2")])) < np.log(1.35)
    assert med[("hcc", "t1_pv")] < med[("fnh", "t1_pv")]  # washout vs iso tells them apart
    assert med[("cyst", "t1_pv")] < 0.6 < med[("hemangioma", "t1_pv")]  # no enhancement vs fill-in
