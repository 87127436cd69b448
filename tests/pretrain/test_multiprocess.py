"""Two-process data-parallel training on CPU (DESIGN §5): ``accelerate.debug_launcher`` with the toy model,
and ``accelerate launch -m mrfound.pretrain`` as a subprocess with the real model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported by AdamW; imported here once so the forked ranks start fast)
from conftest import TINY_MODEL_SETS

from mrfound.pretrain.trainer import STATE_FILE, find_latest_checkpoint, read_log

REPO = Path(__file__).resolve().parents[2]


def _ran_isolated(request: pytest.FixtureRequest) -> bool:
    """Re-run the calling test in a fresh interpreter and report whether it did.

    ``debug_launcher`` forks the ranks. Forking a process whose OpenMP thread pool has already run
    parallel work (as it has after earlier tests of a full suite) can leave the forked ranks
    deadlocked in a futex, so these tests fork only from a clean interpreter.
    """
    if os.environ.get("MRFOUND_FORK_ISOLATED") == "1":
        return False
    env = {**os.environ, "MRFOUND_FORK_ISOLATED": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return True


def _two_ranks(out: str) -> None:
    from _pretrain_toy import toy_config, train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    init = torch.cat([p.detach().flatten() for p in __import__("_pretrain_toy").ToyMAE().parameters()])
    trainer = train(toy_config(out, steps=2, save_every=2, batch_size=2))
    acc = trainer.accelerator
    assert acc.num_processes == 2 and acc.state.distributed_type.value == "MULTI_CPU"
    assert trainer.batches_per_epoch == 12 // (2 * 2) and trainer.cases_per_step == 4
    flat = torch.cat([p.detach().flatten() for p in trainer.unwrapped_model().parameters()])
    both = acc.gather(flat.unsqueeze(0))
    assert both.shape[0] == 2
    assert torch.equal(both[0], both[1]), "ranks hold different weights after the steps"
    assert not torch.equal(flat, init), "no optimizer step happened"


def test_debug_launcher_two_processes_hold_identical_weights(tmp_path, request):
    if _ran_isolated(request):
        return
    from accelerate import debug_launcher

    out = tmp_path / "run"
    debug_launcher(lambda: _two_ranks(str(out)), num_processes=2)
    ckpt = find_latest_checkpoint(out / "checkpoints")
    assert ckpt is not None and (ckpt / "random_states_1.pkl").is_file()
    assert json.loads((ckpt / STATE_FILE).read_text())["world_size"] == 2


def _two_ranks_nonfinite(out: str) -> None:
    from _pretrain_toy import toy_config, train

    from mrfound.errors import NonFiniteLossError

    torch.set_num_threads(1)
    with pytest.raises(NonFiniteLossError, match="case_005"):  # every rank stops, naming the case
        train(toy_config(out + "_stop", steps=3, save_every=3, batch_size=2), nan_cases=("case_005",))
    cfg = toy_config(out + "_skip", steps=3, save_every=3, batch_size=2, skip_nonfinite=True)
    trainer = train(cfg, nan_cases=("case_005",))
    assert trainer.skipped_nonfinite >= 1  # every rank counts the step, whichever rank saw the NaN
    flat = torch.cat([p.detach().flatten() for p in trainer.unwrapped_model().parameters()])
    both = trainer.accelerator.gather(flat.unsqueeze(0))
    assert torch.isfinite(both).all() and torch.equal(both[0], both[1])


def test_two_processes_agree_on_nonfinite_losses(tmp_path, request):
    if _ran_isolated(request):
        return
    from accelerate import debug_launcher

    debug_launcher(lambda: _two_ranks_nonfinite(str(tmp_path / "run")), num_processes=2)


class _Stop(Exception):
    """Raised on every rank at the same step: a crash that leaves the last checkpoint behind."""


def _two_ranks_train(out: str, resume: bool, result: str | None) -> None:
    from _pretrain_toy import toy_config, train
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    trainer = train(toy_config(out, steps=6, save_every=2, batch_size=2, grad_accum=2, resume=resume))
    if result and trainer.is_main:
        save_file(trainer.export_state_dict(), result)


def test_two_process_resume_is_exact(tmp_path, monkeypatch, request):
    """2 ranks: 6 steps straight == crash after step 3 (checkpoint 2) + resume (per-rank batch skipping)."""
    if _ran_isolated(request):
        return
    from accelerate import debug_launcher
    from safetensors.torch import load_file

    import mrfound.pretrain.trainer as trainer_module

    a, b = tmp_path / "a", tmp_path / "b"
    debug_launcher(lambda: _two_ranks_train(str(a), False, str(tmp_path / "a.safetensors")), num_processes=2)

    def stop_at_3(name):
        if name == "step:3":
            raise _Stop(name)

    monkeypatch.setattr(trainer_module, "fault_point", stop_at_3)
    with pytest.raises(Exception, match="_Stop|step:3"):
        debug_launcher(lambda: _two_ranks_train(str(b), False, None), num_processes=2)
    monkeypatch.undo()
    assert find_latest_checkpoint(b / "checkpoints").name == "step_0000002"
    debug_launcher(lambda: _two_ranks_train(str(b), True, str(tmp_path / "b.safetensors")), num_processes=2)
    wa, wb = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-5
    assert [r["loss"] for r in read_log(a / "log.jsonl")] == [r["loss"] for r in read_log(b / "log.jsonl")]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_runs_pretrain(tmp_path, tiny_cohort):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed")
    out = tmp_path / "run"
    sets = [a for s in TINY_MODEL_SETS for a in ("--set", s)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        launcher,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "mrfound.pretrain",
        "--manifest",
        str(tiny_cohort),
        "--out",
        str(out),
        "--steps",
        "2",
        "--roi-size",
        "16",
        "--batch-size",
        "1",
        "--save-every",
        "2",
        "--log-every",
        "1",
        "--eval-fraction",
        "0.34",
        *sets,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = find_latest_checkpoint(out / "checkpoints")
    assert json.loads((ckpt / STATE_FILE).read_text())["world_size"] == 2
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2]
    final = json.loads((out / "final" / "config.json").read_text())
    assert final["provenance"]["world_size"] == 2 and (out / "final" / "model.safetensors").is_file()
