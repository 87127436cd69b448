"""Issue 7.4 end to end: ``mrfound pretrain`` on a run that really diverges (learning rate 1e30, no
monkeypatching) stops at the first NaN loss with one line naming the step and the batch's cases, exit 2,
and writes no NaN weights; with ``--skip-nonfinite`` it finishes with finite weights and logs the skips.

The loop's own NaN tests (stop before the update, skip and count, names in the message) are in
tests/pretrain/test_trainer.py; NaN/Inf *voxels* never reach training (see test_bad_inputs.py: the
guard rejects them before any output).
"""

from __future__ import annotations

import json
import re

import torch
from safetensors.torch import load_file

from mrfound.cli import main


def _argv(corpus, out, pretrain_opts, *extra):
    return [
        "pretrain", "--manifest", str(corpus.clean), "--out", str(out), *pretrain_opts, "--steps", "4",
        "--batch-size", "2", "--eval-fraction", "0", "--viz-every", "0", "--save-every", "1",
        "--lr", "1e30", "--warmup-steps", "0", "--clip-grad", "0", *extra,
    ]  # fmt: skip


def _all_finite(folder) -> int:
    files = sorted(folder.rglob("*.safetensors"))
    for f in files:
        for name, t in load_file(str(f)).items():
            assert torch.isfinite(t.float()).all(), f"non-finite values in {f}:{name}"
    return len(files)


def test_diverging_pretrain_stops_with_one_line_naming_step_and_cases(
    corpus, pretrain_opts, tmp_path, capsys
):
    out = tmp_path / "run"
    rc = main(_argv(corpus, out, pretrain_opts))
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in captured.err, captured.err
    m = re.fullmatch(
        r"mrfound pretrain: error: non-finite loss \(\w+\) at step (\d+), batch cases: (.+?);.*", err
    )
    assert m, err
    cases = m.group(2).split(", ")
    assert len(cases) == 2 and set(cases) <= set(corpus.good_cases)
    assert "--skip-nonfinite" in err
    assert not (out / "final").exists()  # nothing exported
    assert _all_finite(out / "checkpoints") >= 1  # the checkpoints written before the NaN step are finite
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["step"] < int(m.group(1)) for r in logged if "step" in r)


def test_skip_nonfinite_finishes_with_finite_weights_and_logs_each_skip(
    corpus, pretrain_opts, tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(_argv(corpus, out, pretrain_opts, "--skip-nonfinite")) == 0
    capsys.readouterr()
    assert _all_finite(out / "final") == 1
    skips = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    skips = [r for r in skips if r.get("event") == "skipped_nonfinite"]
    assert skips and all(set(r["cases"]) <= set(corpus.good_cases) and r["what"] for r in skips)
    prov = json.loads((out / "final" / "config.json").read_text())["provenance"]
    assert prov["skipped_nonfinite"] == len(skips)
