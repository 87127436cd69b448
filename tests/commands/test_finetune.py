"""``mrfound finetune`` command line: config precedence, outputs, one-line errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from testutils import load_module

from mrfound.cli import main
from mrfound.commands import finetune as cmd


def _cohort_module():
    return load_module("tests/finetune/cohort_data.py")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return p.parse_args(argv)


def test_config_precedence(tmp_path) -> None:
    (tmp_path / "ft.yaml").write_text(
        "steps: 50\nlayer_decay: 0.6\nmanifest: m.csv\ncheckpoint: random:tiny\n"
    )
    args = _parse(
        [
            "--config",
            str(tmp_path / "ft.yaml"),
            "--set",
            "steps=70",
            "--set",
            "sequence_dropout=0.3",
            "--steps",
            "90",
            "--intensity-augment",
            "0.5",
            "--head-only-steps",
            "20",
            "--pooling",
            "centre_per_sequence",
            "--set",
            "preprocess.foreground=otsu",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    cfg = cmd.config_from_args(args)
    assert cfg.steps == 90 and cfg.layer_decay == 0.6 and cfg.sequence_dropout == 0.3
    assert cfg.intensity_augment == 0.5 and cfg.preprocess == {"foreground": "otsu"}
    assert cfg.head_only_steps == 20 and cfg.pooling == "centre_per_sequence"
    assert Path(cfg.manifest).is_absolute() and cfg.task == "classify"
    seg = cmd.config_from_args(
        _parse(
            [
                "--task",
                "segment",
                "--checkpoint",
                "random:tiny",
                "--manifest",
                "m.csv",
                "--organ-augment",
                "0.5",
                "--out",
                str(tmp_path / "seg"),
            ]
        )
    )
    assert seg.organ_augment == 0.5 and seg.task == "segment"


def test_finetune_command_runs_and_rejects_bad_values(tmp_path, capsys) -> None:
    mod = _cohort_module()
    manifest = mod.write_cohort(tmp_path / "cohort", n_cases=12)
    ckpt = mod.write_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "--task",
                "classify",
                "--checkpoint",
                str(ckpt),
                "--manifest",
                str(manifest),
                "--steps",
                "3",
                "--batch-size",
                "2",
                "--val-fraction",
                "0.25",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "checkpoint:" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["task"] == "classify" and saved["steps"] == 3 and saved["layer_decay"] == 0.75
    assert (out / "final" / "model.safetensors").is_file()
    assert (
        main(
            [
                "finetune",
                "--checkpoint",
                str(ckpt),
                "--manifest",
                str(manifest),
                "--labels-fraction",
                "1.5",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "labels_fraction" in capsys.readouterr().err
    assert main(["finetune", "--manifest", str(manifest), "--out", str(tmp_path / "bad")]) == 2
    assert "checkpoint is required" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--help"])
def test_help_has_examples(flag, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", flag])
    assert "--labels-fraction" in capsys.readouterr().out
