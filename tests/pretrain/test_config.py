"""Tests of mrfound/pretrain/config.py and the config resolution of mrfound/commands/pretrain.py."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from mrfound.commands import pretrain as command
from mrfound.errors import ConfigError
from mrfound.pretrain.config import (
    PretrainConfig,
    TrainerConfig,
    apply_overrides,
    load_config_file,
    parse_set_options,
)


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    return p.parse_args(list(argv))


def test_yaml_and_json_files_load_with_types(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(
        "steps: 20\nlr: 3.0e-4\nbetas: [0.9, 0.99]\nema: 0.999\nmae:\n  mask_ratio: 0.8\n"
        "manifest: [a.csv, b.csv]\nskip_nonfinite: true\n"
    )
    cfg = PretrainConfig.from_dict(load_config_file(y))
    assert cfg.steps == 20 and cfg.lr == pytest.approx(3e-4) and cfg.betas == (0.9, 0.99)
    assert cfg.ema == 0.999 and cfg.mae == {"mask_ratio": 0.8} and cfg.manifest == ["a.csv", "b.csv"]
    assert cfg.skip_nonfinite is True
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"steps": 7, "clip_grad": None, "warmup_steps": 2}))
    cfg = TrainerConfig.from_dict(load_config_file(j))
    assert (cfg.steps, cfg.clip_grad, cfg.warmup_steps) == (7, None, 2)


def test_set_strings_are_converted_to_field_types():
    sets = parse_set_options(
        [
            "lr=1e-3",
            "steps=1e2",
            "ema=null",
            "betas=0.8,0.9",
            "mae.mask_ratio=0.6",
            "model_overrides.depth=2",
            "skip_nonfinite=yes",
            "manifest=x.csv",
        ]
    )
    cfg = apply_overrides(PretrainConfig(), sets, source="--set")
    assert cfg.lr == 1e-3 and cfg.steps == 100 and cfg.ema is None and cfg.betas == (0.8, 0.9)
    assert cfg.mae == {"mask_ratio": 0.6} and cfg.model_overrides == {"depth": 2}
    assert cfg.skip_nonfinite is True and cfg.manifest == ["x.csv"]


@pytest.mark.parametrize(
    "sets,match",
    [
        ({"stpes": "3"}, "unknown key 'stpes' \\(did you mean 'steps'\\?\\)"),
        ({"steps": "many"}, "key 'steps': cannot use 'many' as int"),
        ({"steps": "2.5"}, "key 'steps'"),
        ({"lr.x": "1"}, "'lr' is not a mapping"),
        ({"betas": "0.9"}, "expected 2 values"),
    ],
)
def test_bad_overrides_raise_one_line_config_errors(sets, match):
    with pytest.raises(ConfigError, match=match) as e:
        apply_overrides(PretrainConfig(), sets, source="--set")
    assert "\n" not in str(e.value)


def test_set_needs_key_value():
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_set_options(["steps"])


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"steps": 0}, "'steps' = 0: must be a positive integer"),
        ({"lr": -1.0}, "'lr'"),
        ({"min_lr": 1.0}, "'min_lr'"),
        ({"mixed_precision": "fp8"}, "must be one of no, bf16, fp16"),
        ({"ema": 1.5}, "'ema'"),
        ({"warmup_steps": 50}, "'warmup_steps'"),
        ({"grad_accum": 0}, "'grad_accum'"),
        ({"keep_checkpoints": 0}, "'keep_checkpoints'"),
        ({"out": ""}, "run folder is required"),
        ({"manifest": []}, "at least one manifest"),
        ({"eval_fraction": 1.0}, "'eval_fraction'"),
        ({"lesion_crops": 1.5}, "'lesion_crops'"),
    ],
)
def test_validation_names_the_key(changes, match):
    base = dict(out="run", manifest=["m.csv"], steps=10)
    base.update(changes)
    with pytest.raises(ConfigError, match=match):
        PretrainConfig(**base).validate()


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config_file(bad)
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config_file(lst)


def test_precedence_defaults_file_set_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 30\nlr: 0.01\nbatch_size: 4\nmanifest: [m.csv]\nout: r\n")
    cfg = command.config_from_args(
        _args("--config", str(f), "--set", "lr=0.02", "--set", "steps=40", "--steps", "50")
    )
    assert cfg.steps == 50 and cfg.lr == 0.02 and cfg.batch_size == 4 and cfg.seed == 0
    assert cfg.manifest == [os.path.abspath("m.csv")] and cfg.out == os.path.abspath("r")


def test_resume_takes_saved_config_and_refuses_changes(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = PretrainConfig(out=str(run), manifest=[str(tmp_path / "m.csv")], steps=10, lr=0.05, seed=4)
    (run / "config.json").write_text(json.dumps(saved.to_dict()))
    cfg = command.config_from_args(_args("--out", str(run), "--resume"))
    assert cfg.resume and cfg.lr == 0.05 and cfg.seed == 4 and cfg.manifest == saved.manifest
    cfg = command.config_from_args(_args("--out", str(run), "--resume", "--steps", "20", "--log-every", "1"))
    assert cfg.steps == 20 and cfg.log_every == 1
    with pytest.raises(ConfigError, match="--resume: lr, seed differ"):
        command.config_from_args(_args("--out", str(run), "--resume", "--lr", "0.1", "--seed", "5"))
