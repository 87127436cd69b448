"""Issue 7.1: every manifest-reading command on every fault of the bad-input corpus (see conftest.py).

Default (``--on-error raise``): exit code 2, one stderr line ``mrfound CMD: error: case 'X', column 'Y'...:
problem`` (the manifest file instead for faults of the whole file), no traceback, and no output: ``--out`` is
absent and the corpus folder unchanged. ``--on-error skip``: the bad rows are in ``OUT/rejected.csv`` with
their reasons and every good row is processed. Commands run in-process (``mrfound.cli.main``); a few real
subprocesses prove the exit code and the absence of tracebacks end to end. Also unit tests of the shared
mechanism, :func:`mrfound.data.guard.checked_manifest`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mrfound.cli import main
from mrfound.data.guard import checked_manifest
from mrfound.errors import ConfigError, ManifestError

COMMANDS = ("validate", "preprocess", "pretrain", "probe", "finetune", "predict", "impute")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def argv(tiny_checkpoints, pretrain_opts):
    """``argv(command, manifest, out, skip=False)``: the command line of ``command`` on ``manifest``."""
    mae, clf = str(tiny_checkpoints["autoencoder"]), str(tiny_checkpoints["classifier"])

    def build(command: str, manifest: Path, out: Path, skip: bool = False) -> list[str]:
        m, o = str(manifest), str(out)
        on_error = ["--on-error", "skip"] if skip else []
        if command == "validate":
            return ["validate", "--manifest", m, *([*on_error, "--out", o] if skip else [])]
        if command == "preprocess":
            return ["preprocess", "--manifest", m, "--out", o, "--spacing", "3", *on_error]
        if command == "pretrain":
            return [
                "pretrain", "--manifest", m, "--out", o, *pretrain_opts, "--steps", "1", "--batch-size", "2",
                "--eval-fraction", "0", "--viz-every", "0", "--log-every", "1", *on_error,
            ]  # fmt: skip
        if command == "probe":
            return [
                "probe", "--checkpoint", mae, "--train-manifest", m, "--out", o, "--folds", "2",
                "--n-boot", "0", "--protocols", "all", "--cache-dir", f"{o}/cache",
                "--feature-cache", f"{o}/features", *on_error,
            ]  # fmt: skip
        if command == "finetune":
            return [
                "finetune", "--task", "classify", "--checkpoint", mae, "--manifest", m, "--out", o,
                "--steps", "1", "--batch-size", "2", "--val-fraction", "0", "--n-boot", "0", *on_error,
            ]  # fmt: skip
        if command == "predict":
            return ["predict", "--checkpoint", clf, "--manifest", m, "--out", o, *on_error]
        if command == "calibrate":  # no --on-error: it reads a sample of cases, each must be usable
            return ["calibrate", "--checkpoint", mae, "--manifest", m, "--out", o]
        if command == "impute":
            return [
                "impute",
                "--checkpoint",
                mae,
                "--manifest",
                m,
                "--sequence",
                "t1_pre",
                "--out",
                o,
                *on_error,
            ]
        raise AssertionError(command)

    return build


def _assert_one_line_error(command: str, captured, fault) -> str:
    err = captured.err.strip()
    assert "Traceback" not in captured.err + captured.out
    assert err.startswith(f"mrfound {command}: error: "), err
    assert "\n" not in err, err
    assert fault.words in err, err
    if fault.row_level:
        assert f"case '{fault.case}'" in err and f"column '{fault.column}'" in err, err
    else:
        assert fault.manifest.name in err, err
    return err


# ------------------------------------------------------------------------------------------ --on-error raise
@pytest.mark.parametrize("command", [*COMMANDS, "calibrate"])
def test_every_fault_is_one_line_exit_2_and_writes_nothing(
    command, fault_name, corpus, deny_access, argv, tmp_path, capsys, tree
):
    fault = corpus.faults[fault_name]
    out = tmp_path / "out"
    before = tree(corpus.root)
    rc = main(argv(command, fault.manifest, out))
    captured = capsys.readouterr()
    assert rc == 2, captured
    _assert_one_line_error(command, captured, fault)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert tree(corpus.root) == before  # nothing written beside the manifest or the images either


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "validate"])
def test_faults_of_the_whole_file_cannot_be_skipped(command, file_fault_name, corpus, argv, tmp_path, capsys):
    fault = corpus.faults[file_fault_name]
    out = tmp_path / "out"
    assert main(argv(command, fault.manifest, out, skip=True)) == 2
    _assert_one_line_error(command, capsys.readouterr(), fault)
    assert not out.exists()


# ------------------------------------------------------------------------------------------- --on-error skip
def _processed(command: str, out: Path, stdout: str) -> set[str]:
    """Case ids the command produced output for."""
    if command == "validate":
        return set(pd.read_csv(out / "clean.csv", dtype=str)["case"])
    if command == "preprocess":
        from mrfound.data.cache import PreprocessCache
        from mrfound.data.manifest import read_manifest
        from mrfound.data.preprocess import PreprocessConfig

        cache = PreprocessCache(out, PreprocessConfig(spacing=3.0))
        return {c.case for c in read_manifest(out / "clean.csv") if cache.has(c)}
    if command == "pretrain":
        split = json.loads((out / "split.json").read_text())
        assert (out / "final" / "model.safetensors").is_file()
        return set(split["train"]) | set(split["heldout"])
    if command in ("probe", "predict"):
        return set(pd.read_csv(out / "predictions.csv", dtype=str)["case"])
    if command == "impute":
        table = pd.read_csv(out / "imputed_t1_pre.csv", dtype=str, keep_default_na=False)
        assert all((out / f).is_file() for f in table["file"])
        return set(table["case"])
    if command == "finetune":
        assert (out / "final" / "model.safetensors").is_file()
        return set(pd.read_csv(out / "split.csv", dtype=str)["case"])
    raise AssertionError(command)


@pytest.mark.parametrize("command", COMMANDS)
def test_skip_lists_every_bad_row_in_rejected_csv_and_processes_the_rest(
    command, corpus, deny_access, argv, tmp_path, capsys
):
    out = tmp_path / "out"
    rc = main(argv(command, corpus.combined, out, skip=True))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err
    rejected = pd.read_csv(out / "rejected.csv", dtype=str, keep_default_na=False)
    assert set(rejected["case"]) == set(corpus.combined_bad)
    for case, words in corpus.combined_bad.items():
        reasons = rejected.loc[rejected["case"] == case, "reason"]
        assert all(words in r for r in reasons), (case, list(reasons))
    assert _processed(command, out, captured.out) == set(corpus.good_cases)


# ----------------------------------------------------------------------------------------------- processes
SUBPROCESS_CASES = {  # command -> fault: one real process each, all started together
    "validate": "truncated_gz",
    "pretrain": "nan_voxels",
    "predict": "huge_slice",
}


def test_real_processes_exit_2_with_one_line_and_no_traceback(corpus, argv, tmp_path):
    procs = {}
    for command, fault_name in SUBPROCESS_CASES.items():
        fault = corpus.faults[fault_name]
        cmd = [sys.executable, "-m", "mrfound", *argv(command, fault.manifest, tmp_path / command)]
        procs[command] = subprocess.Popen(
            cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )
    for command, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        fault = corpus.faults[SUBPROCESS_CASES[command]]
        assert proc.returncode == 2, (command, stderr[-2000:])
        assert stderr.count("\n") == 1, (command, stderr)
        _assert_one_line_error(command, type("Captured", (), {"out": stdout, "err": stderr}), fault)
        assert not (tmp_path / command).exists()


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="runs as root, where chmod 000 does not stop reading; the in-process tests simulate it",
)
def test_unreadable_file_in_a_real_process(corpus, tmp_path):
    import shutil

    img = tmp_path / "locked_t2.nii.gz"
    shutil.copy(corpus.root / "images" / "good0_t2.nii.gz", img)
    img.chmod(0)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"case,t2\nlocked,{img}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mrfound", "validate", "--manifest", str(manifest)],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "case locked, column t2" in proc.stdout and "permission denied" in proc.stderr


# ---------------------------------------------------------------------------------------- the guard itself
def test_guard_skip_sets_each_bad_row_aside(row_fault_name, corpus, deny_access, tmp_path):
    fault = corpus.faults[row_fault_name]
    manifest = checked_manifest(fault.manifest, on_error="skip", out_dir=tmp_path)
    assert [c.case for c in manifest] == corpus.good_cases
    assert manifest.path == tmp_path / "clean.csv"
    assert all(p.is_file() for c in manifest for p in [*c.sequences.values(), c.mask])
    rejected = pd.read_csv(tmp_path / "rejected.csv", dtype=str, keep_default_na=False)
    assert set(rejected["case"]) == set(fault.bad_cases)
    assert all(fault.words in r for r in rejected["reason"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_guard_raise_returns_the_manifest_untouched_when_clean(corpus, tmp_path):
    manifest = checked_manifest(corpus.clean, out_dir=tmp_path)
    assert [c.case for c in manifest] == corpus.good_cases and manifest.path == corpus.clean
    assert list(tmp_path.iterdir()) == []  # raise mode writes nothing, even with out_dir
    assert len(checked_manifest(corpus.clean, on_error="stop")) == len(corpus.good_cases)  # alias


def test_guard_refuses_bad_options_and_a_manifest_without_usable_rows(corpus, tmp_path):
    with pytest.raises(ConfigError, match="on-error"):
        checked_manifest(corpus.clean, on_error="ignore")
    with pytest.raises(ConfigError, match="output folder"):
        checked_manifest(corpus.clean, on_error="skip")
    bad = corpus.faults["missing_file"]
    only_bad = tmp_path / "only_bad.csv"
    lines = bad.manifest.read_text().splitlines()
    only_bad.write_text("\n".join([lines[0], next(x for x in lines if x.startswith("bad_"))]) + "\n")
    (tmp_path / "images").symlink_to(corpus.root / "images")
    with pytest.raises(ManifestError, match="no usable row: all 1 row"):
        checked_manifest(only_bad, on_error="skip", out_dir=tmp_path / "out")
    assert "file not found" in (tmp_path / "out" / "rejected.csv").read_text()


def test_guard_names_the_first_problem_and_counts_the_others(corpus, deny_access):
    with pytest.raises(ManifestError) as info:
        checked_manifest(corpus.combined)
    msg = str(info.value)
    assert msg.startswith("case 'bad_missing_file', column 't2', file ") and "file not found" in msg
    assert "more; 'mrfound validate --manifest" in msg and "\n" not in msg


def test_split_manifest_sets_bad_rows_aside_without_writing(corpus, deny_access, tree):
    from mrfound.data.guard import split_manifest

    before = tree(corpus.root)
    split = split_manifest(corpus.combined)
    assert [c.case for c in split.manifest] == corpus.good_cases
    assert split.manifest.path == corpus.combined
    assert all(p.is_file() for c in split.manifest for p in c.sequences.values())
    rows = split.rejected_rows()
    assert {c for c, _ in rows} == set(corpus.combined_bad) and len(rows) == len(corpus.combined_bad) + 1
    assert all(corpus.combined_bad[c] in reason for c, reason in rows)
    assert tree(corpus.root) == before
    with pytest.raises(ManifestError, match="semicolon"):
        split_manifest(corpus.faults["semicolon_csv"].manifest)
