"""Issue 7.3, user-facing side: untrusted checkpoints through ``mrfound.load_pretrained``,
``mrfound info --checkpoint`` and ``mrfound predict --checkpoint``.

The unit tests of :mod:`mrfound.models.checkpoint` (tests/models/test_checkpoint.py) cover the loader's
functions; here each bad checkpoint goes through the three doors a user opens, which must all refuse it
with a clear one-line error (exit 2 for the commands), load no pickle, make no network request for a
malformed hub id, and leave no output. Also: a checkpoint write killed half-way (SIGKILL in a real
process) never replaces the last good checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mrfound
from mrfound.cli import main
from mrfound.errors import CheckpointError

SURFACES = ("load_pretrained", "info", "predict")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def bad(tiny_checkpoints, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Bad checkpoint name -> (argument given to the loader, phrase the error must contain)."""
    root = tmp_path_factory.mktemp("bad_checkpoints")
    good = tiny_checkpoints["classifier"]
    state = load_file(str(good / "model.safetensors"))
    out: dict[str, tuple[str, str]] = {}

    torch.save(state, root / "model.pt")
    out["pickle_pt"] = (str(root / "model.pt"), "pickle")
    legacy = root / "legacy"
    legacy.mkdir()
    torch.save(state, legacy / "pytorch_model.bin")
    out["pickle_folder"] = (str(legacy), "pickle")
    disguised = _copy(good, root / "disguised")
    torch.save(state, disguised / "model.safetensors")
    out["pickle_as_safetensors"] = (str(disguised), "pickle")

    key = sorted(state)[0]
    missing = _copy(good, root / "missing")
    save_file({k: v for k, v in state.items() if k != key}, str(missing / "model.safetensors"))
    out["missing_tensor"] = (str(missing), f"missing tensors {key}")
    extra = _copy(good, root / "extra")
    save_file({**state, "backdoor.weight": torch.zeros(3)}, str(extra / "model.safetensors"))
    out["extra_tensor"] = (str(extra), "unexpected tensors backdoor.weight")
    wrong = _copy(good, root / "wrong_shape")
    save_file({**state, key: torch.zeros(*state[key].shape, 2)}, str(wrong / "model.safetensors"))
    out["wrong_shape"] = (str(wrong), f"wrong shapes {key}")

    arch = _copy(good, root / "unknown_arch")
    cfg = json.loads((arch / "config.json").read_text())
    cfg["architecture"] = "resnet50_with_custom_code"
    (arch / "config.json").write_text(json.dumps(cfg))
    out["unknown_architecture"] = (str(arch), "unknown architecture 'resnet50_with_custom_code'")

    # registry names (resolved under $MRFOUND_HOME/models; the `registry` fixture sets the home and cwd)
    home = root / "home"
    (home / "models").mkdir(parents=True)
    _copy(good, home / "escaped")  # a real checkpoint just outside the registry
    outside = _copy(good, root / "outside")
    os.symlink(outside, home / "models" / "sneaky")
    out["name_dotdot"] = ("../escaped", "no such checkpoint folder")
    out["name_inner_dotdot"] = ("x/../../escaped", "not a valid model name")
    out["name_symlink_out"] = ("sneaky", "outside")
    out["name_absolute"] = (str(root / "absent" / "model"), "no such checkpoint folder")
    (root / "plain").mkdir()
    out["name_absolute_not_a_checkpoint"] = (str(root / "plain"), "not a checkpoint folder")
    # malformed hub ids: refused before any request (the `registry` fixture makes a request fail the test)
    out["hub_dotdot"] = ("hf://owner/../escaped", "not a valid Hugging Face id")
    out["hub_space"] = ("hf://own er/repo", "not a valid Hugging Face id")
    out["hub_revision_escape"] = ("hf://owner/repo@../../etc", "not a valid Hugging Face id")
    return out


@pytest.fixture
def registry(bad, monkeypatch, tmp_path):
    """$MRFOUND_HOME of the bad registry, a cwd without '../escaped', and no network."""
    home = Path(bad["pickle_pt"][0]).parent / "home"
    monkeypatch.setenv("MRFOUND_HOME", str(home))
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    calls = []

    def no_request(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("a Hugging Face request was attempted")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_request)
    return calls


def _pickle_loads_forbidden(monkeypatch) -> None:
    """Any unpickling during the test fails it (torch.load included)."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)


NAMES = (
    "pickle_pt", "pickle_folder", "pickle_as_safetensors", "missing_tensor", "extra_tensor", "wrong_shape",
    "unknown_architecture", "name_dotdot", "name_inner_dotdot", "name_symlink_out", "name_absolute",
    "name_absolute_not_a_checkpoint", "hub_dotdot", "hub_space", "hub_revision_escape",
)  # fmt: skip


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("name", NAMES)
def test_bad_checkpoint_is_refused_everywhere(
    name, surface, bad, registry, corpus, tmp_path, capsys, monkeypatch
):
    arg, phrase = bad[name]
    _pickle_loads_forbidden(monkeypatch)
    if surface == "load_pretrained":
        with pytest.raises(CheckpointError) as info:
            mrfound.load_pretrained(arg)
        assert phrase in str(info.value) and "\n" not in str(info.value)
    else:
        out = tmp_path / "out"
        argv = ["info", "--checkpoint", arg]
        if surface == "predict":
            argv = ["predict", "--checkpoint", arg, "--manifest", str(corpus.clean), "--out", str(out)]
        rc = main(argv)
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert rc == 2, captured
        assert err.startswith(f"mrfound {surface}: error: ") and "\n" not in err, err
        assert phrase in err and "Traceback" not in captured.err
        assert captured.out == "" and not out.exists()
    assert registry == []  # no network request


def test_the_good_checkpoint_passes_the_same_doors(tiny_checkpoints, registry, corpus, tmp_path, capsys):
    """Control: the checks above refuse the faults, not every checkpoint."""
    good = str(tiny_checkpoints["classifier"])
    assert mrfound.load_pretrained(good).config["architecture"] == "classifier"
    assert main(["info", "--checkpoint", good]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "classifier"
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", good, "--manifest", str(corpus.clean), "--out", str(out)]) == 0
    assert (out / "predictions.csv").is_file()


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import safetensors.torch as st
    from mrfound.models.checkpoint import load_checkpoint, save_checkpoint, build_model

    folder = sys.argv[1]
    cfg, state = load_checkpoint(folder)
    model = build_model(cfg)
    model.load_state_dict({k: v + 1.0 for k, v in state.items()})  # a different, newer checkpoint
    real = st.save_file

    def half_then_die(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:  # cut the file mid-way, as a kill during the write would
            f.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    st.save_file = half_then_die
    save_checkpoint(folder, model, {k: v for k, v in cfg.items() if k in ("vocabulary", "preprocessing")})
    """
)


def test_checkpoint_write_killed_half_way_keeps_the_last_good_one(tiny_checkpoints, tmp_path):
    from mrfound.utils.io import cleanup_stale_temps

    final = _copy(tiny_checkpoints["classifier"], tmp_path / "run" / "final")
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(final)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before  # untouched
    leftovers = [p for p in final.parent.iterdir() if p.name != "final"]
    assert leftovers and all(p.name.startswith(".final.") for p in leftovers)  # only a hidden temporary
    model = mrfound.load_pretrained(final)  # the last good checkpoint still loads
    assert model.config["architecture"] == "classifier"
    assert cleanup_stale_temps(final.parent) and [p.name for p in final.parent.iterdir()] == ["final"]
