"""A toy model and data set following the training protocol, and a runnable toy training script.

Used by the loop tests (in process) and by the crash tests, which run this file as a subprocess::

    python tests/pretrain/_pretrain_toy.py --out RUN --steps 8 --save-every 2 [--resume]
    python tests/pretrain/_pretrain_toy.py --zygote     # forks one such run per request read on stdin

The toy model masks random voxels with the global torch RNG (like the real MAE), so resume tests check
that the loop makes masking reproducible; the data set derives its noise from (seed, epoch, index).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mrfound.pretrain.config import TrainerConfig  # noqa: E402
from mrfound.pretrain.trainer import Trainer  # noqa: E402

S, SIZE = 2, 8


class ToyCases(torch.utils.data.Dataset):
    """DESIGN §3 samples: ``image`` (S, 8, 8, 8), ``available``, ``label``, ``case``, ``subject``."""

    def __init__(self, n: int = 12, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        base = np.sin(np.linspace(0, 3, SIZE))[None, :, None, None] * (1 + i % 3)
        img = (base + 0.1 * rng.standard_normal((S, SIZE, SIZE, SIZE))).astype(np.float32)
        avail = np.ones(S, bool)
        avail[1] = i % 4 != 0
        img[~avail] = 0
        return {
            "image": torch.from_numpy(img),
            "available": torch.from_numpy(avail),
            "label": -1,
            "case": f"case_{i:03d}",
            "subject": f"subj_{i // 2:03d}",
            "center": "",
        }


def toy_collate(batch: list[dict]) -> dict:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "available": torch.stack([b["available"] for b in batch]),
        "label": torch.tensor([b["label"] for b in batch]),
        "case": [b["case"] for b in batch],
        "subject": [b["subject"] for b in batch],
    }


class ToyMAE(nn.Module):
    """Masks half of the voxels at random, reconstructs them; returns loss + two partial losses.

    ``nan_cases``: case ids whose presence in a batch makes the loss NaN (numerical-safety tests).
    """

    def __init__(self, nan_cases: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.enc = nn.Conv3d(S, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.dec = nn.Conv3d(8, S, 3, padding=1)
        self.nan_cases = set(nan_cases)

    def forward(self, batch: dict) -> dict:
        x = batch["image"]
        keep = (torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) > 0.5).to(x.dtype)
        pred = self.dec(torch.relu(self.norm(self.enc(x * keep))))
        err = (pred.float() - x.float()) ** 2
        hidden = 1 - keep
        inpaint = (err[:, :1] * hidden).sum() / hidden.sum().clamp(min=1)
        synth = err[:, 1:].mean()
        loss = inpaint + synth
        if self.nan_cases & set(batch.get("case", [])):
            loss = loss * float("nan")
        return {"loss": loss, "loss_inpaint": inpaint.detach(), "loss_synth": synth.detach()}


def toy_config(out: str | Path, **kw) -> TrainerConfig:
    base = dict(
        out=str(out),
        steps=8,
        batch_size=4,
        lr=1e-2,
        min_lr=1e-4,
        warmup_steps=2,
        log_every=1,
        save_every=2,
        keep_checkpoints=2,
        seed=3,
        tensorboard=False,
        clip_grad=1.0,
    )
    base.update(kw)
    return TrainerConfig(**base)


def train(config: TrainerConfig, n_cases: int = 12, nan_cases: tuple[str, ...] = (), **kw) -> Trainer:
    """Build the toy model (seeded) and run :meth:`Trainer.fit`; return the trainer."""
    torch.manual_seed(config.seed)
    model = ToyMAE(nan_cases)
    trainer = Trainer(model, ToyCases(n_cases, seed=config.seed), config, collate_fn=toy_collate, **kw)
    trainer.fit()
    return trainer


def final_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return trainer.export_state_dict()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--ema", type=float, default=None)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = toy_config(
        a.out, steps=a.steps, save_every=a.save_every, resume=a.resume, grad_accum=a.grad_accum, ema=a.ema
    )
    trainer = train(cfg)
    if trainer.is_main:
        from safetensors.torch import save_file

        save_file(final_weights(trainer), os.path.join(a.out, "final.safetensors"))


def zygote() -> None:
    """Fork one fresh training process per request (crash tests without paying the torch import each time).

    Reads JSON lines ``{"args": [...], "env": {...}}`` on stdin; for each, forks a child that runs
    :func:`main` (the parent never computed anything, so the fork is clean) and writes ``{"pid": PID}`` then,
    when the child ends, ``{"pid": PID, "returncode": RC}`` (negative signal number if killed).
    """
    import json
    import traceback

    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.dup2(2, 1)  # stdout carries the protocol: the child writes to stderr only
                os.environ.update(req.get("env", {}))
                main(req["args"])
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"pid": pid, "returncode": rc}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--zygote"]:
        # import once, before any fork, what a run imports lazily (AdamW pulls in torch._dynamo: seconds)
        import accelerate.utils  # noqa: F401
        import safetensors.torch  # noqa: F401
        import timm.utils.model_ema  # noqa: F401
        import torch._dynamo  # noqa: F401
        from accelerate import Accelerator  # noqa: F401

        zygote()
    else:
        main()
