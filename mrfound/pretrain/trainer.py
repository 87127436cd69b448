"""The generic Accelerate training loop shared by pretraining and fine-tuning (DESIGN §5).

One loop for CPU, one GPU and many GPUs. The model follows the training protocol: ``model(batch)`` on the
collated batch dict returns a dict with a scalar ``loss`` tensor plus other scalar tensors, which are
logged. Training is counted in optimizer steps; each step consumes ``grad_accum`` micro-batches of
``batch_size`` cases on every process.

Multi-GPU / multi-process (data parallel, same code)::

    accelerate launch --multi_gpu --num_processes 4 -m mrfound.pretrain --manifest M --out RUN ...
    # CPU-only machine, two processes (plain `--cpu --num_processes 2` silently runs ONE process):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m mrfound.pretrain ...

``batch_size`` is per process, so the global batch is ``batch_size x grad_accum x processes``.

Determinism and resume. The data order is a seeded permutation per epoch (:class:`EpochSampler`), sharded
across processes by Accelerate. Before every step all RNGs (python, numpy, torch) are re-seeded from
``(seed, step, process)``, so masking and dropout are a function of the step alone, whatever happened
before (``load_state`` restores the RNGs too, but Accelerate ignores a failed RNG restore silently).
Datasets should derive their own randomness from ``(seed, epoch, index)``; the loop calls
``dataset.set_epoch(epoch)`` when it exists. ``resume=True`` loads the newest complete checkpoint
(``accelerator.load_state``) and skips the batches already consumed in the current epoch
(``accelerator.skip_first_batches``), so N steps straight and N/2 + kill + resume give the same weights.

Checkpoints (``RUN/checkpoints/step_0000100/``) hold Accelerate's ``save_state`` files (model
safetensors; optimizer, scheduler and RNG state written by torch and read back with
``weights_only=True``), ``ema.safetensors`` when EMA is on and ``trainer_state.json``. Each is built in
``.step_0000100.tmp`` and renamed into place only when complete; old ones are renamed away before
deletion. A crash at any point leaves either the previous set or the new one; a failed write (disk
full) removes the temporary folder and raises, keeping the previous checkpoint.

Outputs in ``config.out``: ``config.json`` (the resolved config), ``log.jsonl`` (one JSON object per
logged step: ``step``, ``loss`` and the model's other scalars such as ``loss_inpaint``/``loss_synth``,
averaged over the steps since the last entry and over processes, ``lr`` (of the step, largest group),
``grad_norm``, ``cases_per_s``, ``epoch``, ``skipped_nonfinite``, ``time`` (unix seconds); plus lines
written by :meth:`Trainer.log_metrics` (e.g. ``eval/...`` keys) and ``{"event": "skipped_nonfinite"}``
lines), TensorBoard events under ``tb/`` and ``checkpoints/``. On resume the log is cut back to the
resumed step, so a step never appears twice.

Non-finite losses: a NaN/Inf loss (or gradient norm) raises :class:`NonFiniteLossError` naming the step
and the batch's cases before any weight is updated; with ``skip_nonfinite`` the step is skipped, counted
and logged (``skipped_nonfinite``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mrfound.errors import CheckpointError, ConfigError, NonFiniteLossError
from mrfound.pretrain.config import TrainerConfig
from mrfound.utils.io import atomic_write_json, atomic_write_text, cleanup_stale_temps, fsync_dir

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
CHECKPOINT_RE = re.compile(r"step_(\d{7,})")
KILL_ENV = "MRFOUND_KILL_AT"
"""Test hook: comma-separated fault points at which the process SIGKILLs itself, e.g. ``step:3`` (after
optimizer step 3), ``save:4:begin|state|marker|renamed|prune`` (inside the checkpoint write of step 4),
``final:begin`` (before the exported model is written)."""
DELAY_ENV = "MRFOUND_STEP_DELAY"
"""Test hook: seconds to sleep after every step (gives an external SIGKILL a wide target)."""


def fault_point(name: str) -> None:
    """SIGKILL this process if ``name`` is listed in ``$MRFOUND_KILL_AT`` (crash-safety tests)."""
    spec = os.environ.get(KILL_ENV)
    if spec and name in spec.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A 32-bit seed that depends only on ``(seed, step, rank)``."""
    return int(np.random.SeedSequence([int(seed), int(step), int(rank)]).generate_state(1)[0])


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor for optimizer step ``step`` (0-based): linear warm-up, then cosine decay.

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (so the first step already moves).
    Then ``min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * t))`` with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)`` going from 0 to just under 1.

    Args:
        step: Optimizer step index.
        warmup_steps: Warm-up length.
        total_steps: Total steps of the run.
        min_ratio: Final factor (``min_lr / lr``).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class EpochSampler(Sampler[int]):
    """Deterministic shuffling sampler: the permutation of epoch ``e`` depends only on ``(seed, e)``.

    Every process builds the same permutation; Accelerate's ``prepare`` shards its batches.
    """

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_items))
        g = torch.Generator()
        g.manual_seed(step_seed(self.seed, self.epoch, 0x5A3))
        return iter(torch.randperm(self.num_items, generator=g).tolist())


class Callback:
    """Hooks into :meth:`Trainer.fit`. Called on every process; use ``trainer.is_main`` for I/O."""

    def on_train_start(self, trainer: Trainer) -> None:
        """After setup and resume, before the first step."""

    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """After every optimizer step (``trainer.step`` is the number of completed steps). ``logs`` holds
        the averaged metrics on logging steps and is empty otherwise."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After a checkpoint was renamed into place."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step and the last checkpoint."""


class EveryN(Callback):
    """Run ``fn(trainer)`` every ``n`` steps and/or at the end.

    Args:
        n: Period in steps (0 = never during training).
        fn: The function; called on every process (it decides what the main process does).
        at_end: Also call it once after training.
    """

    def __init__(self, n: int, fn: Callable[[Trainer], None], at_end: bool = True) -> None:
        self.n, self.fn, self.at_end = int(n), fn, at_end
        self._last = -1

    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.n > 0 and trainer.step % self.n == 0 and trainer.step < trainer.config.steps:
            self._last = trainer.step
            self.fn(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.at_end and self._last != trainer.step:
            self._last = trainer.step
            self.fn(trainer)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did.

    Attributes:
        start_step: Step the run (re)started from.
        steps: Completed steps at the end.
        skipped_nonfinite: Steps skipped because of a NaN/Inf loss or gradient (whole run).
        last_checkpoint: The newest complete checkpoint.
        wall_s: Seconds spent in this call.
        last_logs: The last logged metrics.
    """

    start_step: int
    steps: int
    skipped_nonfinite: int
    last_checkpoint: Path | None
    wall_s: float
    last_logs: dict[str, float] = field(default_factory=dict)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, as oneDNN reports it).

    Without it, bf16 autocast on the CPU is emulated: a ``tiny`` pretraining step ran 9.3x slower
    than in fp32 on a 2-core AVX2-only EPYC, while on a CPU with native bf16 it ran 1.86x faster.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without oneDNN
        return False


def bf16_is_emulated(mixed_precision: str, on_cpu: bool) -> bool:
    """Whether ``mixed_precision`` asks for bf16 autocast that this CPU would only emulate.

    The one predicate behind the trainer's warning, the benchmarks' fp32 fallback and the throughput
    benchmark's skipped bf16 rounds.
    """
    return mixed_precision == "bf16" and on_cpu and not cpu_has_native_bf16()


def make_accelerator(config: TrainerConfig) -> Any:
    """Create the :class:`accelerate.Accelerator` for ``config``.

    CPU when no CUDA device is visible (or ``config.cpu``); gradient accumulation counts exactly
    ``grad_accum`` micro-batches per step (never re-synchronised at epoch ends); the LR scheduler steps
    once per optimizer step whatever the number of processes. In a single process an earlier
    Accelerator with another mixed-precision setting is discarded (demo: pretrain then fine-tune).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import GradientAccumulationPlugin

    use_cpu = bool(config.cpu) or not torch.cuda.is_available()
    if config.mixed_precision == "fp16" and use_cpu:
        raise ConfigError("config key 'mixed_precision' = 'fp16': needs a CUDA GPU; use bf16 on CPU")
    if bf16_is_emulated(config.mixed_precision, use_cpu):
        logger.warning(
            "mixed_precision 'bf16' on a CPU without native bf16 (no AVX512-BF16/AMX): autocast is emulated "
            "and much slower than fp32 (9x measured on an AVX2 CPU); 'no' is faster here"
        )
    state = AcceleratorState._shared_state
    if (
        state
        and PartialState().num_processes == 1
        and state.get("_mixed_precision") != config.mixed_precision
    ):
        AcceleratorState._reset_state()
    plugin = GradientAccumulationPlugin(
        num_steps=config.grad_accum, sync_with_dataloader=False, adjust_scheduler=False
    )
    return Accelerator(
        mixed_precision=config.mixed_precision,
        cpu=use_cpu,
        gradient_accumulation_plugin=plugin,
        step_scheduler_with_optimizer=False,
        rng_types=[],
    )  # nothing to synchronise: every random draw is seeded explicitly


def default_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices, none on biases, norms, embeddings and tokens.

    Names returned by a model's ``no_weight_decay()`` (timm convention) are also exempt.
    """
    skip = set()
    if hasattr(model, "no_weight_decay"):
        skip = {str(n) for n in model.no_weight_decay()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if (
            p.ndim <= 1
            or name in skip
            or leaf in skip
            or name.endswith(".bias")
            or any(k in name for k in ("pos_embed", "seq_embed", "mask_token", "cls_token"))
        ):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def find_latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint ``step_XXXXXXX`` in ``folder`` (``None`` if there is none).

    Complete = final name (never a dot-temp), a readable ``trainer_state.json`` whose step matches the
    name, and the model weights.
    """
    done = list_checkpoints(folder)
    return done[-1] if done else None


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (see :func:`find_latest_checkpoint`)."""
    folder = Path(folder)
    found: list[tuple[int, Path]] = []
    if not folder.is_dir():
        return []
    for p in folder.iterdir():
        m = CHECKPOINT_RE.fullmatch(p.name)
        if not m or not p.is_dir() or not (p / "model.safetensors").is_file():
            continue
        try:
            state = json.loads((p / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        if state.get("step") == int(m.group(1)):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse ``log.jsonl``; a torn last line (killed mid-write) is ignored."""
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


class Trainer:
    """Step-based AdamW training with warm-up + cosine, clipping, EMA, logging and atomic checkpoints.

    Example (fine-tuning with layer-wise LR decay)::

        groups = [{"params": head.parameters(), "lr_scale": 1.0},
                  {"params": encoder.blocks[-1].parameters(), "lr_scale": 0.75}, ...]
        trainer = Trainer(model, train_ds, cfg, collate_fn=collate_cases, param_groups=groups,
                          callbacks=[EveryN(200, validate)])
        result = trainer.fit()
        weights = trainer.export_state_dict()   # EMA weights when cfg.ema is set

    Args:
        model: ``model(batch) -> {"loss": scalar tensor, other scalars...}``. Build it after
            ``accelerate.utils.set_seed(cfg.seed)`` so every process starts from the same weights.
        train_dataset: Map-style dataset (``len`` and ``__getitem__``); ``set_epoch(e)`` is called if present.
        config: A :class:`TrainerConfig` (or subclass); ``config.out`` is the run folder.
        collate_fn: Batch collation (e.g. :func:`mrfound.data.dataset.collate_cases`).
        param_groups: AdamW parameter groups; a group may carry ``lr`` (absolute) or ``lr_scale``
            (times ``config.lr``), ``weight_decay``, and ``hold_steps``: the group's learning rate is 0
            for that many steps, then follows its own warm-up + cosine over the remaining steps (the
            encoder's groups in linear-probe-then-fine-tune). Default: :func:`default_param_groups`.
        callbacks: :class:`Callback` objects (evaluation, figures, early stopping...).
        accelerator: An existing Accelerator (default: :func:`make_accelerator`).
        save_config: Write ``config.to_dict()`` to ``RUN/config.json`` at the start (main process).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_dataset: Dataset,
        config: TrainerConfig,
        *,
        collate_fn: Callable[[list], Any] | None = None,
        param_groups: Sequence[Mapping[str, Any]] | None = None,
        callbacks: Iterable[Callback] = (),
        accelerator: Any = None,
        save_config: bool = True,
    ) -> None:
        config.validate()
        self.config = config
        self.run_dir = Path(config.out)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.callbacks = list(callbacks)
        self.save_config = save_config
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config)
        self.train_dataset = train_dataset
        self.collate_fn = collate_fn
        self.step = 0
        self.epoch = 0
        self.skipped_nonfinite = 0
        self.last_logs: dict[str, float] = {}
        self.last_checkpoint: Path | None = None
        self.lr_used = float("nan")
        self._tb = None
        self._log_file = None

        acc = self.accelerator
        n = len(train_dataset)
        per_epoch = n // (config.batch_size * acc.num_processes)
        if per_epoch == 0:
            raise ConfigError(
                f"the training set has {n} samples, fewer than one batch of {config.batch_size} x "
                f"{acc.num_processes} process(es); lower batch_size or add cases"
            )
        self.sampler = EpochSampler(n, seed=config.seed)
        # reseeded per epoch: DataLoader worker seeds then depend on (seed, epoch) only
        self._loader_generator = torch.Generator()
        loader = DataLoader(
            train_dataset,
            batch_size=config.batch_size,
            sampler=self.sampler,
            drop_last=True,
            collate_fn=collate_fn,
            num_workers=config.num_workers,
            generator=self._loader_generator,
            pin_memory=acc.device.type == "cuda",
            persistent_workers=False,
        )

        groups = self._build_param_groups(model, param_groups)
        # fused: one kernel for all parameters instead of ~10 small ops per tensor (on a busy CPU each
        # small multi-threaded op can wait a scheduler slice; measured 25x faster optimizer steps)
        fused = acc.device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(
            groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay, fused=fused
        )
        warm = config.resolved_warmup_steps
        min_ratio = config.min_lr / config.lr

        def group_lambda(hold: int) -> Callable[[int], float]:
            def lr_lambda(s: int) -> float:
                if s < hold:
                    return 0.0
                return warmup_cosine(
                    s - hold, warmup_steps=warm, total_steps=config.steps - hold, min_ratio=min_ratio
                )

            return lr_lambda

        holds = [int(g.get("hold_steps", 0)) for g in optimizer.param_groups]
        for h in holds:
            if not 0 <= h < config.steps:
                raise ConfigError(f"hold_steps must be in [0, steps={config.steps}), got {h}")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [group_lambda(h) for h in holds])
        self.model, self.optimizer, self.dataloader, self.scheduler = acc.prepare(
            model, optimizer, loader, scheduler
        )
        self.batches_per_epoch = len(self.dataloader)
        self.ema = None
        if config.ema is not None:
            from timm.utils.model_ema import ModelEmaV3

            self.ema = ModelEmaV3(acc.unwrap_model(self.model), decay=config.ema)

    # ------------------------------------------------------------------ properties

    @property
    def is_main(self) -> bool:
        """Whether this is the main process (the one that writes files)."""
        return bool(self.accelerator.is_main_process)

    @property
    def device(self) -> torch.device:
        """Device of this process."""
        return self.accelerator.device

    @property
    def cases_per_step(self) -> int:
        """Samples consumed per optimizer step over all processes."""
        return self.config.batch_size * self.config.grad_accum * self.accelerator.num_processes

    def unwrapped_model(self) -> torch.nn.Module:
        """The model without the DDP wrapper (the live training weights; mixed precision keeps autocast)."""
        return self.accelerator.unwrap_model(self.model)

    def eval_model(self) -> torch.nn.Module:
        """The model to evaluate: the EMA copy when EMA is on, else the training model (unwrapped)."""
        return self.ema.module if self.ema is not None else self.unwrapped_model()

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to publish (EMA when on), contiguous CPU tensors."""
        sd = self.eval_model().state_dict()
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}

    # ------------------------------------------------------------------ setup helpers

    def _build_param_groups(
        self, model: torch.nn.Module, groups: Sequence[Mapping[str, Any]] | None
    ) -> list[dict[str, Any]]:
        if groups is None:
            return default_param_groups(model, self.config.weight_decay)
        out = []
        for g in groups:
            g = dict(g)
            g["params"] = [p for p in g["params"] if p.requires_grad]
            scale = g.pop("lr_scale", None)
            if "lr" not in g and scale is not None:
                g["lr"] = self.config.lr * float(scale)
                g["lr_scale"] = float(scale)
            if g["params"]:
                out.append(g)
        if not out:
            raise ConfigError("no trainable parameters in the given parameter groups")
        return out

    def _prepare_run_dir(self) -> None:
        """Recover temporaries, check resume vs fresh start, truncate the log to the resumed step."""
        acc = self.accelerator
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cleanup_stale_temps(self.checkpoint_dir)
        acc.wait_for_everyone()
        latest = find_latest_checkpoint(self.checkpoint_dir)
        if not self.config.resume and latest is not None:
            raise ConfigError(
                f"{self.run_dir} already holds a training run (checkpoint {latest.name}); pass --resume to "
                "continue it or choose another --out"
            )
        if self.config.resume and latest is not None:
            self._load_checkpoint(latest)
        elif self.config.resume and self.is_main:
            logger.warning("resume: no complete checkpoint in %s, starting from step 0", self.checkpoint_dir)
        if self.is_main:
            if self.save_config:
                atomic_write_json(self.run_dir / "config.json", self.config.to_dict())
            log_path = self.run_dir / "log.jsonl"
            kept = [r for r in read_log(log_path) if int(r.get("step", 0)) <= self.step] if self.step else []
            atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in kept))
            self._log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
            if self.config.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    str(self.run_dir / "tb"), purge_step=self.step + 1 if self.config.resume else None
                )
        acc.wait_for_everyone()

    def _load_checkpoint(self, path: Path) -> None:
        acc = self.accelerator
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path}: unreadable {STATE_FILE} ({e})") from None
        if state.get("world_size", 1) != acc.num_processes:
            raise CheckpointError(
                f"checkpoint {path} was written by {state.get('world_size')} process(es); resume with the "
                f"same number (now {acc.num_processes})"
            )
        if (
            state.get("grad_accum", self.config.grad_accum) != self.config.grad_accum
            or state.get("batch_size", self.config.batch_size) != self.config.batch_size
        ):
            raise CheckpointError(
                f"checkpoint {path}: batch_size/grad_accum differ from the run's config; "
                "resume with the same values"
            )
        acc.load_state(str(path))
        if self.ema is not None:
            from safetensors.torch import load_file

            ema_file = path / EMA_FILE
            if not ema_file.is_file():
                raise CheckpointError(f"checkpoint {path}: EMA is on but {EMA_FILE} is missing")
            self.ema.module.load_state_dict(load_file(str(ema_file), device=str(acc.device)))
        self.step = int(state["step"])
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
        self.last_checkpoint = path
        acc.step = self.step * self.config.grad_accum  # keeps accumulate() aligned on step boundaries
        if self.is_main:
            logger.info("resumed from %s (step %d)", path, self.step)

    # ------------------------------------------------------------------ data

    def _batches(self, start_micro: int) -> Iterator[Any]:
        """Endless micro-batches starting after ``start_micro`` consumed ones (crossing epochs)."""
        epoch, skip = divmod(start_micro, self.batches_per_epoch)
        while True:
            self.epoch = epoch
            self.sampler.set_epoch(epoch)
            self.dataloader.set_epoch(epoch)
            self._loader_generator.manual_seed(step_seed(self.config.seed, epoch, 0x10AD))
            if hasattr(self.train_dataset, "set_epoch"):
                self.train_dataset.set_epoch(epoch)
            dl = self.accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            yield from dl
            epoch, skip = epoch + 1, 0

    # ------------------------------------------------------------------ loop

    def fit(self) -> TrainResult:
        """Train until ``config.steps`` optimizer steps are done (resuming first if asked).

        Returns:
            A :class:`TrainResult`.

        Raises:
            NonFiniteLossError: NaN/Inf loss or gradient without ``skip_nonfinite``.
            OSError: A checkpoint could not be written (the previous one is kept).
            CheckpointError, ConfigError: Inconsistent resume.
        """
        t_start = time.time()
        cfg = self.config
        self._prepare_run_dir()
        start_step = self.step
        data = self._batches(start_step * cfg.grad_accum)
        bar = None
        try:
            for cb in self.callbacks:
                cb.on_train_start(self)
            if self.is_main:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=cfg.steps,
                    initial=self.step,
                    desc="train",
                    unit="step",
                    disable=None,
                    dynamic_ncols=True,
                )
            sums: dict[str, torch.Tensor] = {}
            n_micro = 0
            t_window, steps_window = time.time(), 0
            delay = float(os.environ.get(DELAY_ENV, "0") or 0)
            while self.step < cfg.steps:
                grad_norm = self._train_step(data, sums)
                n_micro += cfg.grad_accum
                self.step += 1
                steps_window += 1
                fault_point(f"step:{self.step}")
                logs: dict[str, float] = {}
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.time()
                    logs = self._reduce_logs(sums, n_micro)
                    logs.update(
                        step=self.step,
                        epoch=self.epoch,
                        lr=self.lr_used,
                        grad_norm=grad_norm,
                        skipped_nonfinite=self.skipped_nonfinite,
                        cases_per_s=steps_window * self.cases_per_step / max(now - t_window, 1e-9),
                        time=now,
                    )
                    self._write_log(logs)
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{logs.get('loss', float('nan')):.4f}",
                            lr=f"{logs['lr']:.2e}",
                            cases_s=f"{logs['cases_per_s']:.1f}",
                            refresh=False,
                        )
                    sums, n_micro = {}, 0
                    t_window, steps_window = time.time(), 0
                    self.last_logs = logs
                if bar is not None:
                    bar.update(1)
                for cb in self.callbacks:
                    cb.on_step_end(self, logs)
                if self.step == cfg.steps or (cfg.save_every and self.step % cfg.save_every == 0):
                    self.save_state()
                if delay:
                    time.sleep(delay)
            if self.last_checkpoint is None or self.last_checkpoint.name != f"step_{self.step:07d}":
                self.save_state()  # resumed at the end, or the final save was skipped
            for cb in self.callbacks:
                cb.on_train_end(self)
        finally:
            data.close()
            if bar is not None:
                bar.close()
            self.close()
        return TrainResult(
            start_step=start_step,
            steps=self.step,
            skipped_nonfinite=self.skipped_nonfinite,
            last_checkpoint=self.last_checkpoint,
            wall_s=time.time() - t_start,
            last_logs=dict(self.last_logs),
        )

    def _train_step(self, data: Iterator[Any], sums: dict[str, torch.Tensor]) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the gradient norm (nan: skipped)."""
        cfg, acc = self.config, self.accelerator
        import accelerate.utils

        self.model.train()
        bad = False
        grad_norm = float("nan")
        for micro in range(cfg.grad_accum):
            batch = next(data)
            # seed after fetching: starting a DataLoader iterator draws from the global RNG
            accelerate.utils.set_seed(
                step_seed(cfg.seed, self.step * cfg.grad_accum + micro, acc.process_index)
            )
            with acc.accumulate(self.model):
                if not bad:
                    out = self.model(batch)
                    if not isinstance(out, Mapping) or "loss" not in out:
                        raise TypeError("model(batch) must return a dict with a scalar 'loss' tensor")
                    loss = out["loss"]
                    if self._any_nonfinite(loss):
                        bad = True
                        self._nonfinite(batch, "loss", loss)
                        if acc.num_processes > 1:  # DDP expects a backward after a synced forward
                            acc.backward(torch.nan_to_num(loss) * 0.0)
                    else:
                        acc.backward(loss)
                        sums["_count"] = sums.get("_count", torch.zeros((), device=acc.device)) + 1
                        for k, v in out.items():
                            if isinstance(v, torch.Tensor) and v.numel() == 1:
                                v = v.detach().float().reshape(())
                                sums[k] = sums[k] + v if k in sums else v
                            elif isinstance(v, float | int) and not isinstance(v, bool):
                                t = torch.tensor(float(v), device=acc.device)
                                sums[k] = sums[k] + t if k in sums else t
                if acc.sync_gradients:
                    if not bad:
                        self._drop_held_grads()
                        max_norm = cfg.clip_grad if cfg.clip_grad else float("inf")
                        gn = acc.clip_grad_norm_(self.model.parameters(), max_norm)
                        grad_norm = float(gn) if gn is not None else float("nan")
                        if not math.isfinite(grad_norm) and acc.scaler is None:
                            bad = True
                            self._nonfinite(batch, "gradient norm", torch.tensor(grad_norm))
                        if not bad:
                            self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        if bad:
            self.skipped_nonfinite += 1
        self.lr_used = max(g["lr"] for g in self.optimizer.param_groups)
        self.scheduler.step()
        if self.ema is not None and not bad:
            self.ema.update(self.unwrapped_model(), step=self.step + 1)
        return grad_norm

    def _drop_held_grads(self) -> None:
        """Clear the gradients of groups still held at LR 0 (``hold_steps``): they must neither shrink
        the clipped update of the trained groups nor fill AdamW's moments before their phase starts."""
        for g in self.optimizer.param_groups:
            if self.step < int(g.get("hold_steps", 0)):
                for p in g["params"]:
                    p.grad = None

    def _any_nonfinite(self, t: torch.Tensor) -> bool:
        flag = (~torch.isfinite(t.detach().float())).any().float().reshape(1)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, "sum")
        return bool(flag.item() > 0)

    def _nonfinite(self, batch: Any, what: str, value: torch.Tensor) -> None:
        """Raise (or, with skip_nonfinite, note) a non-finite loss/gradient; called on every process."""
        from accelerate.utils import gather_object

        cases = batch.get("case") if isinstance(batch, Mapping) else None
        local = [str(c) for c in cases] if isinstance(cases, list | tuple) else []
        all_cases = gather_object([local]) if self.accelerator.num_processes > 1 else [local]
        names = [c for part in all_cases for c in part]
        shown = ", ".join(names[:16]) + (f" ... ({len(names)} cases)" if len(names) > 16 else "")
        step = self.step + 1
        if self.config.skip_nonfinite:
            if self.is_main:
                logger.warning("skipping step %d: non-finite %s (batch cases: %s)", step, what, shown or "?")
                self._write_log(
                    {
                        "step": step,
                        "event": "skipped_nonfinite",
                        "what": what,
                        "cases": names,
                        "time": time.time(),
                    }
                )
            return
        last = self.last_checkpoint.name if self.last_checkpoint else "none"
        raise NonFiniteLossError(
            f"non-finite {what} ({float(value.detach().float().reshape(-1)[0])}) at step {step}, batch "
            f"cases: {shown or 'unknown'}; stopped before updating the weights (last checkpoint: {last}); "
            "lower the learning rate, check these cases, or pass --skip-nonfinite"
        )

    def _reduce_logs(self, sums: dict[str, torch.Tensor], n_micro: int) -> dict[str, float]:
        if not sums:
            return {}
        count = sums.pop("_count", None)
        keys = sorted(sums)
        if not keys:
            return {}
        vec = torch.stack([sums[k] for k in keys]) / (count if count is not None else max(n_micro, 1))
        if self.accelerator.num_processes > 1:
            vec = self.accelerator.reduce(vec, "mean")
        return {k: float(v) for k, v in zip(keys, vec.tolist())}

    # ------------------------------------------------------------------ logging

    def _write_log(self, record: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        if self._log_file is not None:
            self._log_file.write(json.dumps(dict(record), default=float) + "\n")
            self._log_file.flush()
        if self._tb is not None and "event" not in record:
            step = int(record.get("step", self.step))
            for k, v in record.items():
                if (
                    k not in ("step", "time", "epoch")
                    and isinstance(v, int | float)
                    and not isinstance(v, bool)
                ):
                    self._tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
            self._tb.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Append extra metrics (e.g. ``{"eval/loss": 0.3}``) to ``log.jsonl`` and TensorBoard (main only)."""
        self._write_log({"step": self.step if step is None else step, **metrics, "time": time.time()})

    def close(self) -> None:
        """Close the log and TensorBoard writer (idempotent)."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ------------------------------------------------------------------ checkpoints

    def save_state(self) -> Path:
        """Write the training state of the current step atomically; keep the newest ``keep_checkpoints``.

        Every process takes part (each writes its RNG state). On failure the temporary folder is removed on
        every process, the previous checkpoint stays, and ``OSError`` is raised.
        """
        acc, step = self.accelerator, self.step
        name = f"step_{step:07d}"
        final = self.checkpoint_dir / name
        tmp = self.checkpoint_dir / f".{name}.tmp"
        if self.is_main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        error: BaseException | None = None
        try:
            fault_point(f"save:{step}:begin")
            acc.save_state(str(tmp))
            fault_point(f"save:{step}:state")
            if self.is_main:
                if self.ema is not None:
                    from safetensors.torch import save_file

                    sd = {k: v.detach().contiguous() for k, v in self.ema.module.state_dict().items()}
                    save_file(sd, str(tmp / EMA_FILE))
                atomic_write_json(
                    tmp / STATE_FILE,
                    {
                        "step": step,
                        "micro_batches": step * self.config.grad_accum,
                        "batches_per_epoch": self.batches_per_epoch,
                        "epoch": self.epoch,
                        "world_size": acc.num_processes,
                        "batch_size": self.config.batch_size,
                        "grad_accum": self.config.grad_accum,
                        "seed": self.config.seed,
                        "skipped_nonfinite": self.skipped_nonfinite,
                        "ema": self.ema is not None,
                        "time": time.time(),
                    },
                )
                for f in tmp.iterdir():
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
        except Exception as e:  # disk full, I/O error, safetensors error...
            error = e
        if not self._all_ok(error is None):
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            acc.wait_for_everyone()
            kept = self.last_checkpoint.name if self.last_checkpoint else "none"
            if error is not None and not _is_io_error(error):
                raise error
            code = getattr(error, "errno", None) or (
                errno.ENOSPC if error and "space" in str(error).lower() else errno.EIO
            )
            why = getattr(error, "strerror", None) or str(error or "failed on another process")
            raise OSError(
                code, f"could not write checkpoint {final} ({why}); the previous checkpoint ({kept}) is kept"
            ) from error
        if self.is_main:
            fault_point(f"save:{step}:marker")
            old = None
            if final.exists():  # re-saving a step: keep the old one until the new one is in place
                old = final.parent / f".{name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
            os.replace(tmp, final)
            fsync_dir(self.checkpoint_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            fault_point(f"save:{step}:renamed")
            self._prune(keep=final)
        self.last_checkpoint = final
        acc.wait_for_everyone()
        for cb in self.callbacks:
            cb.on_checkpoint(self, final)
        return final

    def _prune(self, keep: Path) -> None:
        done = [p for p in list_checkpoints(self.checkpoint_dir) if p != keep]
        excess = len(done) + 1 - self.config.keep_checkpoints
        for p in done[: max(0, excess)]:
            trash = p.parent / f".{p.name}.deleting.tmp"
            os.replace(p, trash)  # never a half-deleted folder under a final name
            fault_point(f"save:{self.step}:prune")
            shutil.rmtree(trash, ignore_errors=True)

    def _all_ok(self, ok: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item() == 0)


def _is_io_error(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return True
    text = f"{type(e).__name__} {e}"
    return any(k in text for k in ("IoError", "No space", "StorageFull", "SafetensorError", "Errno"))
