"""Tests of mrfound/pretrain/run.py, mrfound/commands/pretrain.py and ``python -m mrfound.pretrain`` on a
tiny NIfTI cohort with a shrunken ``tiny`` model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_MODEL_SETS
from safetensors.torch import load_file

from mrfound.cli import main as mrfound_main
from mrfound.pretrain.trainer import find_latest_checkpoint, read_log

SETS = [a for s in TINY_MODEL_SETS for a in ("--set", s)]


def _args(manifest, out, *extra):
    return [
        "pretrain",
        "--manifest",
        str(manifest),
        "--model",
        "tiny",
        "--out",
        str(out),
        "--roi-size",
        "16",
        "--batch-size",
        "2",
        "--log-every",
        "1",
        "--eval-fraction",
        "0.34",
        *SETS,
        *extra,
    ]


@pytest.fixture(scope="module")
def run4(tiny_cohort, tmp_path_factory):
    """``mrfound pretrain`` for 4 steps with figures and evaluation every 2 steps."""
    out = tmp_path_factory.mktemp("pre") / "run"
    rc = mrfound_main(
        _args(
            tiny_cohort,
            out,
            "--steps",
            "4",
            "--save-every",
            "2",
            "--viz-every",
            "2",
            "--eval-every",
            "2",
            "--seed",
            "1",
        )
    )
    assert rc == 0
    return out


def test_outputs_of_a_run(run4, tiny_cohort):
    cfg = json.loads((run4 / "config.json").read_text())
    assert (
        cfg["steps"] == 4
        and cfg["model_overrides"]["embed_dim"] == 32
        and cfg["manifest"] == [str(tiny_cohort)]
    )
    rows = read_log(run4 / "log.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert {"loss", "loss_inpaint", "loss_synth", "lr", "cases_per_s", "time"} <= set(train_rows[0])
    assert [r["step"] for r in rows if "eval/loss_recon" in r] == [2]
    assert sorted(p.name for p in (run4 / "viz").iterdir()) == [
        "recon_step_0000002.png",
        "recon_step_0000004.png",
    ]
    split = json.loads((run4 / "split.json").read_text())
    subj = {c: f"subj_{int(c[5:]) // 2:02d}" for c in split["train"] + split["heldout"]}
    assert split["heldout"] and not {subj[c] for c in split["train"]} & {subj[c] for c in split["heldout"]}
    ev = json.loads((run4 / "eval.json").read_text())
    for who in ("model", "untrained", "mean_baseline"):
        assert ev[who]["n_inpaint"] > 0 and ev[who]["loss_inpaint"] > 0
    assert ev["masking_seed"] == 1234 and "per-sequence mean patch" in ev["baseline_definition"]


def test_final_checkpoint_has_provenance_and_the_trained_weights(run4, tiny_cohort):
    from mrfound.models.checkpoint import load_model

    final = json.loads((run4 / "final" / "config.json").read_text())
    prov = final["provenance"]
    assert prov["steps"] == 4 and prov["seed"] == 1 and prov["model_size"] == "tiny"
    assert prov["command"].startswith("mrfound pretrain") or "pretrain" in prov["command"]
    assert prov["data"][0]["manifest"] == str(tiny_cohort) and len(prov["data"][0]["sha256"]) == 64
    assert "git_commit" in prov and prov["date"]
    assert final["architecture"] == "masked_modality_autoencoder" and final["preprocessing"]["roi_size"] == 16
    assert final["vocabulary"]["sequences"] == final["encoder"]["sequences"]
    model, _ = load_model(run4 / "final")
    last = load_file(str(find_latest_checkpoint(run4 / "checkpoints") / "model.safetensors"))
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items() if k in last)


def test_python_m_is_the_same_program(run4, capsys):
    from mrfound.pretrain.__main__ import main as module_main

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a = subprocess.run(
        [sys.executable, "-m", "mrfound.pretrain", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert a.returncode == 0
    with pytest.raises(SystemExit):
        mrfound_main(["pretrain", "--help"])
    b = capsys.readouterr().out
    opts = [ln.split()[0] for ln in a.stdout.splitlines() if ln.strip().startswith("--")]
    assert opts == [ln.split()[0] for ln in b.splitlines() if ln.strip().startswith("--")]
    assert "--resume" in opts and "--set" in opts and "accelerate launch --multi_gpu" in a.stdout
    # a bad input gives the same one-line error and exit 2 from both entry points
    for entry in (module_main, lambda argv: mrfound_main(["pretrain", *argv])):
        rc = entry(["--manifest", str(run4 / "nope.csv"), "--out", str(run4 / "x")])
        err = capsys.readouterr().err.strip()
        assert (
            rc == 2 and "\n" not in err and "nope.csv" in err and err.startswith("mrfound pretrain: error:")
        )


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--set", "stpes=3"], "did you mean 'steps'"),
        (["--model", "huge"], "unknown model size 'huge'"),
        (["--mixed-precision", "fp16", "--cpu"], "fp16"),
        (["--set", "model_overrides.patch_size=5"], "patch_size"),
    ],
)
def test_bad_input_is_one_line_exit_2(tiny_cohort, tmp_path, capsys, extra, message):
    rc = mrfound_main(_args(tiny_cohort, tmp_path / "r", "--steps", "2", *extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and err.startswith("mrfound pretrain: error:") and "\n" not in err
    assert not (tmp_path / "r" / "final").exists()


@pytest.mark.parametrize(
    "fault,message",
    [
        ("missing", "case 'case_03', column 't2', file "),
        ("garbage", "case 'case_03', column 't2', file "),
    ],
)
def test_bad_case_is_one_line_exit_2_and_leaves_no_output(tiny_cohort, tmp_path, capsys, fault, message):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_cohort.parent, bad)
    if fault == "missing":
        (bad / "c03_t2.nii.gz").unlink()
    else:
        (bad / "c03_t2.nii.gz").write_bytes(b"not an image")
    rc = mrfound_main(_args(bad / "manifest.csv", tmp_path / "r", "--steps", "2"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("mrfound pretrain: error:") and message in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_existing_run_needs_resume(run4, tiny_cohort, capsys):
    rc = mrfound_main(_args(tiny_cohort, run4, "--steps", "4"))
    assert rc == 2 and "--resume" in capsys.readouterr().err


class _Crash(BaseException):
    """Stands in for a kill between two steps (not an Exception, so nothing handles it)."""


def test_crashed_pretrain_resumes_to_the_same_weights(tiny_cohort, tmp_path, monkeypatch):
    """4 steps straight == crash after step 3 (checkpoint at 2) + ``--resume``, through the whole pipeline
    (preprocessing cache, random crops, masking); SIGKILL itself is tested with the toy loop."""
    import mrfound.pretrain.trainer as trainer_module

    common = [
        "--steps",
        "4",
        "--save-every",
        "2",
        "--seed",
        "2",
        "--eval-fraction",
        "0",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert mrfound_main(_args(tiny_cohort, tmp_path / "straight", *common)) == 0

    real = trainer_module.fault_point

    def crash_at_3(name):
        if name == "step:3":
            raise _Crash
        real(name)

    monkeypatch.setattr(trainer_module, "fault_point", crash_at_3)
    with pytest.raises(_Crash):
        mrfound_main(_args(tiny_cohort, tmp_path / "killed", *common))
    monkeypatch.setattr(trainer_module, "fault_point", real)
    assert find_latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step_0000002"
    assert mrfound_main(_args(tiny_cohort, tmp_path / "killed", *common, "--resume")) == 0
    wa = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    wc = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert max(float((wa[k] - wc[k]).abs().max()) for k in wa) <= 1e-5
    la = [r["loss"] for r in read_log(tmp_path / "straight" / "log.jsonl")]
    lc = [r["loss"] for r in read_log(tmp_path / "killed" / "log.jsonl")]
    assert la == lc and len(la) == 4
    # without held-out cases the figure shows training cases and there is no eval.json
    assert (tmp_path / "killed" / "viz" / "recon_step_0000004.png").is_file()
    assert not (tmp_path / "killed" / "eval.json").exists()


def test_pooled_manifests_need_unique_case_ids(tiny_cohort, tmp_path) -> None:
    from mrfound.data.sequences import DEFAULT_VOCABULARY
    from mrfound.errors import ManifestError
    from mrfound.pretrain.run import load_cohort

    single = load_cohort([str(tiny_cohort)], DEFAULT_VOCABULARY)
    # the same cases under other ids pool; the same ids twice do not, naming the case and the file
    renamed = tmp_path / "renamed.csv"
    lines = tiny_cohort.read_text().splitlines()
    root = tiny_cohort.parent
    rows = [lines[0]] + [
        ",".join(["u" + cells[0], *[str(root / c) if c.endswith(".nii.gz") else c for c in cells[1:]]])
        for cells in (ln.split(",") for ln in lines[1:])
    ]
    renamed.write_text("\n".join(rows) + "\n")
    pooled = load_cohort([str(tiny_cohort), str(renamed)], DEFAULT_VOCABULARY)
    assert len(pooled) == 2 * len(single)
    assert [c.case for c in pooled.cases[len(single) :]] == ["u" + c.case for c in single.cases]
    with pytest.raises(ManifestError, match="unique across manifests") as e:
        load_cohort([str(tiny_cohort), str(tiny_cohort)], DEFAULT_VOCABULARY)
    assert single.cases[0].case in str(e.value)
