"""Disk full during a checkpoint write (issue 7.2): the run fails loudly and keeps the previous checkpoint.

Uses the toy model and data of ``tests/pretrain/_pretrain_toy.py`` (a real :class:`Trainer` run of a few
milliseconds per step).
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest

PRETRAIN_TESTS = Path(__file__).resolve().parents[1] / "pretrain"
if str(PRETRAIN_TESTS) not in sys.path:
    sys.path.insert(0, str(PRETRAIN_TESTS))

from _pretrain_toy import toy_config, train  # noqa: E402

from mrfound.pretrain.trainer import STATE_FILE, find_latest_checkpoint  # noqa: E402


def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import accelerate.accelerator

    real = accelerate.accelerator.save_accelerator_state
    calls = {"n": 0}

    def full_disk(output_dir, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # second checkpoint: write part of it, then run out of space
            with open(f"{output_dir}/model.safetensors", "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(output_dir, *args, **kwargs)

    monkeypatch.setattr(accelerate.accelerator, "save_accelerator_state", full_disk)
    ckdir = tmp_path / "run" / "checkpoints"
    with pytest.raises(OSError) as e:
        train(toy_config(tmp_path / "run", steps=6, save_every=2))
    assert e.value.errno == errno.ENOSPC
    assert "step_0000004" in str(e.value) and "step_0000002" in str(e.value) and "kept" in str(e.value)
    assert sorted(p.name for p in ckdir.iterdir()) == ["step_0000002"]  # no temporary, no half folder
    good = find_latest_checkpoint(ckdir)
    assert good.name == "step_0000002" and json.loads((good / STATE_FILE).read_text())["step"] == 2
    # the kept checkpoint is usable: resuming from it completes the run
    monkeypatch.setattr(accelerate.accelerator, "save_accelerator_state", real)
    trainer = train(toy_config(tmp_path / "run", steps=6, save_every=2, resume=True))
    assert trainer.step == 6 and find_latest_checkpoint(ckdir).name == "step_0000006"
