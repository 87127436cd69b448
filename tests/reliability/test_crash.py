"""Crash safety of the training loop (issue 4 resume, issue 7.2): real SIGKILLs of training processes.

Each toy training run (``_pretrain_toy.py``) is its own process, forked by a helper process that imported
torch once and never computed anything (so a run starts in milliseconds instead of seconds). Kills come
either from this test (SIGKILL at an arbitrary moment) or from the loop's ``$MRFOUND_KILL_AT`` hook, which
SIGKILLs the process at named points, including inside a checkpoint write. After every kill: no folder
under a final ``step_XXXXXXX`` name is incomplete, the newest complete checkpoint is never lost, the run
resumes from it, every logged loss equals the uninterrupted run's at the same step, and the final weights
equal it within 1e-5. One test also kills a plainly started ``python _pretrain_toy.py`` subprocess.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mrfound.pretrain.trainer import DELAY_ENV, KILL_ENV, STATE_FILE, list_checkpoints, read_log

SCRIPT = Path(__file__).resolve().parents[1] / "pretrain" / "_pretrain_toy.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
ENV.pop(KILL_ENV, None)
ENV.pop(DELAY_ENV, None)
ARGS = ["--steps", "12", "--save-every", "2", "--grad-accum", "2"]


class Zygote:
    """Client of ``_pretrain_toy.py --zygote``: start runs, get their pids and exit codes."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._err = open(log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=ENV,
        )
        self._buf = b""

    def _message(self, timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.time()
            assert left > 0, f"no answer from the run helper; its log:\n{self.log.read_text()[-3000:]}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                assert chunk, f"the run helper died; its log:\n{self.log.read_text()[-3000:]}"
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def start(self, out: Path, *args: str, kill_at: str = "", delay: str = "") -> int:
        req = {"args": ["--out", str(out), *args], "env": {KILL_ENV: kill_at, DELAY_ENV: delay}}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        return self._message()["pid"]

    def wait(self) -> int:
        return self._message()["returncode"]

    def run(self, out: Path, *args: str, kill_at: str = "") -> int:
        self.start(out, *args, kill_at=kill_at)
        return self.wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)
        self._err.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote") / "stderr.log")
    yield z
    z.close()


@pytest.fixture(scope="module")
def straight(zygote, tmp_path_factory) -> Path:
    """Uninterrupted 12-step toy run (checkpoint every 2 steps, grad accumulation 2)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert zygote.run(out, *ARGS) == 0, zygote.log.read_text()[-3000:]
    return out


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def _assert_no_half_checkpoint(ckdir: Path) -> None:
    """Every folder under a final name is a complete checkpoint (temporaries are dot-named)."""
    if not ckdir.is_dir():
        return
    complete = set(list_checkpoints(ckdir))
    for p in ckdir.iterdir():
        if not p.name.startswith("."):
            assert p in complete, f"{p.name} is under a final name but incomplete: {sorted(os.listdir(p))}"
            names = set(os.listdir(p))
            assert {
                "model.safetensors",
                "optimizer.bin",
                "scheduler.bin",
                "random_states_0.pkl",
                STATE_FILE,
            } <= names


def _assert_log_matches(run: Path, reference: list[dict]) -> None:
    """Logged steps are 1..k without duplicates, each loss bit-identical to the uninterrupted run."""
    rows = [r for r in read_log(run / "log.jsonl") if "event" not in r]
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, len(steps) + 1)), steps
    ref = {r["step"]: r["loss"] for r in reference}
    assert all(r["loss"] == ref[r["step"]] for r in rows), [
        (r["step"], r["loss"], ref[r["step"]]) for r in rows
    ]


def test_external_sigkill_then_resume_gives_the_same_weights(zygote, tmp_path, straight):
    """N straight vs. SIGKILL (sent by this test) after checkpoint N/2 + resume: same final weights."""
    out = tmp_path / "run"
    pid = zygote.start(out, *ARGS, delay="0.1")
    deadline = time.time() + 60
    while not (out / "checkpoints" / "step_0000006").is_dir():
        assert time.time() < deadline, "no checkpoint at step 6 in time"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    assert zygote.wait() == -signal.SIGKILL
    _assert_no_half_checkpoint(out / "checkpoints")
    latest = list_checkpoints(out / "checkpoints")[-1]
    assert 6 <= int(latest.name[5:]) < 12, latest
    assert zygote.run(out, *ARGS, "--resume") == 0
    assert _max_diff(out / "final.safetensors", straight / "final.safetensors") <= 1e-5
    _assert_log_matches(out, read_log(straight / "log.jsonl"))


def test_sigkill_of_a_plain_subprocess_then_resume(tmp_path, straight):
    """The same with ``python _pretrain_toy.py`` started normally and killed by its own hook after step 7."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), *ARGS]
    proc = subprocess.run(cmd, env={**ENV, KILL_ENV: "step:7"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert list_checkpoints(out / "checkpoints")[-1].name == "step_0000006"
    proc = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _max_diff(out / "final.safetensors", straight / "final.safetensors") <= 1e-5


def test_ema_run_resumes_exactly(zygote, tmp_path):
    """With EMA the exported (EMA) weights after kill + resume equal those of a straight run."""
    args = ["--steps", "6", "--save-every", "2", "--ema", "0.9"]
    assert zygote.run(tmp_path / "a", *args) == 0
    assert zygote.run(tmp_path / "b", *args, kill_at="step:5") == -signal.SIGKILL
    assert (list_checkpoints(tmp_path / "b" / "checkpoints")[-1] / "ema.safetensors").is_file()
    assert zygote.run(tmp_path / "b", *args, "--resume") == 0
    assert _max_diff(tmp_path / "a" / "final.safetensors", tmp_path / "b" / "final.safetensors") <= 1e-5


KILL_POINTS = [
    "step:1",  # before the first checkpoint: resume starts from scratch
    "save:2:begin",  # temporary folder created, nothing written
    "save:2:state",  # Accelerate state written, no trainer_state.json yet
    "save:2:marker",  # complete temporary folder, not yet renamed
    "save:4:renamed",  # renamed into place, older ones not yet pruned
    "step:5",  # between checkpoints
    "save:6:prune",  # an old checkpoint moved aside for deletion, half deleted
    "save:8:state",
    "step:9",
    "save:10:marker",
    "save:12:begin",  # the final checkpoint of the run
]


def test_sigkill_at_many_points_always_resumes_to_the_same_weights(zygote, tmp_path, straight):
    """11 kill points across one run, 8 of them inside checkpoint writes (issue 7.2)."""
    out = tmp_path / "run"
    reference = read_log(straight / "log.jsonl")
    for i, point in enumerate(KILL_POINTS):
        before = list_checkpoints(out / "checkpoints")
        rc = zygote.run(out, *ARGS, *(["--resume"] if i else []), kill_at=point)
        assert rc == -signal.SIGKILL, f"{point}: exit {rc}\n{zygote.log.read_text()[-3000:]}"
        _assert_no_half_checkpoint(out / "checkpoints")
        if point.endswith((":begin", ":state", ":marker")):  # the half write exists only as a temporary
            assert (out / "checkpoints" / f".step_{int(point.split(':')[1]):07d}.tmp").is_dir(), point
        if point.endswith(":prune"):
            assert list((out / "checkpoints").glob(".step_*.deleting.tmp")), point
        after = list_checkpoints(out / "checkpoints")
        if before:  # the newest complete checkpoint is never lost (kept or superseded)
            assert after and int(after[-1].name[5:]) >= int(before[-1].name[5:]), (point, before, after)
        _assert_log_matches(out, reference)
    assert zygote.run(out, *ARGS, "--resume") == 0
    _assert_no_half_checkpoint(out / "checkpoints")
    assert _max_diff(out / "final.safetensors", straight / "final.safetensors") <= 1e-5
    _assert_log_matches(out, reference)
    assert [r["step"] for r in read_log(out / "log.jsonl")] == list(range(1, 13))
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
