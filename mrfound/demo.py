"""``mrfound demo``: the whole story on a simulated cohort, written up as ``DIR/report.md``.

Stages (each prints a header, long loops show tqdm bars on a terminal):

1. **simulate** a multi-centre cohort with the built-in phantom (:func:`mrfound.data.phantom.generate_cohort`)
   and draw the class x sequence montage;
2. **split** it by subject into training and test cases (stratified, seeded) and fill the preprocessing
   cache (one common 2 mm grid per case, in parallel);
3. **pretrain** the ``tiny`` masked-modality autoencoder on the training cases (labels unused) with
   ``mrfound pretrain``'s program, then score its reconstructions of hidden patches and dropped sequences
   of unseen test lesions against the untrained model and the per-sequence mean baseline;
4. **probe** the frozen encoder (and the same architecture at random init) with logistic regression
   under missing-sequence protocols and with 10-100 % of the training labels;
5. **fine-tune** a classifier (layer-wise LR decay, sequence-dropout augmentation) and score it on the
   test cases under every protocol: ROC curves, confusion matrix;
6. **segment**: a short liver + lesion segmentation fine-tune, scored on a few test volumes;
7. **predict and impute** for unseen cases through :func:`mrfound.load_pretrained` (``predictions.csv``,
   a segmentation and synthesised sequences as NIfTI);
8. **report**: ``report.md`` with the figures, ``summary.json``, and a summary table on the terminal.

Time: the training stages get their step counts from a short measurement of this machine's speed and the
``minutes`` budget, so the demo ends in about ``minutes`` whatever the machine (a busy machine trains
fewer steps; the steps used are reported). Everything is seeded by ``seed``.

The evaluation helpers here (:func:`split_cohort`, :func:`fill_cache`, :func:`probe_protocols`,
:func:`classifier_protocol_metrics`, the plots and :func:`md_table`) are shared with
``benchmarks/phenotype.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrfound.data.sequences import NAMED_PROTOCOLS  # the protocols the demo shows
from mrfound.errors import ConfigError
from mrfound.utils.io import atomic_write_json, atomic_write_text, atomic_write_with

SEGMENT_OVERRUN = 1.3
"""The segmentation stage is skipped only when the run is already past this multiple of its budget (on a
very busy machine), so that the demo still ends well before 1.5x its budget."""

METRIC_LABELS: dict[str, str] = {
    "auc_macro": "macro AUC",
    "balanced_accuracy": "balanced acc.",
    "f1_macro": "macro F1",
    "kappa": "kappa",
    "auc_benign_malignant": "benign/malignant AUC",
}


# ---------------------------------------------------------------------------------------------- config


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`.

    Attributes:
        out: Output folder (``report.md``, ``figures/``, ``summary.json``; work files in ``work/``).
        minutes: Wall-time budget; the training stages are sized to fit it.
        cases: Simulated cases.
        seed: Seed of the cohort, the split, the models and the masks.
        test_fraction: Share of subjects held out as unseen test cases.
        spacing: Grid spacing (mm) of preprocessing.
        roi_size: ROI edge (voxels) of the encoder, crops and sliding windows.
        patch_size: Patch edge (voxels).
        spacing_scale: Phantom voxel-size multiplier (1.5: coarser acquisitions, faster to simulate and
            read; the model works on the ``spacing`` grid anyway).
        segment: Run the segmentation stage.
        segment_spacing: Grid spacing (mm) of the segmentation stage. Coarser than ``spacing`` so that a
            window of ``roi_size`` voxels sees the liver with its surroundings (128 mm at 4 mm) and a
            whole volume needs 8x fewer windows. In a check at the demo's budget (a session-4 demo's
            pretrained encoder, 136 steps of batch 4, 4 unseen volumes): liver Dice 0.74 vs 0.36 at
            2 mm, and air labelled liver or lesion 0.08 vs 1.76 litres per case (learning rate 1e-3;
            3e-3 then gave 0.87 at decoder feature size 8).
        segment_batch_size: Batch size of the segmentation stage (4: twice the steps of batch 8 in the
            same time; at 4 mm 136 steps of 4 scored liver Dice 0.74, 68 steps of 8 0.65).
        segment_feature_size: Width of the segmentation decoder's full-resolution stage. 16: on a
            265-step demo encoder, 6 unseen volumes, 120 steps, it scored liver / lesion Dice 0.85 / 0.17
            (learning rate 1e-3) and 0.83 / 0.11 (3e-3), against 0.62 / 0.01 and 0.72 / 0.005 at
            feature size 8; 90 steps at 16 (the same training time as 120 at 8) 0.85 / 0.004.
        segment_lr: Peak learning rate of the segmentation stage (1e-3; see ``segment_feature_size``).
        predict_cases: Unseen cases sent through ``predict`` / ``impute``.
        impute_sequence: Sequence synthesised by the imputation stage.
        impute_cases: Unseen lesion ROIs the imputation PSNR is averaged over (the figure shows three):
            over three ROIs the demo's mean swung between 1.3 and 10.9 dB from run to run.
        calibrate_cases: Training cases on which ``mrfound calibrate``'s function chooses the imputed
            sequence's local contrast before the unseen volumes are imputed (whole-volume syntheses; 0:
            none, the synthesis as decoded).
        calibrate_holdout_cases: Unseen (test) cases on which that calibration is then checked: liver PSNR
            of the whole-volume synthesis as decoded and calibrated, and a figure of both (0: no check).
        workers: Processes for simulation and preprocessing (default: the usable CPUs, at most 8).
        batch_size: Training batch size.
        model_overrides: Encoder fields changed from ``tiny`` (tests use a narrower model).
        mae_overrides: Autoencoder fields changed.
        max_steps: Upper bounds of the training stages' step counts.
        min_steps: Lower bounds (a very slow machine still trains this much).
        label_fractions: Label fractions of the label-efficiency probe.
        n_boot: Bootstrap resamples of the confidence intervals.
        cache_memory_mb: In-memory preprocessing cache (MB) for the repeated crops of training.
        montage_candidates: Cases per class the montage picks its most typical one from.
        command: Command line recorded in the report.
    """

    out: str
    minutes: float = 10.0
    cases: int = 120
    seed: int = 0
    test_fraction: float = 0.25
    spacing: float = 2.0
    roi_size: int = 32
    patch_size: int = 8
    spacing_scale: float = 1.5
    segment: bool = True
    segment_spacing: float = 4.0
    segment_batch_size: int = 4
    segment_feature_size: int = 16
    segment_lr: float = 1e-3
    predict_cases: int = 4
    impute_sequence: str = "t1_art"
    impute_cases: int = 12
    calibrate_cases: int = 3
    calibrate_holdout_cases: int = 2
    workers: int | None = None
    batch_size: int = 8
    model_overrides: dict[str, Any] = field(default_factory=dict)
    mae_overrides: dict[str, Any] = field(default_factory=dict)
    max_steps: dict[str, int] = field(
        default_factory=lambda: {"pretrain": 1500, "classify": 600, "segment": 300}
    )
    min_steps: dict[str, int] = field(default_factory=lambda: {"pretrain": 30, "classify": 20, "segment": 10})
    label_fractions: tuple[float, ...] = (0.1, 0.25, 1.0)
    n_boot: int = 200
    cache_memory_mb: float = 3000.0
    montage_candidates: int = 3
    command: str | None = None

    def validate(self) -> DemoConfig:
        """Check ranges; raises :class:`ConfigError` naming the option."""
        if not self.out:
            raise ConfigError("--out is required")
        if not (isinstance(self.minutes, int | float) and math.isfinite(self.minutes) and self.minutes > 0):
            raise ConfigError(f"--minutes must be > 0, got {self.minutes}")
        if int(self.cases) < 24:
            raise ConfigError(f"--cases must be >= 24 (a train/test split of every class), got {self.cases}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if not 0.1 <= self.test_fraction <= 0.5:
            raise ConfigError(f"test_fraction must be in [0.1, 0.5], got {self.test_fraction}")
        if self.roi_size % self.patch_size:
            raise ConfigError(f"patch_size {self.patch_size} must divide roi_size {self.roi_size}")
        if not (math.isfinite(self.segment_spacing) and self.segment_spacing > 0):
            raise ConfigError(f"segment_spacing must be > 0 mm, got {self.segment_spacing}")
        if int(self.segment_batch_size) < 1:
            raise ConfigError(f"segment_batch_size must be >= 1, got {self.segment_batch_size}")
        if int(self.impute_cases) < 1:
            raise ConfigError(f"impute_cases must be >= 1, got {self.impute_cases}")
        if int(self.calibrate_cases) < 0:
            raise ConfigError(f"calibrate_cases must be >= 0, got {self.calibrate_cases}")
        if int(self.calibrate_holdout_cases) < 0:
            raise ConfigError(f"calibrate_holdout_cases must be >= 0, got {self.calibrate_holdout_cases}")
        if int(self.segment_feature_size) < 1:
            raise ConfigError(f"segment_feature_size must be >= 1, got {self.segment_feature_size}")
        if not (math.isfinite(self.segment_lr) and self.segment_lr > 0):
            raise ConfigError(f"segment_lr must be > 0, got {self.segment_lr}")
        return self


# ------------------------------------------------------------------------------------------ progress


class StageLog:
    """Stage headers, wall time per stage and a closing summary on a text stream."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.index = 0
        self.times: dict[str, float] = {}
        self.start = time.time()

    def say(self, text: str) -> None:
        """Print one line (flushed, so it interleaves correctly with tqdm bars)."""
        print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str, title: str) -> Iterator[None]:
        """``with log.stage("pretrain", "Pretraining ..."):`` prints the header and records the time."""
        self.index += 1
        elapsed = time.time() - self.start
        self.say(f"\n== [{self.index}/{self.total}] {title}  (t = {elapsed / 60:.1f} min)")
        t0 = time.time()
        try:
            yield
        finally:
            self.times[name] = round(time.time() - t0, 1)
            self.say(f"   done in {self.times[name]:.0f} s")


class Budget:
    """Wall-clock budget: how many seconds are left, and step counts that fit a share of them."""

    def __init__(self, minutes: float) -> None:
        self.start = time.time()
        self.total = float(minutes) * 60.0

    def left(self) -> float:
        """Seconds left (negative when over budget)."""
        return self.total - (time.time() - self.start)

    @staticmethod
    def steps(seconds: float, seconds_per_step: float, lo: int, hi: int) -> int:
        """``seconds / seconds_per_step`` clamped to ``[lo, hi]``."""
        if not math.isfinite(seconds_per_step) or seconds_per_step <= 0:
            return hi
        return int(min(hi, max(lo, seconds / seconds_per_step)))


REFERENCE_SECONDS_PER_STEP = 0.3
"""Seconds of a tiny pretraining step (32^3 ROI, patch 8, batch 8) on 2 idle cores as
:func:`seconds_per_step` measures it (0.27-0.32 s; 0.30 s per step trained in a demo run): the unit of
TimePlan."""

FIXED_COSTS: dict[str, float] = {
    "pretrain": 20.0,
    "probe": 30.0,
    "classify": 15.0,
    "segment": 25.0,
    "infer": 15.0,
    "volume": 10.0,
}
"""Work besides training steps, in seconds on the reference machine (evaluation, features, probes,
sliding windows; ``volume``: one whole-volume sliding-window pass), scaled by the measured speed.

About 1.5-2x what the demo measured (2026-11-28, 2 idle cores: probe stage 17 s, prediction and
imputation 14 s; one busy core: 22 s and 23 s): with the earlier, 3-4x larger reserve the demo finished
in 6.5-8.5 of its 10 minutes and pretrained for only 70-110 s of them."""


class TimePlan:
    """Splits what is left of the budget between the training stages, after the fixed work.

    The fixed work of every later stage (:data:`FIXED_COSTS`) is scaled by ``slow`` = measured seconds per
    pretraining step / :data:`REFERENCE_SECONDS_PER_STEP`, so a busy machine reserves more of the budget
    for it and trains fewer steps. Once stages have run, :meth:`observe` rescales the reserve of the later
    ones by what their fixed work really took (with :attr:`MARGIN`): the step-time scaling alone left 1.9
    of 10 minutes unused on a slower CPU, whose fixed work grew less than its step time.
    """

    SHARES = {"pretrain": 0.5, "classify": 0.3, "segment": 0.2}
    MARGIN = 1.3
    """Safety factor on the measured/planned ratio of fixed work (the later stages' work is not the same)."""
    SCALE_BOUNDS = (0.6, 3.0)

    def __init__(
        self, budget: Budget, slow: float, segment: bool, n_volumes: int, calibration_volumes: int = 0
    ) -> None:
        self.budget, self.slow, self.segment, self.n_volumes = (
            budget,
            max(0.5, float(slow)),
            segment,
            n_volumes,
        )
        self.calibration_volumes = calibration_volumes
        """Whole-volume syntheses of the imputation calibration (inference stage)."""
        self.measured: dict[str, float] = {}
        """Measured fixed seconds of the observed stages."""

    @property
    def ratio(self) -> float | None:
        """Measured / planned fixed work over the observed stages (``None`` before any)."""
        if not self.measured:
            return None
        return sum(self.measured.values()) / (sum(FIXED_COSTS[st] for st in self.measured) * self.slow)

    @property
    def scale(self) -> float:
        """Scale of the reserves: ``MARGIN`` x :attr:`ratio`, clamped to ``SCALE_BOUNDS`` (1 before any
        observation; a busy spell raises it, a fixed cost overestimated lowers it)."""
        if self.ratio is None:
            return 1.0
        lo, hi = self.SCALE_BOUNDS
        return min(hi, max(lo, self.MARGIN * self.ratio))

    def observe(self, stage: str, seconds: float) -> float:
        """Record the measured fixed work of a finished ``stage``; returns the new :attr:`scale`."""
        if stage not in FIXED_COSTS:
            raise KeyError(f"no fixed cost for stage {stage!r}; known: {sorted(FIXED_COSTS)}")
        self.measured[stage] = max(0.0, float(seconds))
        return self.scale

    def fixed(self, stages: Sequence[str]) -> float:
        """Seconds of fixed work of ``stages`` on this machine."""
        total = 0.0
        for st in stages:
            if st == "segment" and not self.segment:
                continue
            total += FIXED_COSTS[st]
            if st == "infer":
                total += FIXED_COSTS["volume"] * self.n_volumes * (2 if self.segment else 1)
                total += FIXED_COSTS["volume"] * self.calibration_volumes
            if st == "segment":
                total += FIXED_COSTS["volume"] * 2
        return total * self.slow * self.scale

    def seconds_for(self, stage: str, later: Sequence[str]) -> float:
        """Training seconds for ``stage``: its share of what is left after the fixed work of ``later`` stages
        and of this one (the training stages still to come share the rest)."""
        trainers = [st for st in [stage, *later] if st in self.SHARES and (st != "segment" or self.segment)]
        share = self.SHARES[stage] / sum(self.SHARES[st] for st in trainers)
        pool = self.budget.left() - self.fixed([stage, *later])
        return max(0.0, pool) * share


def seconds_per_step(model: Any, dataset: Any, batch_size: int, steps: int = 3) -> float:
    """Measured wall seconds of one training step (data + forward + backward + AdamW) on this machine.

    Runs ``steps`` steps of a throwaway copy of the training set-up and averages all but the first. The
    items are read once before the clock starts: the first read of a cached case in a process verifies
    its checksum and fills the in-memory cache, which training pays once per case but a short measurement
    would pay on every step (it overstated the demo's pretraining step 1.8x: 0.59 s vs 0.33 s trained).
    """
    import torch
    from torch.utils.data import DataLoader

    from mrfound.data.dataset import collate_cases

    for i in range(min(len(dataset), steps * batch_size)):
        dataset[i]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_cases)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    times = []
    it = iter(loader)
    for _ in range(steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        out = model(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return float(np.mean(times[1:] if len(times) > 1 else times))


_THREADS: dict[str, int] = {}


def _initial_threads() -> int:
    import torch

    return _THREADS.get("initial", torch.get_num_threads())


def fastest_threads(model: Any, dataset: Any, batch_size: int) -> tuple[float, int]:
    """Seconds per training step with torch's thread count and with one thread; keeps the faster setting.

    On a machine shared with other jobs, every small multi-threaded operation can wait for a descheduled
    thread, and one thread is then several times faster; on an idle machine all cores win.

    Returns:
        ``(seconds per step, threads now set)``.
    """
    import torch

    n = torch.get_num_threads()
    sps = seconds_per_step(model, dataset, batch_size)
    if n <= 1:
        return sps, n
    torch.set_num_threads(1)
    sps1 = seconds_per_step(model, dataset, batch_size)
    if sps1 < 0.8 * sps:
        return sps1, 1
    torch.set_num_threads(n)
    return sps, n


# ------------------------------------------------------------------------------------- data helpers


def split_cohort(manifest: Any, test_fraction: float, seed: int) -> tuple[Any, Any]:
    """Training and test manifests: about ``test_fraction`` of the labelled subjects held out.

    Stratified by class and grouped by subject (``StratifiedGroupKFold``, first fold), seeded; unlabelled
    cases stay in training (usable for pretraining).
    """
    from mrfound.data.manifest import Manifest
    from mrfound.finetune.common import holdout_split

    test = holdout_split(
        [c.label for c in manifest.cases], [c.subject for c in manifest.cases], test_fraction, seed
    )
    train_cases = [c for c, t in zip(manifest.cases, test) if not t]
    test_cases = [c for c, t in zip(manifest.cases, test) if t]
    return (
        Manifest.from_cases(train_cases, manifest.root, manifest.vocabulary),
        Manifest.from_cases(test_cases, manifest.root, manifest.vocabulary),
    )


def subset_manifest(manifest: Any, keep: Callable[[Any], bool]) -> Any:
    """The cases of ``manifest`` for which ``keep(case)`` is true."""
    from mrfound.data.manifest import Manifest

    return Manifest.from_cases([c for c in manifest.cases if keep(c)], manifest.root, manifest.vocabulary)


def _fill_one(args: tuple[Any, Any, str, Any]) -> str:
    case, config, folder, vocabulary = args
    from mrfound.data.cache import PreprocessCache

    PreprocessCache(folder, config, vocabulary, memory_mb=0).get(case)
    return case.case


def fill_cache(
    manifest: Any,
    config: Any,
    cache_dir: str | os.PathLike,
    workers: int | None = None,
    desc: str = "preprocess",
) -> None:
    """Preprocess every case of ``manifest`` into the cache, with ``workers`` processes."""
    from tqdm.auto import tqdm

    from mrfound.data.cache import PreprocessCache
    from mrfound.data.phantom.cohort import default_workers

    cache = PreprocessCache(cache_dir, config, manifest.vocabulary, memory_mb=0)
    todo = [c for c in manifest.cases if not cache.has(c)]
    workers = min(default_workers() if workers is None else max(1, int(workers)), max(1, len(todo)))
    bar = tqdm(total=len(todo), desc=desc, unit="case", disable=None)
    try:
        if workers <= 1 or len(todo) <= 1:
            for c in todo:
                cache.get(c)
                bar.update(1)
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from mrfound.data.phantom.cohort import _init_worker

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as ex:
            for _ in ex.map(_fill_one, [(c, config, str(cache_dir), manifest.vocabulary) for c in todo]):
                bar.update(1)
    finally:
        bar.close()


def cohort_table(manifest: Any) -> tuple[list[str], list[list[Any]]]:
    """Cases per centre x class (markdown-ready headers and rows)."""
    classes = list(manifest.vocabulary.classes)
    centers = sorted({c.center for c in manifest.cases})
    rows = []
    for center in centers:
        counts = [sum(1 for c in manifest.cases if c.center == center and c.label == k) for k in classes]
        unl = sum(1 for c in manifest.cases if c.center == center and not c.label)
        rows.append([center, *counts, unl, sum(counts) + unl])
    totals = [sum(r[i] for r in rows) for i in range(1, len(classes) + 3)]
    rows.append(["**all**", *totals])
    return ["centre", *classes, "unlabelled", "total"], rows


# --------------------------------------------------------------------------------- model evaluation


def probe_protocols(
    train: Any,
    test: Any,
    feature_fn: Any,
    *,
    protocols: Sequence[str],
    sequences: Sequence[str],
    label_fractions: Sequence[float] = (),
    fraction_protocols: Sequence[str] = ("all",),
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Linear probe trained on ``train`` (full protocol), scored on ``test`` under each protocol.

    Features are extracted once per case and protocol; label fractions re-fit the probe on nested,
    stratified subsets of the training labels (:func:`mrfound.finetune.common.labels_fraction_subset`).

    Returns:
        ``{"protocols": {p: metrics}, "fractions": {str(f): {p: metrics}}, "predictions": DataFrame of
        the full-label probe (case, protocol, label, p_<class>...), "n_train", "n_test"}``.
    """
    from mrfound.finetune.common import labels_fraction_subset
    from mrfound.finetune.probe import attach_case_info, extract_protocol_features, run_probe

    classes = list(train.vocabulary.classes)
    malignant = list(train.vocabulary.malignant)
    protos = list(dict.fromkeys(["all", *protocols, *fraction_protocols]))
    tr_tables, _ = extract_protocol_features(train, feature_fn, ["all"], sequences=sequences)
    tr = attach_case_info(tr_tables, train)["all"]
    tr = tr[tr["label"].notna() & (tr["label"].astype(str) != "")].reset_index(drop=True)
    te_tables, excluded = extract_protocol_features(test, feature_fn, protos, sequences=sequences)
    te = attach_case_info(te_tables, test)
    res = run_probe(
        tr,
        {p: te[p] for p in protocols},
        classes=classes,
        malignant=malignant,
        n_boot=n_boot,
        seed=seed,
        excluded=excluded,
    )
    out: dict[str, Any] = {
        "protocols": res.metrics,
        "predictions": res.predictions,
        "fractions": {},
        "n_train": int(len(tr)),
        "n_test": int(len(te["all"])),
    }
    for f in label_fractions:
        if f >= 1.0:
            out["fractions"][str(f)] = {p: res.metrics[p] for p in fraction_protocols if p in res.metrics}
            continue
        idx = labels_fraction_subset(tr["label"].tolist(), f, seed)
        sub = tr.iloc[idx].reset_index(drop=True)
        r = run_probe(
            sub,
            {p: te[p] for p in fraction_protocols},
            classes=classes,
            malignant=malignant,
            n_boot=n_boot,
            seed=seed,
            excluded=excluded,
        )
        out["fractions"][str(f)] = r.metrics
        for m in out["fractions"][str(f)].values():
            m["n_train"] = int(len(sub))
    return out


def classifier_protocol_metrics(
    model: Any,
    test: Any,
    preprocess: Any,
    protocols: Sequence[str],
    *,
    cache_dir: Any = None,
    n_boot: int = 500,
    seed: int = 0,
    batch_size: int = 8,
) -> tuple[dict[str, Any], Any]:
    """Fine-tuned classifier on the labelled test cases under each protocol (sequences outside it removed).

    Returns:
        ``({protocol: classification_metrics + n_excluded}, predictions DataFrame with a protocol column)``.
    """
    import pandas as pd

    from mrfound.data.sequences import protocol_sequences
    from mrfound.finetune.classify import predict_classifier
    from mrfound.finetune.metrics import classification_metrics

    classes = list(model.classes)
    truth = {c.case: c.label for c in test.cases if c.label}
    metrics: dict[str, Any] = {}
    frames = []
    for p in protocols:
        keep = protocol_sequences(p, model.encoder.config.sequences)
        pred = predict_classifier(
            model, test, preprocess, cache_dir=cache_dir, batch_size=batch_size, protocol_sequences=keep
        )
        pred = pred[pred["case"].isin(truth)].copy()
        pred.insert(1, "label", [truth[c] for c in pred["case"]])
        pred.insert(2, "protocol", p)
        n_excl = len(truth) - len(pred)
        if pred.empty:
            metrics[p] = {"n_cases": 0, "n_excluded": n_excl}
            continue
        proba = pred[[f"p_{c}" for c in classes]].to_numpy(float)
        m = classification_metrics(
            pred["label"].tolist(), proba, classes, test.vocabulary.malignant, n_boot=n_boot, seed=seed
        )
        m["n_excluded"] = n_excl
        metrics[p] = m
        frames.append(pred)
    return metrics, (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())


def per_center_metrics(
    predictions: Any, test: Any, protocol: str = "all", n_boot: int = 0, seed: int = 0
) -> dict[str, Any]:
    """Metrics of a predictions table (``case``, ``label``, ``protocol``, ``p_<class>``) per centre."""
    from mrfound.finetune.metrics import classification_metrics

    classes = list(test.vocabulary.classes)
    center = {c.case: c.center for c in test.cases}
    pred = predictions[predictions["protocol"] == protocol] if "protocol" in predictions else predictions
    out = {}
    for name in sorted({center.get(c, "") for c in pred["case"]}):
        sub = pred[[center.get(c, "") == name for c in pred["case"]]]
        if len(sub) < 2:
            continue
        out[name] = classification_metrics(
            sub["label"].tolist(),
            sub[[f"p_{k}" for k in classes]].to_numpy(float),
            classes,
            test.vocabulary.malignant,
            n_boot=n_boot,
            seed=seed,
        )
    return out


def value(entry: Any, metric: str = "auc_macro") -> float | None:
    """``entry[metric]["value"]`` or None (missing or undefined)."""
    try:
        v = entry[metric]["value"]
    except (KeyError, TypeError):
        return None
    return None if v is None or not math.isfinite(v) else float(v)


def fmt_metric(entry: Any, metric: str = "auc_macro", ci: bool = True) -> str:
    """``0.81 [0.72, 0.90]`` (or ``n/a``)."""
    v = value(entry, metric)
    if v is None:
        return "n/a"
    if not ci:
        return f"{v:.3f}"
    lo, hi = entry[metric].get("ci_low"), entry[metric].get("ci_high")
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else f"{v:.3f}"


def md_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""

    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3f}"
        return str(x)

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def jsonable(obj: Any) -> Any:
    """Metrics dicts with numpy scalars/arrays and DataFrames dropped or converted, for JSON."""
    import pandas as pd

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items() if not isinstance(v, pd.DataFrame)}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ------------------------------------------------------------------------------------------- figures


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    plt = _plt()
    try:
        return atomic_write_with(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_protocol_auc(
    series: Mapping[str, Mapping[str, Any]],
    protocols: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str = "Missing-sequence robustness",
    metric: str = "auc_macro",
) -> Path:
    """Grouped bars: one group per protocol, one bar per model, 95 % CI whiskers, chance line."""
    plt = _plt()
    names = list(series)
    n = len(names)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(protocols) * max(1, n) * 0.45 + 2), 4.2))
    x = np.arange(len(protocols))
    for i, name in enumerate(names):
        vals, lo, hi = [], [], []
        for p in protocols:
            e = series[name].get(p, {})
            v = value(e, metric)
            vals.append(np.nan if v is None else v)
            cl = e.get(metric, {}).get("ci_low") if isinstance(e, Mapping) and v is not None else None
            ch = e.get(metric, {}).get("ci_high") if isinstance(e, Mapping) and v is not None else None
            lo.append(0.0 if cl is None else max(0.0, v - cl))
            hi.append(0.0 if ch is None else max(0.0, ch - v))
        ax.bar(
            x + (i - (n - 1) / 2) * width,
            vals,
            width,
            yerr=[lo, hi],
            capsize=2,
            label=name,
            error_kw={"elinewidth": 0.8, "alpha": 0.7},
        )
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance (0.5)")
    ax.set_xticks(
        x,
        [p.replace("_", " ") for p in protocols],
        rotation=30 if len(protocols) > 5 else 0,
        ha="right" if len(protocols) > 5 else "center",
    )
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("Sequences available at test time (protocol)")
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} on test cases")
    ax.set_title(title)
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2 if len(protocols) <= 5 else -0.3),
        ncol=min(3, n + 1),
        frameon=False,
    )
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_label_efficiency(
    series: Mapping[str, Mapping[float, Any]],
    path: str | os.PathLike,
    *,
    title: str = "Label efficiency",
    metric: str = "auc_macro",
    references: Mapping[str, float] | None = None,
) -> Path:
    """Metric vs share of training labels (log x axis), one line per model, CI bands, reference lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for name, pts in series.items():
        fr = sorted(pts)
        vals = [value(pts[f], metric) for f in fr]
        ok = [i for i, v in enumerate(vals) if v is not None]
        if not ok:
            continue
        xs = [100 * fr[i] for i in ok]
        ys = [vals[i] for i in ok]
        line = ax.plot(xs, ys, marker="o", label=name)[0]
        lo = [pts[fr[i]][metric].get("ci_low") for i in ok]
        hi = [pts[fr[i]][metric].get("ci_high") for i in ok]
        if all(v is not None for v in lo + hi):
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
    for name, v in (references or {}).items():
        if v is not None:
            ax.axhline(v, linestyle="--", linewidth=1.2, color="black", alpha=0.6, label=f"{name} ({v:.2f})")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance (0.5)")
    ax.set_xscale("log")
    ticks = sorted({100 * f for pts in series.values() for f in pts})
    ax.set_xticks(ticks, [f"{t:g} %" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("Share of the training labels used")
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} on test cases")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_loss_curve(
    log_rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "Pretraining loss"
) -> Path:
    """Training losses of a run's ``log.jsonl`` vs step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    rows = [r for r in log_rows if "loss" in r and "event" not in r]
    steps = [r["step"] for r in rows]
    for key, label in (
        ("loss_inpaint", "masked patches (inpainting)"),
        ("loss_synth", "dropped sequences (synthesis)"),
        ("loss", "total loss (incl. stats)"),
    ):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(steps, [np.nan if y is None else y for y in ys], marker="o", markersize=2.5, label=label)
    ax.set_xlabel("Optimizer step")
    ax.set_ylabel("Norm-pix MSE (training batches)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_segmentation_overlay(
    image: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str,
    sequence: str,
    dice: Mapping[str, float | None] | None = None,
) -> Path:
    """Axial slice with ground truth (left) and prediction (right) overlaid: liver blue, lesion orange.

    Args:
        image, truth, pred: 2D arrays (rows = anterior-posterior, columns = left-right) of one slice.
    """
    plt = _plt()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    cmap = ListedColormap([(0, 0, 0, 0), (0.2, 0.5, 1.0, 0.35), (1.0, 0.55, 0.0, 0.6)])
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.9))
    image, truth, pred = (np.ascontiguousarray(a[:, ::-1]) for a in (image, truth, pred))
    vmax = float(np.percentile(image, 99.5)) or 1.0
    for ax, lab, sub in zip(
        axes, (None, truth, pred), ("image", "ground truth (phantom mask)", "prediction")
    ):
        ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, origin="lower")
        if lab is not None:
            ax.imshow(np.clip(lab, 0, 2), cmap=cmap, vmin=0, vmax=2, origin="lower", interpolation="nearest")
            if np.any(lab == 2):
                ax.contour(lab == 2, levels=[0.5], colors=["orange"], linewidths=0.8, origin="lower")
        ax.set_title(f"{sequence}: {sub}", fontsize=9)
        ax.set_xlabel("voxels (patient right on the left, radiological view)", fontsize=7)
        ax.set_ylabel("voxels (anterior up)", fontsize=7)
        ax.tick_params(labelsize=6)
    handles = [
        Patch(color=(0.2, 0.5, 1.0, 0.6), label="liver"),
        Patch(color=(1.0, 0.55, 0.0, 0.8), label="lesion"),
    ]
    axes[2].legend(handles=handles, loc="lower right", fontsize=7)
    if dice:
        title += "  (" + ", ".join(f"{k} Dice {v:.2f}" for k, v in dice.items() if v is not None) + ")"
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_imputation(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, sequence: str) -> Path:
    """Per case: available source sequence, true target, synthesised target, absolute error (mid slice).

    Each row dict: ``case``, ``source`` (name), ``source_img``, ``truth``, ``synth`` (2D arrays), ``psnr``.
    """
    plt = _plt()
    n = len(rows)
    fig, axes = plt.subplots(n, 4, figsize=(9.5, 2.5 * n + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        panels = [
            (row["source_img"], f"input: {row['source']}", "gray"),
            (row["truth"], f"true {sequence} (hidden)", "gray"),
            (row["synth"], f"synthesised {sequence}", "gray"),
            (np.abs(row["synth"] - row["truth"]), "|error|", "magma"),
        ]
        for c, (img, title, cmap) in enumerate(panels):
            ax = axes[r, c]
            im = ax.imshow(img, cmap=cmap, vmin=0, vmax=1.2 if cmap == "gray" else 0.6, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{row['case']}\nPSNR {row['psnr']:.1f} dB", fontsize=8)
        fig.colorbar(im, ax=axes[r, 3], fraction=0.046, pad=0.04, label="normalised units")
    fig.suptitle(
        f"Synthesis of a missing sequence ({sequence}) on unseen lesion ROIs "
        "(axial mid slice, normalised intensity)",
        fontsize=9,
    )
    return save_figure(fig, path)


def plot_calibration_check(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    sequence: str,
    local_contrast: Sequence[float] | None,
) -> Path:
    """Per unseen case: true sequence, synthesis as decoded and calibrated, and their absolute errors, on
    the axial slice with the most liver; the liver outline (where the PSNR is scored) on the truth.

    Each row dict (from :func:`mrfound.calibration.evaluate_local_contrast` with ``keep_volumes``):
    ``case``, ``truth``, ``as_decoded``, ``applied``, ``region`` (3D arrays), ``psnr``, ``psnr_as_decoded``.
    """
    plt = _plt()
    n = len(rows)
    fig, axes = plt.subplots(n, 5, figsize=(11.5, 2.5 * n + 0.6), squeeze=False)
    for r, row in enumerate(rows):
        k = int(np.argmax(np.asarray(row["region"]).sum(axis=(0, 1))))

        def axial(v: np.ndarray, k: int = k) -> np.ndarray:
            # radiological view, as the imputation figure
            return np.asarray(v)[:, :, k].T[:, ::-1]

        truth = axial(row["truth"])
        panels = [
            (truth, f"true {sequence} (hidden)", "gray"),
            (axial(row["as_decoded"]), f"as decoded\nliver PSNR {row['psnr_as_decoded']:.1f} dB", "gray"),
            (axial(row["applied"]), f"calibrated\nliver PSNR {row['psnr']:.1f} dB", "gray"),
            (np.abs(axial(row["as_decoded"]) - truth), "|error| as decoded", "magma"),
            (np.abs(axial(row["applied"]) - truth), "|error| calibrated", "magma"),
        ]
        for c, (img, title, cmap) in enumerate(panels):
            ax = axes[r, c]
            im = ax.imshow(img, cmap=cmap, vmin=0, vmax=1.2 if cmap == "gray" else 0.6, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        liver = axial(row["region"]).astype(float)
        axes[r, 0].contour(liver, levels=[0.5], colors="tab:green", linewidths=0.8)
        axes[r, 0].set_ylabel(f"{row['case']}\nslice {k}", fontsize=8)
        fig.colorbar(im, ax=axes[r, 4], fraction=0.046, pad=0.04, label="normalised units")
    if local_contrast is None:
        how = "as decoded only (no calibration)"
    else:
        gain, width, level = local_contrast
        how = f"calibrated: gain {gain:g}, {width:g} mm local mean, level {level:g}"
    fig.suptitle(
        f"Whole-volume synthesis of {sequence} on unseen cases, {how}; green: liver, where PSNR is scored",
        fontsize=9,
    )
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------- the demo


def _tiny_configs(cfg: DemoConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    enc = {"patch_size": cfg.patch_size, **cfg.model_overrides}
    return enc, dict(cfg.mae_overrides)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from mrfound.pretrain.trainer import read_log

    return read_log(path)


def run_demo(cfg: DemoConfig, stream: Any = None) -> dict[str, Any]:
    """Run every stage (see the module docstring) and write ``cfg.out/report.md``.

    Returns:
        The summary dict (also written to ``cfg.out/summary.json``).
    """
    cfg.validate()
    import torch

    from mrfound.data.cache import MEMORY_ENV

    before = os.environ.get(MEMORY_ENV)
    if before is None:  # the repeated crops of training read the cache from memory
        os.environ[MEMORY_ENV] = str(cfg.cache_memory_mb)
    threads = torch.get_num_threads()
    _THREADS["initial"] = threads
    try:
        return _run_demo(cfg, stream)
    finally:
        torch.set_num_threads(threads)
        if before is None:
            os.environ.pop(MEMORY_ENV, None)


DEMO_OUTPUTS: tuple[str, ...] = (
    "figures",
    "predictions",
    "segmentations",
    "imputed",
    "work/pretrain",
    "work/classify",
    "work/segment",
)
"""Folders of an earlier demo that a new run replaces (``work/cache`` is content-addressed and kept)."""


def prepare_out(out: Path) -> None:
    """Create ``out``, or clear an earlier demo's results in it; refuse any other non-empty folder."""
    import shutil

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()):
        if not ((out / "summary.json").is_file() or (out / "work").is_dir()):
            raise ConfigError(
                f"--out {out} is not empty and holds no earlier demo; choose a new or empty folder"
            )
        for name in DEMO_OUTPUTS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _run_demo(cfg: DemoConfig, stream: Any = None) -> dict[str, Any]:
    import torch

    out = Path(cfg.out)
    prepare_out(out)
    fig_dir, work = out / "figures", out / "work"
    fig_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log = StageLog(total=8 if cfg.segment else 7, stream=stream)
    budget = Budget(cfg.minutes)
    summary: dict[str, Any] = {"command": cfg.command, "settings": jsonable(dataclasses.asdict(cfg))}
    from mrfound.data.sequences import CLASSES

    log.say(
        f"mrfound demo: {cfg.cases} simulated cases, budget {cfg.minutes:g} min, seed {cfg.seed}, "
        f"output {out}"
    )

    # 1 ------------------------------------------------------------------ simulate
    from mrfound.data.manifest import read_manifest
    from mrfound.data.phantom import PhantomConfig, generate_cohort
    from mrfound.data.phantom.preview import cohort_preview

    phantom = PhantomConfig(spacing_scale=cfg.spacing_scale)
    with log.stage("simulate", f"Simulating {cfg.cases} multi-centre, multi-sequence liver MRI cases"):
        manifest_path = generate_cohort(work / "cohort", cfg.cases, cfg.seed, phantom, workers=cfg.workers)
        cohort_preview(
            manifest_path,
            fig_dir / "montage.png",
            seed=cfg.seed,
            config=phantom,
            candidates=cfg.montage_candidates,
        )
        cohort = read_manifest(manifest_path)
        log.say(
            f"   {len(cohort)} cases from {len({c.center for c in cohort.cases})} centres -> {manifest_path}"
        )
    summary["cohort"] = {"cases": len(cohort), "manifest": str(manifest_path)}

    # 2 ------------------------------------------------------------------ split + cache
    from mrfound.data.preprocess import PreprocessConfig

    pp = PreprocessConfig(spacing=cfg.spacing, roi_size=cfg.roi_size)
    cache_dir = work / "cache"
    with log.stage("split", "Splitting by subject and preprocessing (common 2 mm RAS grid, normalised)"):
        train_m, test_m = split_cohort(cohort, cfg.test_fraction, cfg.seed)
        train_csv = train_m.to_csv(work / "train.csv")
        test_m.to_csv(work / "test.csv")
        fill_cache(cohort, pp, cache_dir, cfg.workers)
        log.say(f"   train {len(train_m)} cases / test {len(test_m)} cases (no subject on both sides)")
    summary["split"] = {"train": len(train_m), "test": len(test_m), "seed": cfg.seed}

    # 3 ------------------------------------------------------------------ pretrain
    from mrfound.data.dataset import MRDataset, collate_cases
    from mrfound.pretrain.config import PretrainConfig
    from mrfound.pretrain.run import build_model, pretrain

    enc_over, mae_over = _tiny_configs(cfg)
    pre_cfg = PretrainConfig(
        out=str(work / "pretrain"),
        manifest=[str(train_csv)],
        model="tiny",
        model_overrides=enc_over,
        mae=mae_over,
        roi_size=cfg.roi_size,
        spacing=cfg.spacing,
        cache_dir=str(cache_dir),
        steps=10,
        batch_size=cfg.batch_size,
        lr=5e-4,
        seed=cfg.seed,
        eval_fraction=0.0,
        viz_every=0,
        viz_cases=0,
        tensorboard=False,
        save_every=0,
        log_every=10,
    )
    n_volumes = min(1, cfg.predict_cases)  # unseen whole volumes segmented and imputed (sliding windows)
    with log.stage("pretrain", "Pretraining the tiny masked-modality autoencoder on the training cases"):
        ds = MRDataset(train_m, pp, mode="random", cache_dir=cache_dir, seed=cfg.seed)
        sps, threads = fastest_threads(build_model(pre_cfg), ds, cfg.batch_size)
        if threads == 1 and torch.get_num_threads() == 1 and _initial_threads() > 1:
            log.say("   busy machine: one torch thread trains faster than several here; using 1")
        # whole-volume syntheses of the calibration and of its check on unseen cases
        calibration_volumes = int(cfg.calibrate_cases) + (
            int(cfg.calibrate_holdout_cases) if cfg.calibrate_cases else 0
        )
        plan = TimePlan(budget, sps / REFERENCE_SECONDS_PER_STEP, cfg.segment, n_volumes, calibration_volumes)
        pre_cfg.steps = Budget.steps(
            plan.seconds_for("pretrain", ["probe", "classify", "segment", "infer"]),
            sps,
            cfg.min_steps["pretrain"],
            cfg.max_steps["pretrain"],
        )
        pre_cfg.warmup_steps = max(1, pre_cfg.steps // 20)
        log.say(f"   {sps:.2f} s/step measured -> {pre_cfg.steps} steps of batch {cfg.batch_size}")
        pre = pretrain(pre_cfg, command=cfg.command)
        mae = build_model(pre_cfg)
        from mrfound.models.checkpoint import load_checkpoint

        _, state = load_checkpoint(pre.final_dir)
        mae.load_state_dict(state)
        mae.eval()
        plot_loss_curve(
            _read_jsonl(Path(pre_cfg.out) / "log.jsonl"),
            fig_dir / "pretrain_loss.png",
            title=f"Pretraining loss (tiny, {pre.steps} steps, {len(train_m)} training cases)",
        )
        # held-out reconstruction: unseen test lesions, same masks for every model
        from mrfound.pretrain.evaluate import evaluate_reconstruction, sequence_mean_patches
        from mrfound.pretrain.run import EVAL_MASKING_SEED
        from mrfound.pretrain.viz import plot_reconstructions

        test_crops = MRDataset(test_m, pp, mode="lesion", cache_dir=cache_dir, seed=cfg.seed)
        train_crops = MRDataset(train_m, pp, mode="random", cache_dir=cache_dir, seed=cfg.seed)
        baseline = sequence_mean_patches(
            mae, train_crops, batch_size=cfg.batch_size, max_samples=min(len(train_crops), 96)
        )
        untrained = build_model(pre_cfg)
        rec = evaluate_reconstruction(
            mae,
            test_crops,
            baseline=baseline,
            masking_seed=EVAL_MASKING_SEED,
            repeats=2,
            batch_size=cfg.batch_size,
            max_samples=48,
            extra_models={"untrained": untrained},
        )
        viz_batch = collate_cases([test_crops[i] for i in range(min(3, len(test_crops)))])
        plot_reconstructions(
            mae,
            viz_batch,
            fig_dir / "reconstruction.png",
            masking_seed=EVAL_MASKING_SEED,
            title=f"Unseen test lesions: masked patches and a dropped sequence (after {pre.steps} steps)",
        )
    summary["pretrain"] = {
        "steps": pre.steps,
        "seconds_per_step": round(sps, 3),
        "seconds_per_step_trained": round(pre.train_wall_s / max(1, pre.steps), 3),
        "torch_threads": threads,
        "checkpoint": str(pre.final_dir),
        "final_train_loss": pre.train.last_logs.get("loss"),
        "heldout": jsonable(rec),
    }
    plan.observe("pretrain", log.times["pretrain"] - pre.train_wall_s)
    log.say(
        "   held-out loss (norm-pix MSE) masked patches / dropped sequences: "
        f"model {rec['model']['loss_inpaint']:.3f} / {rec['model']['loss_synth'] or float('nan'):.3f}, "
        f"untrained {rec['untrained']['loss_inpaint']:.3f} / "
        f"{rec['untrained']['loss_synth'] or float('nan'):.3f}, mean baseline "
        f"{rec['mean_baseline']['loss_inpaint']:.3f} / "
        f"{rec['mean_baseline']['loss_synth'] or float('nan'):.3f}"
    )

    # 4 ------------------------------------------------------------------ probe
    from mrfound.finetune.common import load_encoder
    from mrfound.finetune.probe import encoder_feature_fn

    probes: dict[str, Any] = {}
    with log.stage("probe", "Linear probe of the frozen encoder vs random init, by protocol and label share"):
        for name, random_init in (("pretrained (ours)", False), ("random init", True)):
            src = load_encoder(str(pre.final_dir), random_init=random_init, seed=cfg.seed)
            fn = encoder_feature_fn(
                src.encoder, src.preprocess, cache_dir=cache_dir, batch_size=cfg.batch_size
            )
            probes[name] = probe_protocols(
                train_m,
                test_m,
                fn,
                protocols=NAMED_PROTOCOLS,
                sequences=src.vocabulary.sequences,
                label_fractions=cfg.label_fractions,
                n_boot=cfg.n_boot,
                seed=cfg.seed,
            )
            log.say(
                f"   {name:18s} macro AUC "
                + ", ".join(
                    f"{p} {fmt_metric(probes[name]['protocols'][p], ci=False)}" for p in NAMED_PROTOCOLS
                )
            )
    summary["probe"] = {
        k: jsonable({kk: vv for kk, vv in v.items() if kk != "predictions"}) for k, v in probes.items()
    }
    scale = plan.observe("probe", log.times["probe"])
    log.say(f"   fixed work so far took {plan.ratio:.2f}x the plan: later reserves scaled x{scale:.2f}")
    summary["time_plan"] = {
        "slow": round(plan.slow, 3),
        "fixed_ratio": round(plan.ratio or 0.0, 3),
        "reserve_scale": round(scale, 3),
        "measured_fixed_s": {k: round(v, 1) for k, v in plan.measured.items()},
    }

    # 5 ------------------------------------------------------------------ fine-tune classification
    from mrfound.finetune.classify import finetune_classifier
    from mrfound.finetune.config import FinetuneConfig
    from mrfound.finetune.evaluate import plot_confusion, plot_roc
    from mrfound.finetune.metrics import roc_curves
    from mrfound.models.checkpoint import load_model
    from mrfound.models.heads import Classifier, make_classification_head

    with log.stage("classify", "Fine-tuning a lesion classifier (layer-wise LR decay, sequence dropout)"):
        src = load_encoder(str(pre.final_dir), seed=cfg.seed)
        probe_model = Classifier(src.encoder, make_classification_head(src.encoder, len(CLASSES)), CLASSES)
        cds = MRDataset(train_m, pp, mode="lesion", cache_dir=cache_dir, seed=cfg.seed)
        sps_c = seconds_per_step(probe_model, cds, cfg.batch_size)
        steps_c = Budget.steps(
            plan.seconds_for("classify", ["segment", "infer"]),
            sps_c,
            cfg.min_steps["classify"],
            cfg.max_steps["classify"],
        )
        log.say(f"   {sps_c:.2f} s/step measured -> {steps_c} steps")
        ft_cfg = FinetuneConfig(
            out=str(work / "classify"),
            task="classify",
            checkpoint=str(pre.final_dir),
            manifest=str(train_csv),
            val_fraction=0.0,
            steps=steps_c,
            batch_size=cfg.batch_size,
            lr=5e-4,
            layer_decay=0.75,
            sequence_dropout=0.25,
            cache_dir=str(cache_dir),
            seed=cfg.seed,
            tensorboard=False,
            log_every=10,
            warmup_steps=max(1, steps_c // 10),
        )
        ft = finetune_classifier(ft_cfg)
        clf, _ = load_model(ft["final"])
        clf.eval()
        cls_metrics, cls_pred = classifier_protocol_metrics(
            clf, test_m, pp, NAMED_PROTOCOLS, cache_dir=cache_dir, n_boot=cfg.n_boot, seed=cfg.seed
        )
        allp = cls_pred[cls_pred["protocol"] == "all"]
        curves = roc_curves(
            allp["label"].tolist(),
            allp[[f"p_{c}" for c in CLASSES]].to_numpy(float),
            CLASSES,
            test_m.vocabulary.malignant,
        )
        plot_roc(
            curves,
            fig_dir / "roc.png",
            title=f"Fine-tuned classifier, unseen test cases (n={len(allp)}), all sequences",
        )
        plot_confusion(
            cls_metrics["all"]["confusion_matrix"],
            CLASSES,
            fig_dir / "confusion.png",
            title="Fine-tuned classifier: confusion matrix (test cases)",
        )
        log.say(
            "   fine-tuned macro AUC "
            + ", ".join(f"{p} {fmt_metric(cls_metrics[p], ci=False)}" for p in NAMED_PROTOCOLS)
        )
    series = {k: v["protocols"] for k, v in probes.items()}
    series["fine-tuned (ours)"] = cls_metrics
    plot_protocol_auc(
        {
            "probe: pretrained (ours)": series["pretrained (ours)"],
            "probe: random init": series["random init"],
            "fine-tuned from pretrained": cls_metrics,
        },
        NAMED_PROTOCOLS,
        fig_dir / "robustness.png",
        title="Missing-sequence robustness (test cases; sequences outside the protocol removed)",
    )
    plot_label_efficiency(
        {k: {float(f): m["all"] for f, m in v["fractions"].items()} for k, v in probes.items()},
        fig_dir / "label_efficiency.png",
        title="Label efficiency of the linear probe (all sequences)",
        references={"fine-tuned, 100 % labels": value(cls_metrics["all"])},
    )
    summary["classify"] = {
        "steps": ft["steps"],
        "seconds_per_step": round(sps_c, 3),
        "n_train": ft["n_train"],
        "checkpoint": ft["final"],
        "protocols": jsonable(cls_metrics),
    }

    # 6 ------------------------------------------------------------------ segmentation
    seg_summary: dict[str, Any] | None = None
    seg_fits = budget.total - budget.left() < SEGMENT_OVERRUN * budget.total
    if cfg.segment and not seg_fits:
        with log.stage("segment", "Segmentation fine-tune skipped: it does not fit the time budget"):
            reason = f"{(budget.total - budget.left()) / 60:.1f} min of the {cfg.minutes:g} min budget used"
            log.say(f"   {reason}; rerun with a larger --minutes to include it")
        summary["segment_skipped"] = reason
    if cfg.segment and seg_fits:
        from mrfound.finetune.segment import finetune_segmenter
        from mrfound.models.heads import Segmenter, make_segmentation_head

        title = f"Short liver + lesion segmentation fine-tune on a {cfg.segment_spacing:g} mm grid"
        with log.stage("segment", title + " (sliding-window evaluation)"):
            src = load_encoder(str(pre.final_dir), seed=cfg.seed)
            seg_head = make_segmentation_head(
                src.encoder, feature_size=cfg.segment_feature_size, skip_source="image"
            )
            seg_probe = Segmenter(src.encoder, seg_head)
            seg_pp = dataclasses.replace(pp, spacing=cfg.segment_spacing)
            sds = MRDataset(train_m, seg_pp, mode="lesion", cache_dir=cache_dir, seed=cfg.seed)
            sps_s = seconds_per_step(seg_probe, sds, cfg.segment_batch_size)
            # two test volumes when the budget allows, else one (whole-volume sliding windows are slow)
            n_eval = 2 if budget.left() - plan.fixed(["segment", "infer"]) > 0 else 1
            steps_s = Budget.steps(
                plan.seconds_for("segment", ["infer"]),
                sps_s,
                cfg.min_steps["segment"],
                cfg.max_steps["segment"],
            )
            log.say(f"   {sps_s:.2f} s/step measured -> {steps_s} steps")
            seg_cfg = FinetuneConfig(
                out=str(work / "segment"),
                task="segment",
                checkpoint=str(pre.final_dir),
                manifest=str(train_csv),
                val_fraction=0.0,
                steps=steps_s,
                batch_size=cfg.segment_batch_size,
                spacing=cfg.segment_spacing,
                lr=cfg.segment_lr,
                layer_decay=0.75,
                feature_size=cfg.segment_feature_size,
                skip_source="image",
                samples_per_case=1,
                cache_dir=str(cache_dir),
                seed=cfg.seed,
                tensorboard=False,
                log_every=10,
                warmup_steps=max(1, steps_s // 10),
                sw_overlap=0.25,
            )
            seg = finetune_segmenter(seg_cfg)
            segm, _ = load_model(seg["final"])
            segm.eval()
            eval_m = subset_manifest(test_m, lambda c: c.mask is not None)
            eval_m = type(eval_m).from_cases(eval_m.cases[:n_eval], eval_m.root, eval_m.vocabulary)
            seg_metrics, seg_table = _evaluate_segmentation(
                segm, eval_m, seg_pp, cache_dir, fig_dir / "segmentation.png"
            )
            log.say(
                # _f: a Dice of 0 is a result (no lesion voxel found), only None is "n/a"
                f"   test volumes: liver Dice {_f(seg_metrics['liver']['dice'])}, "
                f"lesion Dice {_f(seg_metrics['lesion']['dice'])} "
                f"(n={seg_metrics['n_cases']})"
            )
        seg_summary = {
            "steps": seg["steps"],
            "spacing_mm": cfg.segment_spacing,
            "batch_size": cfg.segment_batch_size,
            "feature_size": cfg.segment_feature_size,
            "lr": cfg.segment_lr,
            "seconds_per_step": round(sps_s, 3),
            "checkpoint": seg["final"],
            "test": jsonable(seg_metrics),
            "per_case": seg_table.to_dict(orient="records"),
        }
        summary["segment"] = seg_summary

    # 7 ------------------------------------------------------------------ predict + impute
    import mrfound
    from mrfound.inference import impute_manifest, predict_manifest

    with log.stage("infer", f"Predict and impute for {cfg.predict_cases} unseen cases (load_pretrained)"):
        few = type(test_m).from_cases(test_m.cases[: cfg.predict_cases], test_m.root, test_m.vocabulary)
        few_csv = few.to_csv(work / "unseen.csv")
        clf_api = mrfound.load_pretrained(ft["final"], device="cpu")
        pred_sum = predict_manifest(clf_api, few_csv, out / "predictions", progress=None)
        pred_df = _read_csv(out / "predictions" / "predictions.csv")
        few_vol = type(test_m).from_cases(test_m.cases[:n_volumes], test_m.root, test_m.vocabulary)
        vol_csv = few_vol.to_csv(work / "unseen_volumes.csv")
        if seg_summary is not None:
            seg_api = mrfound.load_pretrained(seg_summary["checkpoint"], device="cpu")
            predict_manifest(seg_api, vol_csv, out / "segmentations", progress=None)
        mae_api = mrfound.load_pretrained(str(pre.final_dir), device="cpu")
        calibration = holdout = None
        if cfg.calibrate_cases:
            # what `mrfound calibrate` does: choose the synthesis' local contrast on training cases, store
            # it in the checkpoint; impute then applies it
            from mrfound.calibration import calibrate_local_contrast, store_calibration

            try:
                calib = calibrate_local_contrast(
                    mae_api,
                    train_m,
                    sequences=[cfg.impute_sequence],
                    max_cases=int(cfg.calibrate_cases),
                    progress=False,
                )
            except ConfigError as exc:  # e.g. no training case with the sequence: impute as decoded
                log.say(f"   no calibration ({exc}); the synthesis is imputed as decoded")
                calib = {"sequences": {}}
            if calib["sequences"]:
                store_calibration(pre.final_dir, calib, provenance={"command": "mrfound demo"})
                mae_api = mrfound.load_pretrained(str(pre.final_dir), device="cpu")
                calibration = calib["sequences"][mae_api.vocabulary.canonical_sequence(cfg.impute_sequence)]
                log.say(
                    f"   calibrated {cfg.impute_sequence} on {calibration['n_cases']} training case(s): "
                    f"gain {calibration['gain']:g} around a {calibration['sigma_mm']:g} mm local mean, level "
                    f"{calibration['level']:g}, liver "
                    f"PSNR {calibration['psnr_as_decoded']:.1f} -> {calibration['psnr']:.1f} dB"
                )
                if cfg.calibrate_holdout_cases:
                    figure = fig_dir / "imputation_calibration.png"
                    holdout = _check_calibration(mae_api, test_m, cfg, figure)
                    if holdout is None:
                        log.say("   calibration unchecked: no unseen case has the sequence, another, a mask")
                    else:
                        log.say(
                            f"   on {holdout['n_cases']} unseen volume(s): liver PSNR as decoded "
                            f"{holdout['psnr_as_decoded']:.1f} dB, calibrated {holdout['psnr']:.1f} dB"
                        )
        imp_sum = impute_manifest(mae_api, vol_csv, cfg.impute_sequence, out / "imputed", progress=None)
        imp_rows, imp_table = _imputation_rows(
            mae, test_m, pp, cache_dir, cfg.impute_sequence, n=cfg.impute_cases
        )
        if imp_rows:
            plot_imputation(imp_rows[:3], fig_dir / "imputation.png", sequence=cfg.impute_sequence)
        log.say(
            f"   predictions -> {out / 'predictions' / 'predictions.csv'}; synthesised "
            f"{cfg.impute_sequence} -> {out / 'imputed'}"
        )
    truth = {c.case: c.label for c in few.cases}
    summary["inference"] = {
        "predictions": [
            {
                "case": r["case"],
                "label": truth.get(r["case"]),
                "label_pred": r.get("label_pred"),
                "p_pred": r.get(f"p_{r.get('label_pred')}"),
            }
            for r in pred_df
        ],
        "imputation": imp_table,
        "predict_summary": _as_dict(pred_sum),
        "impute_summary": _as_dict(imp_sum),
        "calibration": calibration,
        "calibration_holdout": holdout,
    }

    # 8 ------------------------------------------------------------------ report
    with log.stage("report", "Writing the report"):
        from mrfound.utils.machine import machine_info

        summary["wall_s"] = {**log.times, "total": round(time.time() - log.start, 1)}
        summary["machine"] = machine_info()
        text = _report(cfg, summary, probes, cls_metrics, cohort, train_m, test_m)
        atomic_write_text(out / "report.md", text)
        atomic_write_json(out / "summary.json", jsonable(summary))
    summary["wall_s"]["total"] = round(time.time() - log.start, 1)
    atomic_write_json(out / "summary.json", jsonable(summary))
    print_summary(summary, probes, cls_metrics, out, stream=log.stream)
    return summary


def _as_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return jsonable(
            {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(obj).items()}
        )
    return jsonable(obj)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    return pd.read_csv(path).to_dict(orient="records") if path.is_file() else []


def _evaluate_segmentation(
    model: Any, manifest: Any, pp: Any, cache_dir: Any, path: Path
) -> tuple[dict, Any]:
    """Sliding-window segmentation of each case (once): Dice/HD95 per class, and the overlay of the first.

    The largest connected foreground component is kept (``mrfound predict --largest-component``): the
    short fine-tune sees crops around the body and lesion only, and leaves islands in the background.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from mrfound.data.dataset import MRDataset
    from mrfound.finetune.metrics import segmentation_metrics
    from mrfound.finetune.segment import segmentation_volume
    from mrfound.inference import keep_largest_foreground
    from mrfound.models.heads import remap_mask

    ds = MRDataset(manifest, pp, mode="full", cache_dir=cache_dir)
    seqs = list(manifest.vocabulary.sequences)
    rows = []
    for i in tqdm(range(len(ds)), desc="segment", disable=None, leave=False):
        s = ds[i]
        labels = keep_largest_foreground(segmentation_volume(model, s, sw_batch_size=4))
        truth = remap_mask(s["mask"])[0].numpy()
        m = segmentation_metrics(labels, truth, spacing=pp.spacing)
        rows.append(
            {
                "case": s["case"],
                **{f"{c}_{k}": m[c][k] for c in ("liver", "lesion") for k in ("dice", "hd95")},
            }
        )
        if i == 0:
            lc = ds.preprocessed(0).get("lesion_center")
            z = int(np.clip(round(lc[2]) if lc is not None else truth.shape[2] // 2, 0, truth.shape[2] - 1))
            avail = s["available"].numpy()
            pick = next(
                (q for q in ("t1_pv", "t2", "t1_del") if q in seqs and avail[seqs.index(q)]),
                seqs[int(np.flatnonzero(avail)[0])],
            )
            img = s["image"][seqs.index(pick)].numpy()
            plot_segmentation_overlay(
                img[:, :, z].T,
                truth[:, :, z].T,
                labels[:, :, z].T,
                path,
                title=f"Segmentation of unseen case {s['case']} (axial slice through the lesion; "
                "largest connected component)",
                sequence=pick,
                dice={"liver": m["liver"]["dice"], "lesion": m["lesion"]["dice"]},
            )
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {"n_cases": len(table)}
    for c in ("liver", "lesion"):
        summary[c] = {}
        for k in ("dice", "hd95"):
            v = (
                pd.to_numeric(table[f"{c}_{k}"], errors="coerce").dropna()
                if len(table)
                else pd.Series([], dtype=float)
            )
            summary[c][k] = float(v.mean()) if len(v) else None
    return summary, table


def _imputation_rows(
    mae: Any, test_m: Any, pp: Any, cache_dir: Any, sequence: str, n: int = 3
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Synthesise ``sequence`` on unseen lesion ROIs that have it; PSNR inside the body vs copying the
    nearest available sequence (the simple baseline)."""
    from mrfound.data.dataset import MRDataset
    from mrfound.data.preprocess import crop_lesion
    from mrfound.inference import masked_psnr

    seqs = list(test_m.vocabulary.sequences)
    if sequence not in seqs:
        return [], []
    t = seqs.index(sequence)
    ds = MRDataset(test_m, pp, mode="lesion", cache_dir=cache_dir)
    cases = [i for i, c in enumerate(test_m.cases) if sequence in c.sequences and len(c.sequences) > 1][:n]
    rows, table = [], []
    for i in cases:
        s = ds[i]
        synth = mae.reconstruct(s["image"][None], s["available"][None], [sequence])[0, t].numpy()
        truth = s["image"][t].numpy()
        body = crop_lesion(ds.preprocessed(i), pp.roi_size)["body"].astype(bool)
        sources = [q for q in seqs if bool(s["available"][seqs.index(q)]) and q != sequence]
        nearest = _nearest_sequence(sequence, sources)
        copy = s["image"][seqs.index(nearest)].numpy()
        row = {
            "case": s["case"],
            "source": nearest,
            "psnr": masked_psnr(synth, truth, body),
            "psnr_copy_nearest": masked_psnr(copy, truth, body),
        }
        mid = truth.shape[2] // 2
        rows.append(
            # axial mid slice in radiological view (patient right on the left, anterior up)
            {
                **row,
                **{
                    k: v[:, :, mid].T[:, ::-1]
                    for k, v in (("source_img", copy), ("truth", truth), ("synth", synth))
                },
            }
        )
        table.append(row)
    return rows, table


def _check_calibration(mae_api: Any, test_m: Any, cfg: DemoConfig, figure: Path) -> dict[str, Any] | None:
    """Liver PSNR of the imputed sequence's whole-volume synthesis, as decoded and with the checkpoint's
    calibration, on ``cfg.calibrate_holdout_cases`` unseen cases, and the figure of both (None: no case can
    be scored)."""
    from mrfound.calibration import evaluate_local_contrast

    try:
        ev = evaluate_local_contrast(
            mae_api,
            test_m,
            sequences=[cfg.impute_sequence],
            max_cases=int(cfg.calibrate_holdout_cases),
            progress=False,
            keep_volumes=True,
        )
    except ConfigError:
        return None
    res = next(iter(ev["sequences"].values()), None)
    if res is None:
        return None
    plot_calibration_check(
        res["cases"], figure, sequence=cfg.impute_sequence, local_contrast=res["local_contrast"]
    )
    keep = ("case", "psnr", "psnr_as_decoded")
    cases = [{k: r[k] for k in keep} for r in res["cases"]]  # the volumes stay out of summary.json
    return {**{k: v for k, v in res.items() if k != "cases"}, "cases": cases}


def _imputation_means(table: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """Mean PSNR of the synthesis and of the copy-nearest baseline over the imputation rows."""
    return float(np.mean([r["psnr"] for r in table])), float(np.mean([r["psnr_copy_nearest"] for r in table]))


SEQUENCE_ORDER: tuple[str, ...] = ("t2", "dwi", "t1_in", "t1_opp", "t1_pre", "t1_art", "t1_pv", "t1_del")


def _nearest_sequence(target: str, sources: Sequence[str]) -> str:
    """The available sequence closest to ``target`` in acquisition order (the copy baseline)."""
    order = {s: i for i, s in enumerate(SEQUENCE_ORDER)}
    return min(sources, key=lambda s: (abs(order.get(s, 99) - order.get(target, 0)), order.get(s, 99)))


# --------------------------------------------------------------------------------------- reporting


def _report(
    cfg: DemoConfig,
    summary: Mapping[str, Any],
    probes: Mapping[str, Any],
    cls_metrics: Mapping[str, Any],
    cohort: Any,
    train_m: Any,
    test_m: Any,
) -> str:
    m = summary["machine"]
    w = summary["wall_s"]
    pre = summary["pretrain"]
    rec = pre["heldout"]
    lines = [
        "# mrfound demo report\n",
        f"Command: `{cfg.command or 'mrfound demo'}`  \n"
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, load average "
        f"{m['load_average_1_5_15min']} (1/5/15 min), torch {m['torch']}  \n"
        f"Wall time: {w['total'] / 60:.1f} min (budget {cfg.minutes:g} min); per stage (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in w.items() if k != "total")
        + "\n",
        "Everything below was measured in this run on a simulated cohort (the built-in phantom); "
        "numbers from a few minutes of CPU training on a few dozen test cases are illustrations, with wide "
        "confidence intervals, not a benchmark (see `benchmarks/phenotype.py` for that).\n",
        "## 1. Cohort\n",
        f"{len(cohort)} cases simulated with seed {cfg.seed} (phantom voxel-size scale {cfg.spacing_scale}); "
        f"split by subject into {len(train_m)} training and {len(test_m)} unseen test cases. Preprocessing: "
        f"every sequence resampled to one {cfg.spacing:g} mm RAS grid per case and normalised; the model "
        f"reads {cfg.roi_size}^3-voxel ROIs ({cfg.roi_size * cfg.spacing:g} mm) cut into {cfg.patch_size}^3 "
        "patches, one token per patch of each available sequence.\n",
        md_table(*cohort_table(cohort)),
        "\n![Sample montage](figures/montage.png)\n",
        "*One typical case per class (rows) and sequence (columns), axial plane through the lesion; "
        "yellow numbers: lesion/liver signal ratio; last column: the mask.*\n",
        "## 2. Pretraining (masked-modality autoencoder, `tiny`)\n",
        f"{pre['steps']} steps of batch {cfg.batch_size} ({pre['seconds_per_step']} s/step measured with "
        f"{pre['torch_threads']} torch thread(s)) on "
        "random body crops of the training cases, labels unused. Each sample drops a random number of whole "
        "sequences "
        "and hides 75 % of the remaining patches; the decoder predicts every hidden patch, dropped sequences "
        "included.\n",
        "![Pretraining loss](figures/pretrain_loss.png)\n",
        "Held-out reconstruction error on lesion ROIs of the unseen test cases (same masks for every model; "
        "norm-pix MSE, lower is better):\n",
        md_table(
            ["model", "masked patches (inpainting)", "dropped sequences (synthesis)"],
            [
                [k, _f(rec[k]["loss_inpaint"]), _f(rec[k]["loss_synth"])]
                for k in ("model", "untrained", "mean_baseline")
            ],
        ),
        "\n*model = this run's pretrained autoencoder; untrained = the same network at its initial weights; "
        "mean_baseline = the per-sequence, per-position mean patch of the training crops.*\n",
        "![Reconstructions](figures/reconstruction.png)\n",
        "## 3. Missing-sequence robustness\n",
        "Macro one-vs-rest AUC on the test cases when only the protocol's sequences are available "
        "(95 % bootstrap CI). Probes are logistic regressions on frozen features trained on complete "
        "exams.\n",
    ]
    rows = []
    for name, metrics in (
        ("probe: pretrained (ours)", probes["pretrained (ours)"]["protocols"]),
        ("probe: random init", probes["random init"]["protocols"]),
        ("fine-tuned from pretrained", cls_metrics),
    ):
        rows.append([name, *[fmt_metric(metrics.get(p, {})) for p in NAMED_PROTOCOLS]])
    lines += [md_table(["model", *NAMED_PROTOCOLS], rows), "\n![Robustness](figures/robustness.png)\n"]
    lines += [
        "## 4. Label efficiency\n",
        "Linear probe trained on a stratified share of the training labels (all sequences):\n",
    ]
    fr = [str(f) for f in cfg.label_fractions]
    lines.append(
        md_table(
            ["probe", *[f"{100 * float(f):g} %" for f in fr]],
            [[k, *[fmt_metric(v["fractions"][f]["all"]) for f in fr]] for k, v in probes.items()],
        )
    )
    lines.append("\n![Label efficiency](figures/label_efficiency.png)\n")
    c = summary["classify"]
    lines += [
        "## 5. Fine-tuned classifier\n",
        f"{c['steps']} steps on {c['n_train']} labelled training cases (layer-wise LR decay 0.75, sequence "
        "dropout 0.25, class-balanced loss). Test cases, all sequences:\n",
        md_table(
            ["metric", "value [95 % CI]"],
            [[METRIC_LABELS[k], fmt_metric(cls_metrics["all"], k)] for k in METRIC_LABELS],
        ),
        "\n![ROC curves](figures/roc.png)\n",
        "![Confusion matrix](figures/confusion.png)\n",
    ]
    if summary.get("segment"):
        s = summary["segment"]
        t = s["test"]
        lines += [
            "## 6. Segmentation\n",
            f"A short fine-tune ({s['steps']} steps of batch {s.get('batch_size', '?')} on a "
            f"{s.get('spacing_mm', '?')} mm grid) of a light head (conv skips from the image, the "
            "encoder's tokens at 1/patch) on liver + lesion; sliding-window inference over whole test "
            f"volumes ({t['n_cases']} cases), largest connected component kept:\n",
            md_table(
                ["class", "Dice", "HD95 (mm)"],
                [[k, _f(t[k]["dice"]), _f(t[k]["hd95"])] for k in ("liver", "lesion")],
            ),
            "\n![Segmentation overlay](figures/segmentation.png)\n",
        ]
    elif summary.get("segment_skipped"):
        lines += [
            "## 6. Segmentation\n",
            f"Skipped: it did not fit the time budget ({summary['segment_skipped']}). Rerun with a larger "
            "`--minutes`.\n",
        ]
    inf = summary["inference"]
    lines += [
        f"## {7 if cfg.segment else 6}. Inference on unseen cases\n",
        "`mrfound.load_pretrained` on the fine-tuned checkpoint (`predictions/predictions.csv`"
        + (", segmentations in `segmentations/`" if summary.get("segment") else "")
        + f") and on the pretrained one (synthesised {cfg.impute_sequence} in `imputed/`, NIfTI on each "
        "case's reference grid):\n",
        md_table(
            ["case", "true class", "predicted", "probability"],
            [[r["case"], r["label"], r["label_pred"], _f(r["p_pred"])] for r in inf["predictions"]],
        ),
    ]
    cal = inf.get("calibration")
    if cal:
        lines.append(
            f"\nBefore imputing, the pretrained checkpoint was calibrated (`mrfound calibrate`) on "
            f"{cal['n_cases']} training case(s) where {cfg.impute_sequence} is known: the synthesis keeps "
            f"{cal['gain']:g} of its contrast around a {cal['sigma_mm']:g} mm Gaussian local mean, that mean "
            f"scaled by {cal['level']:g} (liver PSNR on those cases {cal['psnr_as_decoded']:.1f} -> "
            f"{cal['psnr']:.1f} dB); the NIfTI in `imputed/` apply it, the ROI table below is the synthesis "
            "as decoded.\n"
        )
    held = inf.get("calibration_holdout")
    if held:
        lines += [
            f"\nDoes the calibration carry over? Whole-volume synthesis of {cfg.impute_sequence} on "
            f"{held['n_cases']} unseen case(s) it was not chosen on, liver PSNR (dB, normalised units, "
            "peak 1):\n",
            md_table(
                ["case", "as decoded", "calibrated"],
                [[r["case"], _f(r["psnr_as_decoded"], 1), _f(r["psnr"], 1)] for r in held["cases"]]
                + [[f"mean of {held['n_cases']}", _f(held["psnr_as_decoded"], 1), _f(held["psnr"], 1)]],
            ),
            "\n![Calibration on unseen cases](figures/imputation_calibration.png)\n",
        ]
    if inf["imputation"]:
        lines += [
            f"\nSynthesis of {cfg.impute_sequence} from the other sequences on unseen lesion ROIs "
            "(PSNR inside "
            "the body, normalised units, peak 1; baseline: copy the nearest available sequence):\n",
            md_table(
                ["case", "PSNR synthesised (dB)", "PSNR copy-nearest (dB)", "nearest"],
                [
                    [r["case"], _f(r["psnr"], 1), _f(r["psnr_copy_nearest"], 1), r["source"]]
                    for r in inf["imputation"]
                ]
                + [
                    [
                        f"mean of {len(inf['imputation'])}",
                        *(_f(m, 1) for m in _imputation_means(inf["imputation"])),
                        "",
                    ]
                ],
            ),
            "\n![Imputation](figures/imputation.png)\n",
        ]
    lines.append("\nAll numbers: `summary.json`; checkpoints and logs: `work/`.\n")
    return "\n".join(lines)


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.{digits}f}"


def print_summary(
    summary: Mapping[str, Any],
    probes: Mapping[str, Any],
    cls_metrics: Mapping[str, Any],
    out: Path,
    stream: Any = None,
) -> None:
    """The closing table on the terminal."""
    stream = stream or sys.stdout
    rec = summary["pretrain"]["heldout"]
    rows = [
        (
            "cohort",
            f"{summary['cohort']['cases']} cases (train {summary['split']['train']} / "
            f"test {summary['split']['test']})",
        ),
        (
            "pretraining",
            f"{summary['pretrain']['steps']} steps; held-out synthesis loss "
            f"{_f(rec['model']['loss_synth'])} (untrained {_f(rec['untrained']['loss_synth'])}, "
            f"mean baseline {_f(rec['mean_baseline']['loss_synth'])})",
        ),
    ]
    for name in probes:
        rows.append(
            (
                f"probe {name}",
                "macro AUC "
                + ", ".join(
                    f"{p} {fmt_metric(probes[name]['protocols'].get(p, {}), ci=False)}"
                    for p in NAMED_PROTOCOLS
                ),
            )
        )
    rows.append(
        (
            "fine-tuned",
            "macro AUC "
            + ", ".join(f"{p} {fmt_metric(cls_metrics.get(p, {}), ci=False)}" for p in NAMED_PROTOCOLS),
        )
    )
    a = cls_metrics.get("all", {})
    rows.append(
        (
            "fine-tuned (all)",
            f"balanced acc {fmt_metric(a, 'balanced_accuracy', ci=False)}, kappa "
            f"{fmt_metric(a, 'kappa', ci=False)}, benign/malignant AUC "
            f"{fmt_metric(a, 'auc_benign_malignant', ci=False)}",
        )
    )
    if summary.get("segment_skipped"):
        rows.append(("segmentation", f"skipped ({summary['segment_skipped']})"))
    if summary.get("segment"):
        t = summary["segment"]["test"]
        rows.append(
            ("segmentation", f"liver Dice {_f(t['liver']['dice'])}, lesion Dice {_f(t['lesion']['dice'])}")
        )
    if summary["inference"]["imputation"]:
        imp = summary["inference"]["imputation"]
        synth, copy = _imputation_means(imp)
        rows.append(
            ("imputation", f"PSNR {synth:.1f} dB vs copy-nearest {copy:.1f} dB ({len(imp)} unseen ROIs)")
        )
    held = summary["inference"].get("calibration_holdout")
    if held:
        rows.append(
            (
                "calibrated imputation",
                f"liver PSNR {held['psnr_as_decoded']:.1f} dB as decoded -> {held['psnr']:.1f} dB calibrated "
                f"({held['n_cases']} unseen volume(s))",
            )
        )
    rows.append(("wall time", f"{summary['wall_s']['total'] / 60:.1f} min"))
    rows.append(("report", str(out / "report.md")))
    width = max(len(k) for k, _ in rows)
    print("\n" + "=" * 78, file=stream)
    print("mrfound demo summary", file=stream)
    print("-" * 78, file=stream)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}", file=stream)
    print("=" * 78, file=stream, flush=True)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed (for provenance)."""
    argv = list(sys.argv if argv is None else argv)
    return " ".join(shlex.quote(a) for a in ["mrfound", *argv[1:]]) if argv else "mrfound demo"


__all__ = [
    "DemoConfig",
    "NAMED_PROTOCOLS",
    "Budget",
    "StageLog",
    "classifier_protocol_metrics",
    "cohort_table",
    "fill_cache",
    "fmt_metric",
    "jsonable",
    "md_table",
    "per_center_metrics",
    "plot_label_efficiency",
    "plot_protocol_auc",
    "probe_protocols",
    "run_demo",
    "seconds_per_step",
    "split_cohort",
]
