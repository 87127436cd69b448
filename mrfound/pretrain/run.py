"""Masked-modality autoencoder pretraining: data, model, the shared loop, figures, evaluation, export.

:func:`pretrain` is what ``mrfound pretrain`` and ``python -m mrfound.pretrain`` run. Steps:

1. read the manifest(s) (several are pooled; case ids must be unique across them) with the model's
   sequence vocabulary; hold out ``eval_fraction`` of the *subjects* (``GroupShuffleSplit``, seeded) for
   evaluation and figures (``RUN/split.json``);
2. preprocess every case once into the cache (main process first, so several processes share it);
3. build :class:`~mrfound.models.mae.MaskedModalityAutoencoder` of the registry size (input = ROI size)
   after seeding, and train it with :class:`~mrfound.pretrain.trainer.Trainer` on random ROI crops
   (``MRDataset(mode="random")``);
4. every ``viz_every`` steps (and at the end) draw reconstructions of held-out cases (``RUN/viz``), every
   ``eval_every`` steps log the held-out reconstruction loss (``eval/*`` in ``log.jsonl``);
5. at the end write ``RUN/final`` (``config.json`` + ``model.safetensors`` through
   :func:`mrfound.models.checkpoint.save_checkpoint`, with vocabulary, preprocessing and provenance) and
   ``RUN/eval.json``: held-out loss on masked patches and dropped sequences of the trained model, of the
   untrained model (same seed, i.e. the run's initial weights) and of the per-sequence mean baseline
   (see :mod:`mrfound.pretrain.evaluate`), all on the same fixed masks.

Multi-process runs (``accelerate launch``) train data-parallel; only the main process writes files.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mrfound.errors import ConfigError, ManifestError
from mrfound.pretrain.config import PretrainConfig
from mrfound.pretrain.trainer import (
    EveryN,
    Trainer,
    TrainResult,
    fault_point,
    find_latest_checkpoint,
    make_accelerator,
)
from mrfound.utils.io import atomic_write_json, file_sha256

EVAL_MASKING_SEED = 1234
"""Masking seed of held-out evaluations and figures (fixed so numbers and figures are comparable)."""


@dataclass
class PretrainResult:
    """Outcome of :func:`pretrain`.

    Attributes:
        run_dir: The run folder.
        final_dir: ``RUN/final`` (exported model).
        steps: Completed steps.
        wall_s: Seconds of the whole call (data preparation included).
        train_wall_s: Seconds of the training loop in this call.
        eval: Content of ``RUN/eval.json`` (main process; ``None`` without held-out cases).
        is_main: Whether this process is the main one.
        train: The loop's :class:`~mrfound.pretrain.trainer.TrainResult`.
        timings: Seconds per phase (``data``, ``train``, ``export``, ``eval``).
    """

    run_dir: Path
    final_dir: Path
    steps: int
    wall_s: float
    train_wall_s: float
    eval: dict[str, Any] | None
    is_main: bool
    train: TrainResult
    timings: dict[str, float] = field(default_factory=dict)


def build_model(config: PretrainConfig) -> Any:
    """The autoencoder of ``config`` (registry size + overrides, ``img_size`` = ``roi_size``), seeded init."""
    from accelerate.utils import set_seed

    from mrfound.models.mae import MaskedModalityAutoencoder
    from mrfound.models.registry import get_mae_config, get_model_config

    enc_over = dict(config.model_overrides)
    if "img_size" in enc_over and enc_over["img_size"] != config.roi_size:
        raise ConfigError(
            f"model_overrides.img_size {enc_over['img_size']!r} must equal roi_size "
            f"{config.roi_size} (the model's input is the ROI crop)"
        )
    enc_over["img_size"] = config.roi_size
    enc = get_model_config(config.model, **enc_over)
    mae = get_mae_config(config.model, **dict(config.mae))
    set_seed(config.seed)
    return MaskedModalityAutoencoder(enc, mae)


def load_cohort(paths: list[str], vocabulary: Any, on_error: str = "raise", out_dir: Any = None) -> Any:
    """Read, check (:func:`mrfound.data.guard.checked_manifest`) and pool manifests; case ids must be
    unique across them. With ``on_error="skip"`` bad rows go to ``out_dir/rejected.csv`` (``manifestN_``
    prefixed when there are several manifests)."""
    from mrfound.data.guard import checked_manifest
    from mrfound.data.manifest import Manifest

    cases, origin = [], {}
    for i, p in enumerate(paths):
        if not Path(p).is_file():
            raise ManifestError("manifest not found", path=str(p))
        prefix = f"manifest{i + 1}_" if len(paths) > 1 else ""
        m = checked_manifest(p, on_error=on_error, out_dir=out_dir, vocabulary=vocabulary, prefix=prefix)
        for c in m.cases:
            if c.case in origin:
                raise ManifestError(
                    f"case id also in {origin[c.case]}; case ids must be unique across manifests",
                    case=c.case,
                    column="case",
                    path=str(p),
                )
            origin[c.case] = str(p)
            for column, f in [*c.sequences.items(), *([("mask", c.mask)] if c.mask is not None else [])]:
                if not Path(f).exists():  # before any work, with the case and column named
                    raise ManifestError("file not found", case=c.case, column=column, path=str(f))
            cases.append(c)
    return Manifest.from_cases(cases, root=Path(paths[0]).parent, vocabulary=vocabulary)


def split_by_subject(manifest: Any, fraction: float, seed: int) -> tuple[Any, Any | None]:
    """Hold out ``fraction`` of the subjects (seeded ``GroupShuffleSplit``); ``None`` if too few subjects."""
    from sklearn.model_selection import GroupShuffleSplit

    from mrfound.data.manifest import Manifest

    subjects = [c.subject for c in manifest.cases]
    if fraction <= 0 or len(set(subjects)) < 2:
        return manifest, None
    gss = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    train_idx, test_idx = next(gss.split(subjects, groups=subjects))
    pick = manifest.cases
    train = Manifest.from_cases([pick[i] for i in sorted(train_idx)], manifest.root, manifest.vocabulary)
    held = Manifest.from_cases([pick[i] for i in sorted(test_idx)], manifest.root, manifest.vocabulary)
    return train, held


def git_commit() -> str | None:
    """Commit of the mrfound source tree, if it is a git checkout (``+dirty`` with local changes)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


class _Monitor:
    """Figures and periodic held-out evaluation on a fixed set of held-out samples (main process)."""

    def __init__(self, config: PretrainConfig, eval_ds: Any, viz_ds: Any, device: torch.device) -> None:
        self.config = config
        self.eval_ds = eval_ds
        self.net = build_model(config).to(device)  # fp32 copy, loaded with the exported weights
        self.viz_batch = None
        self.viz_what = "held-out" if viz_ds is eval_ds else "training"
        if config.viz_cases > 0:
            from mrfound.data.dataset import collate_cases

            n = min(config.viz_cases, len(viz_ds))
            self.viz_batch = collate_cases([viz_ds[i] for i in range(n)])

    def _sync(self, trainer: Trainer) -> Any:
        self.net.load_state_dict(trainer.export_state_dict())
        return self.net

    def viz(self, trainer: Trainer) -> None:
        if not trainer.is_main or self.viz_batch is None:
            return
        from mrfound.pretrain.viz import plot_reconstructions

        out = trainer.run_dir / "viz" / f"recon_step_{trainer.step:07d}.png"
        plot_reconstructions(
            self._sync(trainer),
            self.viz_batch,
            out,
            masking_seed=EVAL_MASKING_SEED,
            title=f"{self.viz_what} reconstructions, step {trainer.step}",
        )

    def evaluate(self, trainer: Trainer) -> None:
        if not trainer.is_main or self.eval_ds is None:
            return
        from mrfound.pretrain.evaluate import evaluate_reconstruction

        res = evaluate_reconstruction(
            self._sync(trainer),
            self.eval_ds,
            masking_seed=EVAL_MASKING_SEED,
            batch_size=self.config.batch_size,
            max_samples=self.config.eval_max_cases,
        )["model"]
        trainer.log_metrics(
            {f"eval/{k}": v for k, v in res.items() if k.startswith("loss") and v is not None}
        )


def pretrain(
    config: PretrainConfig, *, command: str | None = None, on_error: str = "raise"
) -> PretrainResult:
    """Run masked-modality pretraining as configured (see the module docstring).

    Args:
        config: A validated :class:`PretrainConfig` (``out`` is the run folder).
        command: Command line recorded in the provenance.
        on_error: ``raise`` (a bad manifest row stops the run before any output) or ``skip`` (bad rows
            listed in ``RUN/rejected.csv``, the others used).

    Returns:
        A :class:`PretrainResult`.

    Raises:
        ManifestError, ConfigError, CheckpointError: bad input (one line).
        NonFiniteLossError: NaN/Inf loss without ``skip_nonfinite``.
        OSError: a checkpoint or output could not be written.
    """
    t0 = time.time()
    config.validate()
    from mrfound.data.dataset import MRDataset
    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.data.sequences import Vocabulary
    from mrfound.models.checkpoint import save_checkpoint

    run_dir = Path(config.out)
    latest = find_latest_checkpoint(run_dir / "checkpoints")
    if latest is not None and not config.resume:
        raise ConfigError(
            f"{run_dir} already holds a training run (checkpoint {latest.name}); pass --resume to "
            "continue it or choose another --out"
        )
    acc = make_accelerator(config)
    model = build_model(config)  # validates size and overrides before any data work
    vocab = Vocabulary(sequences=tuple(model.encoder_config.sequences))
    try:
        pp = PreprocessConfig(spacing=config.spacing, roi_size=config.roi_size, **dict(config.preprocess))
    except TypeError as e:
        raise ConfigError(f"config key 'preprocess': {e}") from None

    created = not run_dir.exists()
    try:  # nothing is left behind when the input turns out to be bad before training starts
        cohort = load_cohort(config.manifest, vocab, on_error=on_error, out_dir=run_dir)
        train_m, held_m = split_by_subject(cohort, config.eval_fraction, config.seed)
        cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "cache"
        train_ds = MRDataset(
            train_m,
            pp,
            mode="random",
            cache_dir=cache_dir,
            samples_per_case=config.samples_per_case,
            seed=config.seed,
            lesion_fraction=config.lesion_crops,
        )
        eval_ds = (
            MRDataset(held_m, pp, mode="random", cache_dir=cache_dir, seed=config.seed + 1)
            if held_m is not None
            else None
        )
        if acc.is_main_process:  # fill the cache once; the other processes read it
            from tqdm.auto import tqdm

            todo = [(train_ds, i) for i in range(len(train_m))]
            todo += [(eval_ds, i) for i in range(len(held_m))] if held_m is not None else []
            for ds, i in tqdm(todo, desc="preprocess", unit="case", disable=None):
                ds.preprocessed(i)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(
                run_dir / "split.json",
                {
                    "seed": config.seed,
                    "eval_fraction": config.eval_fraction,
                    "grouped_by": "subject",
                    "train": [c.case for c in train_m.cases],
                    "heldout": [c.case for c in held_m.cases] if held_m is not None else [],
                },
            )
        acc.wait_for_everyone()
        t_data = time.time() - t0

        from mrfound.data.dataset import collate_cases

        monitor = None
        if acc.is_main_process:  # figures show held-out cases, or training cases when none are held out
            viz_ds = eval_ds
            if viz_ds is None:
                viz_ds = MRDataset(train_m, pp, mode="random", cache_dir=cache_dir, seed=config.seed + 1)
            monitor = _Monitor(config, eval_ds, viz_ds, acc.device)
        callbacks = []
        if monitor is not None:
            callbacks = [
                EveryN(config.viz_every, monitor.viz, at_end=True),
                EveryN(config.eval_every, monitor.evaluate, at_end=False),
            ]
        trainer = Trainer(
            model, train_ds, config, collate_fn=collate_cases, callbacks=callbacks, accelerator=acc
        )
    except BaseException:
        if created and acc.is_main_process:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    result = trainer.fit()

    t1 = time.time()
    final_dir = run_dir / "final"
    ev: dict[str, Any] | None = None
    timings = {"data": t_data, "train": result.wall_s}
    if trainer.is_main:
        export = monitor._sync(trainer)
        provenance = {
            "command": command,
            "git_commit": git_commit(),
            "task": "masked-modality autoencoder pretraining",
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model_size": config.model,
            "steps": result.steps,
            "seed": config.seed,
            "weights": "ema" if config.ema is not None else "last",
            "world_size": acc.num_processes,
            "mixed_precision": config.mixed_precision,
            "data": [{"manifest": p, "sha256": file_sha256(p)} for p in config.manifest],
            "train_cases": len(train_m),
            "heldout_cases": len(held_m) if held_m is not None else 0,
            "final_train_loss": result.last_logs.get("loss"),
            "skipped_nonfinite": result.skipped_nonfinite,
            "run": str(run_dir),
            "pretrain_config": config.to_dict(),
        }
        fault_point("final:begin")
        save_checkpoint(
            final_dir,
            export,
            {"vocabulary": vocab.to_dict(), "preprocessing": pp.to_dict(), "provenance": provenance},
        )
        timings["export"] = time.time() - t1
        if eval_ds is not None:
            t2 = time.time()
            ev = final_evaluation(config, export, train_ds, eval_ds)
            atomic_write_json(run_dir / "eval.json", ev)
            timings["eval"] = time.time() - t2
    acc.wait_for_everyone()
    return PretrainResult(
        run_dir=run_dir,
        final_dir=final_dir,
        steps=result.steps,
        wall_s=time.time() - t0,
        train_wall_s=result.wall_s,
        eval=ev,
        is_main=trainer.is_main,
        train=result,
        timings=timings,
    )


def final_evaluation(
    config: PretrainConfig, model: Any, train_ds: Any, eval_ds: Any, baseline_samples: int = 256
) -> dict[str, Any]:
    """``eval.json``: trained vs untrained (initial weights) vs per-sequence mean baseline, fixed masks."""
    from mrfound.pretrain.evaluate import evaluate_reconstruction, sequence_mean_patches

    device = next(model.parameters()).device
    untrained = build_model(config).to(device)
    train_ds.set_epoch(0)
    baseline = sequence_mean_patches(
        model, train_ds, batch_size=config.batch_size, max_samples=min(len(train_ds), baseline_samples)
    )
    ev = evaluate_reconstruction(
        model,
        eval_ds,
        baseline=baseline,
        masking_seed=EVAL_MASKING_SEED,
        repeats=4,
        batch_size=config.batch_size,
        max_samples=config.eval_max_cases,
        extra_models={"untrained": untrained},
    )
    ev["heldout_cases"] = len(eval_ds.manifest)
    ev["baseline_train_samples"] = min(len(train_ds), baseline_samples)
    ev["steps"] = config.steps
    ev["model_size"] = config.model
    return ev
