"""Tests of mrfound/calibration.py: choosing imputation's local contrast and storing it in the checkpoint.

The tiny random-weight autoencoder and 4-case phantom cohort of ``tests/test_inference.py`` (loaded by
path) keep this fast; a random decoder's synthesis is mostly wrong detail, so shrinking it helps and the
choice is checked against PSNRs computed here from the library's synthesis.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from testutils import load_module

from mrfound import calibration as cal
from mrfound import inference as inf
from mrfound.data.manifest import read_manifest
from mrfound.data.preprocess import preprocess_case
from mrfound.errors import CheckpointError, ConfigError
from mrfound.pipeline import load_pretrained

builders = load_module("tests/test_inference.py")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return builders.make_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    return builders.make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture()
def mae_copy(ckpts, tmp_path) -> Path:
    """A private copy of the autoencoder checkpoint (calibration writes into it)."""
    return Path(shutil.copytree(ckpts["autoencoder"], tmp_path / "mae"))


def _psnr(mse: float) -> float:
    return -10.0 * np.log10(mse)


def test_calibration_scores_the_synthesis_in_the_liver_inside_the_target_fov(ckpts, cohort) -> None:
    model = load_pretrained(ckpts["autoencoder"], device="cpu")
    res = cal.calibrate_local_contrast(model, cohort, sequences=["T2WI"], region="liver", progress=False)
    assert list(res["sequences"]) == ["t2"] and res["region"] == "liver" and res["cases_read"] == 4
    t2 = res["sequences"]["t2"]
    # the same numbers from the library's synthesis, the mask and the t2 file's field of view
    as_decoded, best = [], []
    t = model.sequences.index("t2")
    for case in read_manifest(cohort).cases:
        s = preprocess_case(case, model.preprocessing, model.vocabulary)
        if not s["available"][t] or s["available"].sum() < 2:
            continue
        region = (s["mask"][0] > 0) & cal.fov_mask(case.sequences["t2"], s["affine"], s["mask"][0].shape)
        syn = inf.synthesise_volume(
            model.model, s["image"], s["available"], t, clip=tuple(model.preprocessing.clip)
        )
        d = (syn - s["image"][t])[region].astype(np.float64)
        as_decoded.append(_psnr(np.mean(d**2)))
        sigma = t2["sigma_mm"] / model.preprocessing.spacing
        shrunk = inf.shrink_local_contrast(syn, t2["gain"], sigma, t2["level"])
        e = (shrunk - s["image"][t])[region].astype(np.float64)
        best.append(_psnr(np.mean(e**2)))
    assert t2["n_cases"] == len(as_decoded) > 0
    assert t2["psnr_as_decoded"] == pytest.approx(np.mean(as_decoded), abs=1e-3)
    assert t2["psnr"] == pytest.approx(np.mean(best), abs=2e-3)
    assert t2["psnr"] >= t2["psnr_as_decoded"]  # gain 1 is on the grid
    assert t2["gain"] in res["gains"] and t2["sigma_mm"] in res["widths_mm"] and t2["level"] in res["levels"]


def test_calibration_body_region_needs_no_mask_and_liver_does(ckpts, cohort, tmp_path) -> None:
    model = load_pretrained(ckpts["autoencoder"], device="cpu")
    body = cal.calibrate_local_contrast(model, cohort, region="body", max_cases=2, progress=False)
    assert body["cases_read"] == 2
    assert set(body["sequences"]) | set(body["uncalibrated"]) == set(model.sequences)
    frame = builders.absolute_frame(cohort)
    frame["mask"] = ""
    no_masks = tmp_path / "no_masks.csv"
    frame.to_csv(no_masks, index=False)
    with pytest.raises(ConfigError, match="with another sequence and a mask .or use region 'body'."):
        cal.calibrate_local_contrast(model, no_masks, progress=False)
    # only cases that can score are read: here the cases with a t1_del
    with_del = [c for c in read_manifest(cohort).cases if "t1_del" in c.sequences and len(c.sequences) > 1]
    only = cal.calibrate_local_contrast(model, cohort, sequences=["t1_del"], max_cases=4, progress=False)
    assert only["cases_read"] == len(with_del) and only["sequences"]["t1_del"]["n_cases"] == len(with_del)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"region": "lung"}, "region must be one of liver, body"),
        ({"widths_mm": [8.0, 0.0]}, "widths must be > 0 mm"),
        ({"widths_mm": []}, "widths must be > 0 mm"),
        ({"max_cases": 0}, "max_cases must be >= 1"),
        ({"sequences": ["flair"]}, "unknown sequence 'flair'"),
        ({"gains": [1.0, 1.2]}, "gains must be in"),
        ({"levels": [1.0, 0.0]}, "levels must be in"),
    ],
)
def test_calibration_bad_options(ckpts, cohort, kwargs, message) -> None:
    model = load_pretrained(ckpts["autoencoder"], device="cpu")
    with pytest.raises(ConfigError, match=message):
        cal.calibrate_local_contrast(model, cohort, progress=False, **kwargs)


def test_calibration_needs_an_autoencoder(ckpts, cohort) -> None:
    with pytest.raises(CheckpointError, match="cannot impute"):
        cal.calibrate_local_contrast(load_pretrained(ckpts["segmenter"], device="cpu"), cohort)


def test_stored_calibration_is_what_impute_applies_by_default(mae_copy, cohort) -> None:
    weights = (mae_copy / "model.safetensors").read_bytes()
    calibration = {
        "sequences": {"t2": {"gain": 0.5, "sigma_mm": 12.0, "psnr": 1.0, "n_cases": 3}},
        "region": "liver",
    }
    assert cal.store_calibration(mae_copy, calibration, provenance={"manifest": "m.csv"}) == mae_copy
    assert (mae_copy / "model.safetensors").read_bytes() == weights  # weights untouched
    entry = json.loads((mae_copy / "config.json").read_text())[cal.CONFIG_KEY]
    assert entry["provenance"]["manifest"] == "m.csv" and len(entry["provenance"]["weights_sha256"]) == 64
    model = load_pretrained(mae_copy, device="cpu")
    assert model.local_contrast == {"t2": (0.5, 12.0, 1.0)}  # no level stored: 1
    case = next(c for c in read_manifest(cohort).cases if "t2" in c.sequences and len(c.sequences) > 2)
    default = np.asarray(model.impute(case, "t2").dataobj)
    explicit = np.asarray(model.impute(case, "t2", local_contrast=(0.5, 12.0)).dataobj)
    decoded = np.asarray(model.impute(case, "t2", local_contrast="none").dataobj)
    np.testing.assert_array_equal(default, explicit)
    np.testing.assert_array_equal(np.asarray(model.impute(case, "t2", local_contrast=None).dataobj), decoded)
    assert not np.allclose(default, decoded)
    # an uncalibrated sequence is synthesised as decoded
    dwi = {"local_contrast": "none"}
    np.testing.assert_array_equal(
        np.asarray(model.impute(case, "dwi").dataobj), np.asarray(model.impute(case, "dwi", **dwi).dataobj)
    )
    with pytest.raises(ConfigError, match="one of auto, none"):
        model.impute(case, "t2", local_contrast="calibrated")


def test_impute_manifest_reports_the_applied_calibration(mae_copy, cohort, tmp_path) -> None:
    cal.store_calibration(mae_copy, {"sequences": {"t1_art": {"gain": 0.7, "sigma_mm": 20.0, "level": 1.1}}})
    model = load_pretrained(mae_copy, device="cpu")
    auto = inf.impute_manifest(model, cohort, "C+A", tmp_path / "auto")
    assert auto.local_contrast == (0.7, 20.0, 1.1)
    plain = inf.impute_manifest(model, cohort, "t1_art", tmp_path / "plain", local_contrast="none")
    assert plain.local_contrast is None
    a = nib.load(str(auto.files[0])).get_fdata()
    b = nib.load(str(plain.files[0])).get_fdata()
    assert a.shape == b.shape and not np.allclose(a, b)


def test_evaluation_on_the_calibration_cases_reproduces_the_chosen_psnr(mae_copy, cohort) -> None:
    model = load_pretrained(mae_copy, device="cpu")
    res = cal.calibrate_local_contrast(model, cohort, sequences=["t2"], progress=False)
    cal.store_calibration(mae_copy, res)
    calibrated = load_pretrained(mae_copy, device="cpu")
    ev = cal.evaluate_local_contrast(calibrated, cohort, sequences=["t2"], progress=False)
    t2, chosen = ev["sequences"]["t2"], res["sequences"]["t2"]
    assert ev["cases_read"] == res["cases_read"] and ev["unscored"] == []
    assert t2["local_contrast"] == [chosen["gain"], chosen["sigma_mm"], chosen["level"]]
    assert t2["n_cases"] == chosen["n_cases"] == len(t2["cases"])
    # the moment-based choice and the applied filter agree (as decoded: the same numbers)
    assert t2["psnr_as_decoded"] == pytest.approx(chosen["psnr_as_decoded"], abs=1e-3)
    assert t2["psnr"] == pytest.approx(chosen["psnr"], abs=2e-3)
    assert {r["case"] for r in t2["cases"]} <= {c.case for c in read_manifest(cohort).cases}
    none = cal.evaluate_local_contrast(calibrated, cohort, sequences=["t2"], local_contrast="none")
    plain = none["sequences"]["t2"]
    assert plain["local_contrast"] is None
    assert plain["psnr"] == plain["psnr_as_decoded"] == t2["psnr_as_decoded"]


def test_evaluation_with_a_given_local_contrast_keeps_the_volumes(ckpts, cohort) -> None:
    model = load_pretrained(ckpts["autoencoder"], device="cpu")
    ev = cal.evaluate_local_contrast(
        model, cohort, sequences=["t1_art"], local_contrast=(0.5, 16.0), max_cases=2, keep_volumes=True
    )
    art = ev["sequences"]["t1_art"]
    assert art["local_contrast"] == [0.5, 16.0, 1.0] and ev["cases_read"] == 2
    row = art["cases"][0]
    sigma = 16.0 / model.preprocessing.spacing
    expect = inf.apply_local_contrast(row["as_decoded"], (0.5, sigma, 1.0), model.preprocessing.clip)
    np.testing.assert_allclose(row["applied"], expect)
    region = row["region"]
    assert region.dtype == bool and region.shape == row["truth"].shape and region.any()
    mse = np.mean((row["applied"][region].astype(np.float64) - row["truth"][region]) ** 2)
    assert row["psnr"] == pytest.approx(_psnr(mse), abs=1e-3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"local_contrast": "best"}, "local_contrast must be"),
        ({"local_contrast": (2.0, 8.0)}, "gain must be in"),
        ({"region": "lung"}, "region must be one of"),
        ({"max_cases": 0}, "max_cases must be >= 1"),
    ],
)
def test_evaluation_bad_options(ckpts, cohort, kwargs, message) -> None:
    model = load_pretrained(ckpts["autoencoder"], device="cpu")
    with pytest.raises(ConfigError, match=message):
        cal.evaluate_local_contrast(model, cohort, progress=False, **kwargs)


def test_store_calibration_copy_leaves_the_original_and_refuses_a_full_folder(mae_copy, tmp_path) -> None:
    before = (mae_copy / "config.json").read_bytes()
    calibration = {"sequences": {"dwi": {"gain": 0.8, "sigma_mm": 32.0}}}
    out = cal.store_calibration(mae_copy, calibration, out=tmp_path / "calibrated")
    assert (mae_copy / "config.json").read_bytes() == before
    assert load_pretrained(out, device="cpu").local_contrast == {"dwi": (0.8, 32.0, 1.0)}
    assert load_pretrained(mae_copy, device="cpu").local_contrast == {}
    with pytest.raises(CheckpointError, match="not an empty folder"):
        cal.store_calibration(mae_copy, calibration, out=out)
    with pytest.raises(ConfigError, match="give an output folder"):
        cal.store_calibration("hf://owner/repo", calibration)
    # nothing half-written: a calibration load_pretrained would refuse is refused before writing
    with pytest.raises(CheckpointError, match="'dwi' is not usable"):
        cal.store_calibration(mae_copy, {"sequences": {"dwi": {"gain": 1.5, "sigma_mm": 32.0}}})
    assert (mae_copy / "config.json").read_bytes() == before


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"sequences": {"t2": {"gain": 0.5}}}, "'t2' is not usable"),
        ({"sequences": {"t2": {"gain": 0.5, "sigma_mm": -1}}}, "sigma must be > 0 mm"),
        ({"sequences": {"t2": {"gain": 0.5, "sigma_mm": 8, "level": 9}}}, "level must be in"),
        ({"sequences": {"t2": [0.5, 8]}}, "'t2' is not usable"),
        ({"per_sequence": {}}, "must be an object with a 'sequences' object"),
        ([0.5, 12.0], "must be an object with a 'sequences' object"),
    ],
)
def test_malformed_calibration_in_config_is_refused_on_load(mae_copy, entry, message) -> None:
    cfg = json.loads((mae_copy / "config.json").read_text())
    cfg[cal.CONFIG_KEY] = entry
    (mae_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(mae_copy, device="cpu")


def test_fov_mask_of_a_file_equals_that_of_its_array(cohort) -> None:
    case = read_manifest(cohort).cases[0]
    name = next(iter(case.sequences))
    img = nib.load(str(case.sequences[name]))
    affine = img.affine.copy()
    affine[:3, 3] -= 30.0  # a grid shifted against the sequence: part of it lies outside the FOV
    shape = tuple(int(n) for n in img.shape[:3])
    from_file = cal.fov_mask(case.sequences[name], affine, shape)
    from_array = cal.fov_mask((np.asarray(img.dataobj), img.affine), affine, shape)
    np.testing.assert_array_equal(from_file, from_array)
    assert 0 < from_file.sum() < from_file.size


def test_calibration_for_other_weights_is_ignored_with_a_warning(mae_copy) -> None:
    from safetensors.torch import load_file, save_file

    cal.store_calibration(mae_copy, {"sequences": {"t2": {"gain": 0.5, "sigma_mm": 12.0}}})
    assert load_pretrained(mae_copy, device="cpu").local_contrast == {"t2": (0.5, 12.0, 1.0)}
    weights = load_file(str(mae_copy / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0  # same architecture, other weights
    save_file(weights, str(mae_copy / "model.safetensors"))
    with pytest.warns(UserWarning, match="chosen for other weights"):
        model = load_pretrained(mae_copy, device="cpu")
    assert model.local_contrast == {}
