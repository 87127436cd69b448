"""Tests of ``mrfound calibrate`` (mrfound/commands/calibrate.py) and its effect on ``mrfound impute``."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from mrfound.cli import main


@pytest.fixture()
def mae_copy(inference_setup, tmp_path):
    """A private copy of the shared autoencoder checkpoint (calibrate writes into it)."""
    return shutil.copytree(inference_setup["autoencoder"], tmp_path / "mae")


def _calibrate(checkpoint, manifest, *extra: str) -> int:
    return main(["calibrate", "--checkpoint", str(checkpoint), "--manifest", str(manifest), *extra])


def _impute(checkpoint, manifest, out, *extra: str) -> int:
    args = ["--checkpoint", str(checkpoint), "--manifest", str(manifest), "--out", str(out)]
    return main(["impute", *args, "--sequence", "t1_art", *extra])


def test_calibrate_stores_per_sequence_choice_that_impute_then_applies(
    inference_setup, mae_copy, tmp_path, capsys
) -> None:
    manifest = inference_setup["manifest"]
    assert _calibrate(mae_copy, manifest, "--sequences", "t1_art,T2WI", "--widths-mm", "12", "24") == 0
    out = capsys.readouterr().out
    entry = json.loads((mae_copy / "config.json").read_text())["local_contrast"]
    assert set(entry["sequences"]) <= {"t1_art", "t2"} and entry["sequences"]
    assert entry["widths_mm"] == [12.0, 24.0] and entry["region"] == "liver"
    assert entry["provenance"]["command"].startswith("mrfound calibrate --checkpoint")
    assert entry["provenance"]["manifest"] == str(manifest)
    for name, v in entry["sequences"].items():
        assert name in out and v["sigma_mm"] in (12.0, 24.0)
    assert "stored in" in out
    art = entry["sequences"]["t1_art"]

    # impute applies it by default, --as-decoded and --local-contrast override it
    assert _impute(mae_copy, manifest, tmp_path / "auto") == 0
    assert "(the checkpoint's calibration)" in capsys.readouterr().out
    given = ("--local-contrast", str(art["gain"]), str(art["sigma_mm"]), str(art["level"]))
    assert _impute(mae_copy, manifest, tmp_path / "same", *given) == 0
    assert "(given)" in capsys.readouterr().out
    assert _impute(mae_copy, manifest, tmp_path / "plain", "--as-decoded") == 0
    assert "as decoded" in capsys.readouterr().out
    for f in sorted((tmp_path / "auto").glob("*.nii.gz")):
        a = np.asarray(nib.load(str(f)).dataobj)
        np.testing.assert_array_equal(a, np.asarray(nib.load(str(tmp_path / "same" / f.name)).dataobj))
        if (art["gain"], art["level"]) != (1.0, 1.0):
            assert not np.allclose(a, np.asarray(nib.load(str(tmp_path / "plain" / f.name)).dataobj))


def test_calibrate_out_writes_a_copy(inference_setup, mae_copy, tmp_path, capsys) -> None:
    before = (mae_copy / "config.json").read_bytes()
    copy = tmp_path / "calibrated"
    args = ("--region", "body", "--cases", "2", "--out", str(copy))
    assert _calibrate(mae_copy, inference_setup["manifest"], *args) == 0
    assert (mae_copy / "config.json").read_bytes() == before
    assert json.loads((copy / "config.json").read_text())["local_contrast"]["region"] == "body"
    # a second --out into the now non-empty folder is refused, nothing changed
    assert _calibrate(mae_copy, inference_setup["manifest"], *args) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_calibrate_check_reports_held_out_psnr_of_what_impute_applies(
    inference_setup, mae_copy, tmp_path, capsys
) -> None:
    from mrfound.calibration import evaluate_local_contrast
    from mrfound.pipeline import load_pretrained

    manifest = inference_setup["manifest"]
    args = ("--sequences", "t1_art", "--cases", "2", "--check", str(manifest))
    assert _calibrate(mae_copy, manifest, *args) == 0
    out = capsys.readouterr().out
    assert "held-out check on" in out
    # the printed numbers are those of the stored calibration, reloaded
    model = load_pretrained(mae_copy, device="cpu")
    art = evaluate_local_contrast(model, manifest, sequences=["t1_art"], max_cases=2)["sequences"]["t1_art"]
    assert art["local_contrast"] == list(model.local_contrast["t1_art"])
    lines = out.splitlines()
    after = lines[next(i for i, x in enumerate(lines) if x.startswith("held-out check on")) :]
    row = next(x for x in after if x.startswith("t1_art"))
    assert f"{art['psnr_as_decoded']:6.2f} -> {art['psnr']:6.2f} dB" in row


def test_calibrate_refuses_a_bad_check_manifest_before_calibrating(
    inference_setup, mae_copy, tmp_path, capsys
) -> None:
    before = (mae_copy / "config.json").read_bytes()
    missing = tmp_path / "nope.csv"
    assert _calibrate(mae_copy, inference_setup["manifest"], "--check", str(missing)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrfound calibrate: error:") and "nope.csv" in err and "\n" not in err
    assert (mae_copy / "config.json").read_bytes() == before


@pytest.mark.parametrize(
    "which,extra,message",
    [
        ("segmenter", [], "cannot impute"),
        ("autoencoder", ["--cases", "0"], "--cases must be >= 1"),
        ("autoencoder", ["--sequences", "flair"], "unknown sequence 'flair'"),
        ("autoencoder", ["--widths-mm", "-4"], "widths must be > 0 mm"),
        ("autoencoder", ["--overlap", "1.0"], "--overlap must be in"),
        ("autoencoder", ["--levels", "0"], "levels must be in"),
    ],
)
def test_calibrate_bad_input_one_line_exit_2(
    inference_setup, tmp_path, capsys, which, extra, message
) -> None:
    ckpt = shutil.copytree(inference_setup[which], tmp_path / which)
    before = (ckpt / "config.json").read_bytes()
    assert _calibrate(ckpt, inference_setup["manifest"], *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrfound calibrate: error:") and message in err and "\n" not in err
    assert (ckpt / "config.json").read_bytes() == before


def test_impute_refuses_both_overrides(inference_setup, tmp_path, capsys) -> None:
    extra = ("--as-decoded", "--local-contrast", "0.5", "12")
    with pytest.raises(SystemExit) as exc:
        _impute(inference_setup["autoencoder"], inference_setup["manifest"], tmp_path / "o", *extra)
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
