"""Lesion phenotyping benchmark: what does masked-modality pretraining buy, against which baselines?

One run, every number measured in it (DESIGN §7):

* **cohort**: a phantom cohort (``--cases``, four centres with different protocols, balanced classes) or
  ``--manifest``; split by subject into training and test cases (stratified, seeded);
* **pretraining** on the training cases (labels unused), same ROI, steps, batch and learning rate for every
  variant: *ours* (masked-modality autoencoder: whole-sequence dropout + patch masking, ``mrfound
  pretrain``'s program), *plain MAE* (the same with ``sequence_drop = 0``), and MONAI's channel-stacked
  ``MaskedAutoEncoderViT`` (missing sequences zero-filled, same width/depth, trained by the same
  :class:`~mrfound.pretrain.trainer.Trainer`);
* **linear probes** (logistic regression, inner-CV C) of frozen features: ours, plain MAE, random init of
  the same encoder, MONAI (mean of its encoder tokens), and hand-crafted radiomics features; trained on the
  training cases with all sequences and tested under **missing-sequence protocols** (sequences outside the
  protocol removed at test time), with **label fractions** 5/10/25/100 %, **per centre**, and
  **leave-one-centre-out** (train on the other centres' training cases, test on the held-out centre's test
  cases; predictions pooled over folds);
* **fine-tuning** of ours and of the same architecture from scratch (supervised baseline) with label
  fractions, tested under the protocols; **sequence importance** = drop in macro AUC of the fine-tuned
  model when each sequence is removed, cross-checked against the phantom's signature table.

Writes ``OUT/<stem>.json`` (every metric with its 95 % bootstrap CI, the command, machine, date, git commit,
seeds, settings and wall times), ``OUT/<stem>.md`` (tables) and ``OUT/<stem>_*.png``; ``<stem>`` is
``phenotype`` for ``--budget full`` and ``phenotype_<budget>`` otherwise. Large intermediate files (cohort,
preprocessing cache, checkpoints) go to ``--work`` and are reused by a rerun with the same settings.

Usage::

    python benchmarks/phenotype.py --budget small            # ~10-15 min on 2 idle cores
    python benchmarks/phenotype.py --budget full             # ~45-60 min on 2 idle cores
    python benchmarks/phenotype.py --budget tiny --out /tmp/r # smoke test (seconds of training)
    # the longer recipe of README's one-off probes: 10000 steps, half the crops around the lesion
    python benchmarks/phenotype.py --budget full \\
        --pretrain-steps 10000 --pretrain-warmup 200 --lesion-crops 0.5

    # the setting of README's 853-case run: 640 more unlabeled phantom cases in every pretraining
    python benchmarks/phenotype.py --budget full \\
        --pretrain-steps 10000 --pretrain-warmup 200 --lesion-crops 0.5 --extra-unlabeled 640

``--probe-pooling centre_per_sequence --probe-absent impute`` probes the mrfound encoders (ours, plain MAE,
random init) with per-sequence central pooling and every absent sequence synthesised by the model's own
decoder first, the setting in which README finds whole-sequence dropout ahead of plain MAE.
``--probe-train-protocols each`` trains every feature set's protocol probe on the training cases under
every protocol (protocol augmentation), with which README finds that lead gone.

``--pretrained ours=RUN/final --pretrained plain_mae=RUN/final`` uses checkpoints made beforehand by ``mrfound
pretrain`` (e.g. on another machine) instead of pretraining those variants: each checkpoint's recorded
config must be the recipe this run would train (every field that changes training), its manifests
unchanged (sha256) and holding exactly this run's pretraining cases, and no test subject, else the run
stops with one line naming the difference. ``--extra-manifest CSV`` adds an existing manifest of unlabeled
cases to the pretraining data, as ``--extra-unlabeled`` adds simulated ones.

``--pretrain-steps``, ``--pretrain-warmup``, ``--lesion-crops`` and ``--extra-unlabeled`` apply to all three
pretrainings alike. ``--extra-unlabeled N`` simulates N more phantom cases of the same centres and grid with
seed ``--seed`` + 101 (``--extra-seed``), every label left empty and ids prefixed ``u``, and adds them to
the pretraining data only: probes, fine-tuning and the split see the labelled cohort as before.
The ``full`` budget pretrains ours and plain MAE under bf16 autocast where the CPU computes bf16 natively
(AVX512-BF16/AMX) or on a GPU, and in fp32 elsewhere (emulated bf16 is far slower); the JSON records both
the request and the choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PHANTOM_FOREGROUND, ChannelStackedMAE, provenance, resolve_autocast  # noqa: E402

from mrfound import demo as D  # noqa: E402
from mrfound.data.preprocess import FOREGROUND_METHODS  # noqa: E402
from mrfound.models.config import EMBED_ABSENT, EMBED_POOLING, HEAD_POOLING, MASK_MODES  # noqa: E402
from mrfound.utils.machine import machine_info  # noqa: E402

FOUR_CENTRES = ("uni_3t", "community_15t", "oncology", "surveillance")
"""Default centres: complete 3 T, no DWI, no in/opposed phase, abbreviated t2 + dwi + t1_pv."""
EXTRA_SEED_OFFSET = 101
"""``--extra-unlabeled`` cases are simulated with seed ``--seed`` + this (101: README's 853-case run)."""
PRETRAINED_VARIANTS = {"ours": 0.5, "plain_mae": 0.0}
"""The mrfound pretraining variants and their whole-sequence dropout (ours': ``--ours-sequence-drop``)."""


@dataclasses.dataclass
class Budget:
    """Sizes of one benchmark budget (all recorded in the JSON)."""

    cases: int
    spacing_scale: float
    pretrain_steps: int
    ft_fractions: tuple[float, ...]
    protocols: str  # "named" (the four named protocols) or "full" (every DESIGN §7 protocol)
    ft_epochs: float
    ft_min_steps: int
    ft_max_steps: int
    loco_finetune: bool
    loco_ft_max_steps: int = 200
    n_boot: int = 1000
    probe_fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 1.0)
    roi_size: int = 32
    patch_size: int = 8
    spacing: float = 2.0
    batch_size: int = 8
    pretrain_lr: float = 5e-4
    pretrain_warmup_steps: int | None = None  # None: 5 % of the pretraining steps
    # share of the pretraining crops centred on the lesion (all three pretrainings alike); the probe reads
    # lesion-centred ROIs, which crops anywhere in the body rarely show
    pretrain_lesion_crops: float = 0.0
    ft_lr: float = 5e-4
    sequence_dropout: float = 0.25
    # token pooling of the fine-tuned classification head (ours and from scratch alike)
    ft_pooling: str = "mean"
    # ours' whole-sequence dropout (``mae.sequence_drop``; plain MAE is the same recipe with 0)
    ours_sequence_drop: float = PRETRAINED_VARIANTS["ours"]
    # ours' cross-view consistency term (``mae.consistency_weight``; 0 = off, the design's objective)
    ours_consistency_weight: float = 0.0
    # how ours hides patches (``mae.mask_mode``; "random" per token, the design's, or "tube" per position)
    ours_mask_mode: str = "random"
    test_fraction: float = 0.3
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    mae_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    probe_cs: tuple[float, ...] | None = None  # C grid of the probes' inner CV (None: the library default)
    # autocast of the mrfound pretraining runs ("bf16": 1.86x fp32 on this CPU, loss within 0.6 %; see
    # throughput.py); the MONAI baseline always trains in fp32 (it fails under bf16 autocast)
    pretrain_mixed_precision: str = "no"
    # encoder probes (ours, plain MAE, random init): token pooling, and what happens to a protocol's absent
    # sequences ("drop": no tokens; "impute": each model's own decoder synthesises them first)
    probe_pooling: str = "mean"
    probe_absent: str = "drop"
    # what the protocol probes are trained on: complete exams ("all", DESIGN §7) or the training cases under
    # every protocol ("each": protocol augmentation); label-fraction, centre and LOCO probes stay on "all"
    probe_train_protocols: str = "all"
    # preprocessing foreground threshold: the tables in README were made with raw Otsu, the library
    # default before "log_otsu"; pinned so that their commands reproduce them
    foreground: str = PHANTOM_FOREGROUND


BUDGETS: dict[str, Budget] = {
    "small": Budget(
        cases=160,
        spacing_scale=1.5,
        pretrain_steps=300,
        ft_fractions=(0.1, 1.0),
        protocols="named",
        ft_epochs=15,
        ft_min_steps=40,
        ft_max_steps=150,
        loco_finetune=False,
        n_boot=500,
    ),
    "full": Budget(
        cases=320,
        spacing_scale=1.5,
        pretrain_steps=1200,
        ft_fractions=(0.05, 0.1, 0.25, 1.0),
        protocols="full",
        ft_epochs=20,
        ft_min_steps=60,
        ft_max_steps=300,
        loco_finetune=True,
        pretrain_mixed_precision="bf16",
    ),
    # smoke test of the whole pipeline: a narrow 1-block encoder, a few steps
    "tiny": Budget(
        cases=32,
        spacing_scale=3.0,
        pretrain_steps=3,
        ft_fractions=(0.5, 1.0),
        protocols="named",
        ft_epochs=1,
        ft_min_steps=2,
        ft_max_steps=2,
        loco_finetune=True,
        loco_ft_max_steps=2,
        n_boot=20,
        probe_fractions=(0.5, 1.0),
        roi_size=16,
        patch_size=8,
        spacing=4.0,
        batch_size=4,
        probe_cs=(1.0,),
        test_fraction=0.3,
        model_overrides={"embed_dim": 24, "depth": 1, "num_heads": 2},
        mae_overrides={"decoder_dim": 24, "decoder_depth": 1, "decoder_heads": 2},
    ),
}

FEATURE_SETS = ("ours", "plain_mae", "random_init", "monai_mae", "radiomics")
LABELS = {
    "ours": "ours (masked-modality MAE)",
    "plain_mae": "plain MAE (no sequence dropout)",
    "random_init": "random init",
    "monai_mae": "MONAI channel-stacked MAE",
    "radiomics": "radiomics + logistic regression",
    "ft_ours": "fine-tuned ours",
    "ft_scratch": "supervised from scratch",
}


# ------------------------------------------------------------------------------------------ helpers


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


class Timer:
    """Wall seconds per named stage."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.times: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = round(self.times.get(name, 0.0) + seconds, 1)

    def say(self, text: str) -> None:
        print(f"[{(time.time() - self.t0) / 60:6.1f} min] {text}", flush=True)


def _resolve_protocols(kind: str, sequences: Sequence[str]) -> list[str]:
    from mrfound.data.sequences import all_protocols

    return list(D.NAMED_PROTOCOLS) if kind == "named" else all_protocols(sequences)


REUSED: dict[str, bool] = {}
"""Runs reused from an earlier invocation with the same settings (their recorded wall time is reported)."""


def record_seconds(run: Path, seconds: float) -> float:
    """Store a finished run's wall time beside it (reported again when the run is reused)."""
    from mrfound.utils.io import atomic_write_json

    atomic_write_json(run / "bench_wall_s.json", {"seconds": round(seconds, 1)})
    return seconds


def recorded_seconds(run: Path) -> float:
    """Wall time of a reused run: as recorded, else estimated from its ``log.jsonl`` timestamps."""
    REUSED[run.name] = True
    try:
        return float(json.loads((run / "bench_wall_s.json").read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        pass
    from mrfound.pretrain.trainer import read_log

    rows = [r for r in read_log(run / "log.jsonl") if "time" in r and "step" in r and "event" not in r]
    if len(rows) >= 2 and rows[-1]["step"] > rows[0]["step"]:
        per_step = (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["step"] - rows[0]["step"])
        return round(per_step * rows[-1]["step"], 1)
    return float("nan")


def _autocast_note(settings: dict[str, Any]) -> str:
    """The markdown's note on the pretraining autocast of a budget (``""`` for fp32)."""
    mp = settings.get("pretrain_mixed_precision", "no")
    return "" if mp == "no" else f", {mp} autocast for ours and plain MAE, fp32 for MONAI"


def _ours_recipe_note(settings: dict[str, Any]) -> str:
    """The markdown's note on ours' optional pretraining terms: the cross-view consistency term and a mask
    mode other than random (``""`` when neither is on)."""
    w = settings.get("ours_consistency_weight", 0.0)
    note = "" if not w else f"; ours adds the cross-view consistency term (`mae.consistency_weight` {w:g})"
    if settings.get("ours_mask_mode", "random") != "random":
        note += f"; ours hides patches by `mae.mask_mode` {settings['ours_mask_mode']}"
    return note


def _warmup(b: Budget) -> int:
    """Pretraining warm-up steps of a budget (5 % of the steps unless set)."""
    return b.pretrain_warmup_steps if b.pretrain_warmup_steps is not None else max(1, b.pretrain_steps // 20)


def _recipe_key(b: Budget) -> list[str]:
    """Run-folder key entries of the later pretraining options (none at defaults: old runs are reused)."""
    extra = []
    if b.pretrain_warmup_steps is not None:
        extra.append(f"warmup={b.pretrain_warmup_steps}")
    if b.pretrain_lesion_crops:
        extra.append(f"lesion_crops={b.pretrain_lesion_crops}")
    return extra


def pretrain_mrfound(
    name: str,
    train_csv: Path,
    work: Path,
    cache: Path,
    b: Budget,
    seed: int,
    sequence_drop: float,
    extra_csv: Path | None = None,
    consistency_weight: float = 0.0,
    mask_mode: str = "random",
) -> tuple[Path, float]:
    """Pretrain with ``mrfound pretrain``'s program (reused if a finished run with these settings exists);
    ``extra_csv``: a manifest of unlabeled cases pooled with the training cases."""
    from mrfound.pretrain.run import pretrain

    cfg = _pretrain_config(train_csv, extra_csv, cache, b, seed, sequence_drop, consistency_weight, mask_mode)
    settings = [
        str(train_csv),
        b.pretrain_steps,
        b.batch_size,
        b.pretrain_lr,
        b.roi_size,
        b.spacing,
        cfg.model_overrides,
        cfg.mae,
        seed,
    ]
    if b.pretrain_mixed_precision != "no":
        settings.append(b.pretrain_mixed_precision)
    if b.foreground != "otsu":  # runs made before the option keep their folder
        settings.append(f"foreground={b.foreground}")
    settings += _recipe_key(b)
    if extra_csv is not None:  # runs without extra cases keep their folder
        settings.append(f"extra={extra_csv}")
    run = work / f"pretrain_{name}_{_key(settings)}"
    if (run / "final" / "model.safetensors").is_file():
        return run / "final", recorded_seconds(run)
    if run.exists():
        import shutil

        shutil.rmtree(run)  # an interrupted run: start over
    cfg.out = str(run)
    t0 = time.time()
    res = pretrain(cfg, command=f"benchmarks/phenotype.py ({name})")
    return res.final_dir, record_seconds(run, time.time() - t0)


def _pretrain_config(
    train_csv: Path,
    extra_csv: Path | None,
    cache: Path,
    b: Budget,
    seed: int,
    sequence_drop: float,
    consistency_weight: float = 0.0,
    mask_mode: str = "random",
) -> Any:
    """The ``PretrainConfig`` of a mrfound pretraining variant of budget ``b`` (its ``out`` left unset).

    ``consistency_weight`` enters the recipe only when positive and ``mask_mode`` only when not "random", so
    runs made before they existed still match.
    """
    mae = {**b.mae_overrides, "sequence_drop": sequence_drop}
    if consistency_weight > 0:
        mae["consistency_weight"] = consistency_weight
    if mask_mode != "random":
        mae["mask_mode"] = mask_mode
    from mrfound.pretrain.config import PretrainConfig

    return PretrainConfig(
        manifest=[str(train_csv), *([str(extra_csv)] if extra_csv is not None else [])],
        model="tiny",
        model_overrides={"patch_size": b.patch_size, **b.model_overrides},
        mae=mae,
        roi_size=b.roi_size,
        spacing=b.spacing,
        cache_dir=str(cache),
        steps=b.pretrain_steps,
        batch_size=b.batch_size,
        lr=b.pretrain_lr,
        warmup_steps=_warmup(b),
        seed=seed,
        lesion_crops=b.pretrain_lesion_crops,
        eval_fraction=0.0,
        viz_every=0,
        viz_cases=0,
        tensorboard=False,
        save_every=0,
        log_every=max(1, min(25, b.pretrain_steps)),
        mixed_precision=b.pretrain_mixed_precision,
        preprocess={"foreground": b.foreground},
    )


RECIPE_IGNORED = frozenset(
    {
        "out", "manifest", "cache_dir", "log_every", "save_every", "keep_checkpoints", "tensorboard",
        "viz_every", "viz_cases", "resume", "num_workers", "eval_every", "eval_max_cases", "cpu",
        "skip_nonfinite",
    }
)  # fmt: skip
"""``PretrainConfig`` fields that do not change what a pretraining learns (bookkeeping, paths, logging)."""


def reuse_pretrained(
    name: str,
    path: Path,
    expected: Any,
    pretrain_cases: set[str],
    test_subjects: set[str],
) -> tuple[Path, dict[str, Any]]:
    """Check that a checkpoint made by ``mrfound pretrain`` is the variant this run would pretrain.

    The checkpoint's recorded pretraining config must equal ``expected`` (the variant's
    ``PretrainConfig``) in every field that changes the training (all but :data:`RECIPE_IGNORED`), its
    manifests must be unchanged since (sha256) and hold exactly ``pretrain_cases``, and no test subject.

    Returns:
        The checkpoint folder and what to record about it (command, manifests, run folder).

    Raises:
        SystemExit: one line naming the variant, the checkpoint and the first problem.
    """
    import pandas as pd

    where = f"--pretrained {name}: {path}"
    try:
        cfg = json.loads((path / "config.json").read_text())
        prov = cfg["provenance"]
        got = prov["pretrain_config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SystemExit(
            f"{where}: not a mrfound pretraining checkpoint (no config.json with its config)"
        ) from None
    if cfg.get("architecture") != "masked_modality_autoencoder":
        raise SystemExit(f"{where}: architecture {cfg.get('architecture')!r}, not a pretraining checkpoint")
    want = expected.to_dict()
    diff = [
        f"{k} {got.get(k)!r} (this run: {want[k]!r})"
        for k in sorted(want)
        if k not in RECIPE_IGNORED and got.get(k) != want[k]
    ]
    if diff:
        raise SystemExit(f"{where}: another recipe: {'; '.join(diff)}")
    cases: set[str] = set()
    subjects: set[str] = set()
    for item in prov.get("data", []):
        mpath = Path(item["manifest"])
        try:
            digest = hashlib.sha256(mpath.read_bytes()).hexdigest()
        except OSError as e:
            raise SystemExit(f"{where}: cannot read its pretraining manifest {mpath}: {e.strerror}") from None
        if digest != item.get("sha256"):
            raise SystemExit(f"{where}: its pretraining manifest {mpath} changed since (sha256 differs)")
        frame = pd.read_csv(mpath, dtype=str, keep_default_na=False)
        cases |= set(frame["case"])
        subjects |= set(frame["subject"])
    leaked = sorted(subjects & test_subjects)
    if leaked:
        raise SystemExit(f"{where}: pretrained on {len(leaked)} test subjects (e.g. {leaked[0]})")
    if cases != pretrain_cases:
        missing, extra = sorted(pretrain_cases - cases), sorted(cases - pretrain_cases)
        raise SystemExit(
            f"{where}: pretrained on other cases than this run's pretraining data "
            f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} others, e.g. {extra[:1]})"
        )
    return path, {
        "checkpoint": str(path),
        "command": prov.get("command"),
        "data": prov.get("data"),
        "train_cases": prov.get("train_cases"),
        "final_train_loss": prov.get("final_train_loss"),
    }


def pretrain_monai(train_m: Any, work: Path, cache: Path, pp: Any, b: Budget, seed: int) -> tuple[Any, float]:
    """MONAI channel-stacked MAE, same steps/batch/lr/ROI, trained by the shared Trainer."""
    import accelerate.utils
    import torch

    from mrfound.data.dataset import MRDataset, collate_cases
    from mrfound.pretrain.config import TrainerConfig
    from mrfound.pretrain.trainer import Trainer

    width = {
        "embed_dim": 192,
        "depth": 6,
        "num_heads": 3,
        **{k: v for k, v in b.model_overrides.items() if k in ("embed_dim", "depth", "num_heads")},
    }
    dec = {"decoder_dim": 132, "decoder_depth": 2, "decoder_heads": 4}
    if b.mae_overrides:  # smoke budget: a narrow decoder (width divisible by 6 for MONAI's sin-cos embedding)
        dec = {"decoder_dim": 24, "decoder_depth": 1, "decoder_heads": 2}
    seqs = train_m.vocabulary.sequences
    settings = [
        str(train_m.cases[0].case),
        len(train_m),
        b.pretrain_steps,
        b.batch_size,
        b.pretrain_lr,
        b.roi_size,
        b.patch_size,
        width,
        dec,
        seed,
    ]
    if b.foreground != "otsu":  # its inputs differ; runs made before the option keep their folder
        settings.append(f"foreground={b.foreground}")
    settings += _recipe_key(b)
    run = work / f"pretrain_monai_{_key(settings)}"
    weights = run / "final.safetensors"

    def build() -> ChannelStackedMAE:
        accelerate.utils.set_seed(seed)
        return ChannelStackedMAE(seqs, b.roi_size, b.patch_size, **width, **dec)

    model = build()
    if weights.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(weights)))
        return model.eval(), recorded_seconds(run)
    if run.exists():
        import shutil

        shutil.rmtree(run)
    t0 = time.time()
    ds = MRDataset(
        train_m, pp, mode="random", cache_dir=cache, seed=seed, lesion_fraction=b.pretrain_lesion_crops
    )
    cfg = TrainerConfig(
        out=str(run),
        steps=b.pretrain_steps,
        batch_size=b.batch_size,
        lr=b.pretrain_lr,
        warmup_steps=_warmup(b),
        seed=seed,
        tensorboard=False,
        save_every=0,
        log_every=max(1, min(25, b.pretrain_steps)),
        # fp32 always: MONAI's MaskedAutoEncoderViT fails under bf16 autocast (its index_put of the
        # bf16 encoder output into a float32 buffer raises); same steps, batch and lr as ours
    )
    trainer = Trainer(model, ds, cfg, collate_fn=collate_cases)
    trainer.fit()
    model = build()
    model.load_state_dict(trainer.export_state_dict())
    from safetensors.torch import save_file

    from mrfound.utils.io import atomic_write_with

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(weights, lambda p: save_file(state, str(p)))
    del torch
    return model.eval(), record_seconds(run, time.time() - t0)


def radiomics_protocol_fn(pp: Any, cache_dir: Path) -> Any:
    """Radiomics features under every protocol from one extraction per case.

    A sequence's radiomics features depend only on that sequence (and the shape features on the mask), so
    a protocol's table is the all-sequence table with the removed sequences' columns set to NaN (what
    :func:`mrfound.finetune.radiomics.radiomics_feature_fn` computes, ~20x faster for 20 protocols).
    """
    from mrfound.finetune.radiomics import INTENSITY_FEATURES, radiomics_feature_fn

    base = radiomics_feature_fn(pp, cache_dir=cache_dir)

    def fn(manifest: Any, keep: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        full = base(manifest, {"all": tuple(manifest.vocabulary.sequences)})["all"]
        has = {c.case: set(c.sequences) for c in manifest.cases}
        out = {}
        for p, k in keep.items():
            t = full[[bool(has[c] & set(k)) for c in full["case"]]].copy()
            for s in manifest.vocabulary.sequences:
                if s not in k:
                    t[[f"{s}_{f}" for f in INTENSITY_FEATURES]] = np.nan
            out[p] = t.reset_index(drop=True)
        return out

    return fn


def feature_tables(
    fn: Any,
    train_m: Any,
    test_m: Any,
    protocols: Sequence[str],
    sequences: Sequence[str],
    augment: bool = False,
) -> tuple[Any, dict[str, Any], dict[str, list[str]], dict[str, Any]]:
    """Training features (all sequences), test features under each protocol, with case info, and with
    ``augment`` the training features under every other protocol (else ``{}``)."""
    from mrfound.finetune.probe import attach_case_info, extract_protocol_features

    train_protocols = list(dict.fromkeys(["all", *protocols])) if augment else ["all"]
    raw, _ = extract_protocol_features(train_m, fn, train_protocols, sequences=sequences)
    tables = {
        p: t[t["label"].notna() & (t["label"].astype(str) != "")].reset_index(drop=True)
        for p, t in attach_case_info(raw, train_m).items()
    }
    te, excluded = extract_protocol_features(test_m, fn, list(protocols), sequences=sequences)
    extra = {p: t for p, t in tables.items() if p != "all"}
    return tables["all"], attach_case_info(te, test_m), excluded, extra


def probe_suite(
    tr: Any,
    te: Mapping[str, Any],
    excluded: Mapping[str, Any],
    protocols: Sequence[str],
    classes: Sequence[str],
    malignant: Sequence[str],
    b: Budget,
    seed: int,
    augment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Protocols, label fractions, per centre and leave-one-centre-out for one feature set (``augment``:
    extra training rows of the protocol probe, see :func:`mrfound.finetune.probe.run_probe`)."""
    import pandas as pd

    from mrfound.finetune.common import labels_fraction_subset
    from mrfound.finetune.metrics import classification_metrics
    from mrfound.finetune.probe import run_probe

    cs = {} if b.probe_cs is None else {"cs": tuple(b.probe_cs)}
    res = run_probe(
        tr,
        {p: te[p] for p in protocols},
        classes=classes,
        malignant=malignant,
        n_boot=b.n_boot,
        seed=seed,
        excluded=excluded,
        augment=augment or None,
        **cs,
    )
    out: dict[str, Any] = {"protocols": res.metrics, "fractions": {}, "n_train": int(len(tr))}
    for f in b.probe_fractions:
        if f >= 1:
            out["fractions"][str(f)] = res.metrics["all"]
            continue
        idx = labels_fraction_subset(tr["label"].tolist(), f, seed)
        r = run_probe(
            tr.iloc[idx].reset_index(drop=True),
            {"all": te["all"]},
            classes=classes,
            malignant=malignant,
            n_boot=b.n_boot,
            seed=seed,
            **cs,
        )
        out["fractions"][str(f)] = {**r.metrics["all"], "n_train": int(len(idx))}
    pred = res.predictions
    out["centers"] = _per_center(pred[pred["protocol"] == "all"], te["all"], classes, malignant)
    # leave-one-centre-out: train on the other centres' training cases, test on this centre's test cases
    folds, pooled = {}, []
    for c in sorted(set(te["all"]["center"])):
        trc = tr[tr["center"] != c].reset_index(drop=True)
        tec = te["all"][te["all"]["center"] == c].reset_index(drop=True)
        if len(tec) < 2 or trc["label"].nunique() < 2:
            continue
        r = run_probe(trc, {"all": tec}, classes=classes, malignant=malignant, n_boot=0, seed=seed, **cs)
        folds[c] = {**r.metrics["all"], "n_train": int(len(trc)), "train_centers": sorted(set(trc["center"]))}
        pooled.append(r.predictions)
    if pooled:
        p = pd.concat(pooled, ignore_index=True)
        loco = classification_metrics(
            p["label"].tolist(),
            p[[f"p_{k}" for k in classes]].to_numpy(float),
            classes,
            malignant,
            n_boot=b.n_boot,
            seed=seed,
        )
        out["loco"] = {"pooled": loco, "folds": folds}
    return out


def _per_center(pred: Any, table: Any, classes: Sequence[str], malignant: Sequence[str]) -> dict[str, Any]:
    from mrfound.finetune.metrics import classification_metrics

    center = dict(zip(table["case"], table["center"]))
    out = {}
    for c in sorted(set(center.values())):
        sub = pred[[center.get(k) == c for k in pred["case"]]]
        if len(sub) >= 2:
            out[c] = classification_metrics(
                sub["label"].tolist(),
                sub[[f"p_{k}" for k in classes]].to_numpy(float),
                classes,
                malignant,
                n_boot=0,
            )
    return out


def finetune_run(
    name: str,
    ckpt: Path,
    train_csv: Path,
    work: Path,
    cache: Path,
    b: Budget,
    seed: int,
    fraction: float,
    scratch: bool,
    n_train_cases: int,
    max_steps: int | None = None,
    pooling: str = "mean",
    head_only_steps: int = 0,
) -> tuple[Any, dict[str, Any], float]:
    """Fine-tune (or train from scratch) the classifier; a finished run with these settings is reused.

    Steps: ``ft_epochs`` passes over the labelled cases used, within ``[ft_min_steps, max_steps]``.
    ``pooling``: the classification head's token pooling (``mrfound finetune --pooling``);
    ``head_only_steps``: of those steps, how many train the head alone first (``--head-only-steps``).
    """
    from mrfound.finetune.classify import finetune_classifier
    from mrfound.finetune.config import FinetuneConfig
    from mrfound.models.checkpoint import load_model

    n = max(8, int(round(fraction * n_train_cases)))
    cap = b.ft_max_steps if max_steps is None else max_steps
    steps = int(min(cap, max(b.ft_min_steps, math.ceil(b.ft_epochs * n / b.batch_size))))
    settings = [
        str(ckpt),
        str(train_csv),
        fraction,
        scratch,
        steps,
        b.batch_size,
        b.ft_lr,
        b.sequence_dropout,
        seed,
        *(["layer_decay=1"] if scratch else []),
        *([f"pooling={pooling}"] if pooling != "mean" else []),  # runs at the default keep their folder
        *([f"head_only_steps={head_only_steps}"] if head_only_steps else []),
    ]
    run = work / f"ft_{name}_{_key(settings)}"
    info = {
        "steps": steps,
        "labels_fraction": fraction,
        "from_scratch": scratch,
        "run": str(run),
        "layer_decay": 1.0 if scratch else 0.75,
        "lr": b.ft_lr,
        "sequence_dropout": b.sequence_dropout,
        "pooling": pooling,
        "head_only_steps": head_only_steps,
    }
    t0 = time.time()
    reused = (run / "final" / "model.safetensors").is_file()
    if not reused:
        if run.exists():
            import shutil

            shutil.rmtree(run)
        cfg = FinetuneConfig(
            out=str(run),
            task="classify",
            checkpoint=str(ckpt),
            manifest=str(train_csv),
            from_scratch=scratch,
            labels_fraction=fraction,
            val_fraction=0.0,
            steps=steps,
            batch_size=b.batch_size,
            lr=b.ft_lr,
            pooling=pooling,
            head_only_steps=head_only_steps,
            # layer-wise LR decay suits a pretrained encoder; from scratch every layer learns at full rate
            layer_decay=1.0 if scratch else 0.75,
            sequence_dropout=b.sequence_dropout,
            cache_dir=str(cache),
            seed=seed,
            tensorboard=False,
            log_every=10,
            warmup_steps=max(1, steps // 10),
        )
        summary = finetune_classifier(cfg)
        info["n_train"] = summary["n_train"]
    else:
        import pandas as pd

        split = pd.read_csv(run / "split.csv")
        info["n_train"] = int((split["role"] == "train").sum())
    model, _ = load_model(run / "final")
    if reused:
        return model.eval(), info, recorded_seconds(run)
    return model.eval(), info, record_seconds(run, time.time() - t0)


# ------------------------------------------------------------------------------ sequence importance


def table_importance(sequences: Sequence[str], classes: Sequence[str]) -> dict[str, float]:
    """How much of the signature table's class separation each sequence carries.

    Per class and sequence, two expected values from :data:`mrfound.data.phantom.SIGNATURES`: the log of the
    lesion body's signal relative to liver (``core`` mean; opposed phase = in-phase x |1 - 2 x typical fat
    fraction|), and the log of its strongest other component relative to the body (rim, centre, capsule,
    scar, nodules, fill-in: the enhancement pattern). For each pair of classes, the share of their squared
    distance contributed by the sequence; averaged over pairs. A sequence that alone separates some pairs
    scores high even if its overall spread is modest (the unique information that removing it loses).
    """
    from mrfound.data.phantom import SIGNATURES

    feats: dict[str, dict[str, list[float]]] = {}
    for cls in classes:
        sig = SIGNATURES[cls]
        geo = sig.get("geometry", {})
        ff = geo.get("fat_fraction", (0.0, 0.0))[0] if geo.get("p_fat", 0.0) >= 0.5 else 0.0
        per: dict[str, list[float]] = {}
        for s in sequences:
            comps = sig["signal"].get("t1_in" if s == "t1_opp" else s, {})
            if not comps:
                continue
            core = comps["core"][0] * (abs(1.0 - 2.0 * ff) if s == "t1_opp" else 1.0)
            others = [v[0] for k, v in comps.items() if k not in ("core", "halo", "fill")]
            pattern = max((abs(math.log(o / comps["core"][0])) for o in others), default=0.0)
            per[s] = [math.log(core), pattern]
        feats[cls] = per
    score = {s: 0.0 for s in sequences}
    pairs = 0
    for i, a in enumerate(classes):
        for b in classes[i + 1 :]:
            contrib = {
                s: sum((x - y) ** 2 for x, y in zip(feats[a][s], feats[b][s]))
                for s in sequences
                if s in feats[a] and s in feats[b]
            }
            total = sum(contrib.values())
            if total <= 0:
                continue
            pairs += 1
            for s, v in contrib.items():
                score[s] += v / total
    return {s: score[s] / max(pairs, 1) for s in sequences}


def importance_drops(
    pred_all: Any, pred_without: Mapping[str, Any], test: Any, classes: Sequence[str], n_boot: int, seed: int
) -> dict[str, Any]:
    """Drop in macro AUC when each sequence is removed, on the test cases that have it (paired bootstrap)."""
    from mrfound.finetune.metrics import classification_metrics

    has = {c.case: set(c.sequences) for c in test.cases}
    cols = [f"p_{k}" for k in classes]
    out = {}
    rng = np.random.default_rng(seed)
    for s, pw in pred_without.items():
        cases = [c for c in pred_all["case"] if s in has.get(c, set()) and c in set(pw["case"])]
        if len(cases) < 4:
            continue
        a = pred_all.set_index("case").loc[cases]
        w = pw.set_index("case").loc[cases]
        y = a["label"].tolist()
        pa, pwv = a[cols].to_numpy(float), w[cols].to_numpy(float)
        ma = classification_metrics(y, pa, classes, n_boot=0)
        mw = classification_metrics(y, pwv, classes, n_boot=0)
        drop = (D.value(ma) or float("nan")) - (D.value(mw) or float("nan"))
        boots = []
        for _ in range(min(n_boot, 300)):
            idx = rng.integers(0, len(cases), len(cases))
            yy = [y[i] for i in idx]
            if len(set(yy)) < 2:
                continue
            va = D.value(classification_metrics(yy, pa[idx], classes, n_boot=0))
            vw = D.value(classification_metrics(yy, pwv[idx], classes, n_boot=0))
            if va is not None and vw is not None:
                boots.append(va - vw)
        lo, hi = np.percentile(boots, [2.5, 97.5]).tolist() if len(boots) > 10 else (None, None)
        out[s] = {
            "drop": drop,
            "ci_low": lo,
            "ci_high": hi,
            "n_cases": len(cases),
            "auc_all": D.value(ma),
            "auc_without": D.value(mw),
        }
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (None for fewer than 3 pairs)."""
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return None if r is None or not math.isfinite(r) else float(r)


def plot_importance(drops: Mapping[str, Any], table: Mapping[str, float], path: Path, title: str) -> Path:
    """Bars: measured AUC drop (95 % CI); markers on a second axis: the table's importance."""
    plt = D._plt()
    seqs = [s for s in table if s in drops]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = np.arange(len(seqs))
    v = [drops[s]["drop"] for s in seqs]
    lo = [v[i] - drops[s]["ci_low"] if drops[s]["ci_low"] is not None else 0 for i, s in enumerate(seqs)]
    hi = [drops[s]["ci_high"] - v[i] if drops[s]["ci_high"] is not None else 0 for i, s in enumerate(seqs)]
    ax.bar(
        x, v, 0.6, yerr=[lo, hi], capsize=3, color="#4c72b0", label="measured: macro AUC drop when removed"
    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, seqs)
    ax.set_xlabel("Sequence removed at test time")
    ax.set_ylabel("Drop in macro AUC (fine-tuned model)")
    ax2 = ax.twinx()
    ax2.plot(
        x,
        [table[s] for s in seqs],
        "D",
        color="#dd8452",
        markersize=7,
        label="signature table: share of class separation",
    )
    ax2.set_ylabel("Signature-table importance (share of pairwise separation)")
    ax2.set_ylim(0, max(table.values()) * 1.3 if table else 1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return D.save_figure(fig, path)


def plot_centers(
    series: Mapping[str, Mapping[str, Any]], centers: Sequence[str], path: Path, title: str
) -> Path:
    """Grouped bars per centre (in-distribution probe) + the leave-one-centre-out pooled value."""
    return D.plot_protocol_auc(series, [*centers, "LOCO pooled"], path, title=title)


# --------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from mrfound.finetune.probe import TRAIN_PROTOCOLS

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    p.add_argument("--out", default="results", help="folder of the JSON, markdown and PNG results")
    p.add_argument("--work", default=None, help="folder of cohort, cache and checkpoints (default /tmp/...)")
    p.add_argument("--manifest", default=None, help="use this cohort instead of simulating one")
    p.add_argument("--cases", type=int, default=None, help="override the budget's cohort size")
    p.add_argument("--seed", type=int, default=0, help="seed of cohort, split, models and probes")
    p.add_argument("--centers", default=",".join(FOUR_CENTRES), help="phantom centres (comma-separated)")
    p.add_argument("--workers", type=int, default=None, help="processes for simulation and preprocessing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--foreground",
        choices=FOREGROUND_METHODS,
        default=None,
        help=f"preprocessing foreground threshold (default {PHANTOM_FOREGROUND}, as the README tables)",
    )
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the budget's pretraining steps")
    p.add_argument(
        "--pretrain-warmup",
        type=int,
        default=None,
        help="pretraining warm-up steps (default 5 %% of the steps)",
    )
    p.add_argument(
        "--lesion-crops",
        type=float,
        default=None,
        help="share of pretraining crops centred on the lesion, for all three pretrainings (default 0)",
    )
    p.add_argument(
        "--probe-pooling",
        choices=EMBED_POOLING,
        default=None,
        help="token pooling of the mrfound encoder probes (default mean; MONAI's probe is always mean)",
    )
    p.add_argument(
        "--probe-absent",
        choices=EMBED_ABSENT,
        default=None,
        help="absent sequences in the mrfound encoder probes: no tokens (drop, default) or synthesised by "
        "each model's decoder first (impute)",
    )
    p.add_argument(
        "--probe-train-protocols",
        choices=TRAIN_PROTOCOLS,
        default=None,
        help="train every protocol probe on complete exams (all, default) or on the training cases under "
        "every protocol (each: protocol augmentation; label-fraction, centre and LOCO probes stay on all)",
    )
    p.add_argument(
        "--extra-unlabeled",
        type=int,
        default=0,
        help="simulate this many more unlabeled phantom cases and add them to all three pretrainings (0)",
    )
    p.add_argument(
        "--extra-seed",
        type=int,
        default=None,
        help=f"seed of the extra cases (default --seed + {EXTRA_SEED_OFFSET})",
    )
    p.add_argument(
        "--ft-pooling",
        choices=HEAD_POOLING,
        default=None,
        help="token pooling of the fine-tuned classification head, ours and from scratch (default mean)",
    )
    p.add_argument(
        "--ours-sequence-drop",
        type=float,
        default=None,
        help=f"ours' whole-sequence dropout, mae.sequence_drop (default {PRETRAINED_VARIANTS['ours']})",
    )
    p.add_argument(
        "--ours-consistency-weight",
        type=float,
        default=None,
        help="ours' cross-view consistency term, mae.consistency_weight (default 0: off)",
    )
    p.add_argument(
        "--ours-mask-mode",
        choices=MASK_MODES,
        default=None,
        help="how ours hides patches, mae.mask_mode (default random: per token; tube: per position)",
    )
    p.add_argument(
        "--ft-min-steps",
        type=int,
        default=None,
        help="fewest fine-tuning steps of any run, every method alike (full budget 60; small label "
        "fractions get this many instead of ft_epochs passes)",
    )
    p.add_argument(
        "--extra-manifest",
        default=None,
        help="a manifest of unlabeled cases to add to all three pretrainings (instead of --extra-unlabeled)",
    )
    p.add_argument(
        "--pretrained",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="use this `mrfound pretrain` checkpoint for variant NAME (ours or plain_mae) instead of "
        "pretraining it; its recorded recipe and data must be this run's (checked); repeatable",
    )
    args = p.parse_args(argv)
    if args.extra_manifest and args.extra_unlabeled:
        p.error("give --extra-unlabeled or --extra-manifest, not both")
    args.pretrained = _pretrained_specs(p, args.pretrained)
    if args.pretrain_steps is not None and args.pretrain_steps < 1:
        p.error(f"--pretrain-steps must be >= 1, got {args.pretrain_steps}")
    if args.pretrain_warmup is not None and args.pretrain_warmup < 0:
        p.error(f"--pretrain-warmup must be >= 0, got {args.pretrain_warmup}")
    if args.ours_sequence_drop is not None and not 0.0 < args.ours_sequence_drop <= 1.0:
        p.error(f"--ours-sequence-drop must be in (0, 1], got {args.ours_sequence_drop}")
    if args.ours_consistency_weight is not None and not (
        math.isfinite(args.ours_consistency_weight) and args.ours_consistency_weight >= 0
    ):
        p.error(f"--ours-consistency-weight must be >= 0, got {args.ours_consistency_weight}")
    if args.ft_min_steps is not None and args.ft_min_steps < 1:
        p.error(f"--ft-min-steps must be >= 1, got {args.ft_min_steps}")
    if args.lesion_crops is not None and not 0.0 <= args.lesion_crops <= 1.0:
        p.error(f"--lesion-crops must be in [0, 1], got {args.lesion_crops}")
    if args.extra_unlabeled < 0:
        p.error(f"--extra-unlabeled must be >= 0, got {args.extra_unlabeled}")
    if args.extra_seed is not None and args.extra_seed == args.seed:
        p.error("--extra-seed must differ from --seed (the extra cases would repeat the cohort's)")

    import torch

    from mrfound.data.cache import MEMORY_ENV

    if args.threads:
        torch.set_num_threads(args.threads)
    before = os.environ.get(MEMORY_ENV)
    if before is None:  # the repeated training crops read the preprocessing cache from memory
        os.environ[MEMORY_ENV] = "4000"
    try:
        return run(args, argv)
    finally:
        if before is None:
            os.environ.pop(MEMORY_ENV, None)


def _pretrained_specs(p: argparse.ArgumentParser, specs: Sequence[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name not in PRETRAINED_VARIANTS or not path:
            p.error(f"--pretrained must be NAME=CHECKPOINT with NAME in {', '.join(PRETRAINED_VARIANTS)}, "
                    f"got {spec!r}")
        if name in out:
            p.error(f"--pretrained {name} given twice")
        out[name] = Path(path)
    return out


BUDGET_OVERRIDES: dict[str, str] = {
    "pretrain_steps": "pretrain_steps",
    "pretrain_warmup": "pretrain_warmup_steps",
    "lesion_crops": "pretrain_lesion_crops",
    "probe_pooling": "probe_pooling",
    "probe_absent": "probe_absent",
    "probe_train_protocols": "probe_train_protocols",
    "ft_pooling": "ft_pooling",
    "ours_sequence_drop": "ours_sequence_drop",
    "ours_consistency_weight": "ours_consistency_weight",
    "ours_mask_mode": "ours_mask_mode",
    "ft_min_steps": "ft_min_steps",
}
"""Command-line option (argparse dest) -> the :class:`Budget` field it overrides when given."""


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    """The benchmark (see the module docstring) for parsed arguments."""
    b = dataclasses.replace(BUDGETS[args.budget])
    if args.cases:
        b.cases = args.cases
    if args.foreground:
        b.foreground = args.foreground
    for arg, field in BUDGET_OVERRIDES.items():  # options given on the command line replace the budget's
        if getattr(args, arg) is not None:
            setattr(b, field, getattr(args, arg))
    requested_mp, b.pretrain_mixed_precision = (
        b.pretrain_mixed_precision,
        resolve_autocast(b.pretrain_mixed_precision),
    )
    stem = "phenotype" if args.budget == "full" else f"phenotype_{args.budget}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or f"/tmp/mrfound_bench/{stem}")
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    T = Timer()
    doc: dict[str, Any] = {
        "benchmark": "phenotype",
        "budget": args.budget,
        **provenance(argv and ["benchmarks/phenotype.py", *argv]),
        "machine_start": machine_info(),
        "seed": args.seed,
        "settings": dataclasses.asdict(b),
        "pretrain_mixed_precision_requested": requested_mp,
    }

    from mrfound.data.manifest import read_manifest
    from mrfound.data.phantom import PhantomConfig, generate_cohort
    from mrfound.data.preprocess import PreprocessConfig

    # cohort -----------------------------------------------------------------------------------------
    t0 = time.time()
    centers = tuple(c.strip() for c in args.centers.split(",") if c.strip())
    if args.manifest:
        manifest_path = Path(args.manifest)
        doc["cohort"] = {"manifest": str(manifest_path)}
    else:
        phantom = PhantomConfig(centers=centers, balanced=True, spacing_scale=b.spacing_scale)
        cohort_dir = work / f"cohort_{_key([b.cases, args.seed, centers, b.spacing_scale])}"
        manifest_path = cohort_dir / "manifest.csv"
        if not manifest_path.is_file():
            T.say(f"simulating {b.cases} cases ({', '.join(centers)}; balanced classes)")
            generate_cohort(cohort_dir, b.cases, args.seed, phantom, workers=args.workers)
        doc["cohort"] = {
            "simulated": True,
            "cases": b.cases,
            "centers": list(centers),
            "balanced_classes": True,
            "spacing_scale": b.spacing_scale,
            "seed": args.seed,
        }
    cohort = read_manifest(manifest_path)
    classes = list(cohort.vocabulary.classes)
    malignant = list(cohort.vocabulary.malignant)
    seqs = list(cohort.vocabulary.sequences)
    train_m, test_m = D.split_cohort(cohort, b.test_fraction, args.seed)
    train_csv = train_m.to_csv(work / "train.csv")
    test_m.to_csv(work / "test.csv")
    pp = PreprocessConfig(spacing=b.spacing, roi_size=b.roi_size, foreground=b.foreground)
    D.fill_cache(cohort, pp, cache, args.workers)
    T.add("cohort_and_preprocessing", time.time() - t0)
    doc["split"] = {
        "train": [c.case for c in train_m.cases],
        "test": [c.case for c in test_m.cases],
        "n_train": len(train_m),
        "n_test": len(test_m),
        "grouped_by": "subject",
        "stratified_by": "class",
        "seed": args.seed,
    }
    doc["cohort"]["table"] = D.cohort_table(cohort)
    T.say(f"train {len(train_m)} / test {len(test_m)} cases")
    protocols = _resolve_protocols(b.protocols, seqs)
    extra_csv, pretrain_m = None, train_m
    if args.extra_unlabeled or args.extra_manifest:
        from mrfound.pretrain.run import load_cohort

        t0 = time.time()
        if args.extra_manifest:
            extra_csv = Path(args.extra_manifest).resolve()
            extra = read_manifest(extra_csv)
            D.fill_cache(extra, pp, cache, args.workers)
            doc["extra_unlabeled"] = {
                "manifest": str(extra_csv),
                "cases": len(extra),
                "used_for": "pretraining only (ours, plain MAE, MONAI MAE); labels unused",
            }
        else:
            extra_csv = extra_unlabeled(args, b, centers, work, cache, pp, doc)
        # pooled as `mrfound pretrain --manifest A --manifest B` pools them (case ids unique across both)
        pretrain_m = load_cohort([str(train_csv), str(extra_csv)], train_m.vocabulary)
        T.add("extra_unlabeled", time.time() - t0)
        T.say(f"pretraining data: {len(train_m)} training + {len(pretrain_m) - len(train_m)} unlabeled cases")

    # pretraining ------------------------------------------------------------------------------------
    ckpt: dict[str, Path] = {}
    if args.pretrained:
        doc["pretrained_checkpoints"] = {}
    for name, sd in PRETRAINED_VARIANTS.items():
        sd = b.ours_sequence_drop if name == "ours" else sd
        cw = b.ours_consistency_weight if name == "ours" else 0.0
        mm = b.ours_mask_mode if name == "ours" else "random"
        if name in args.pretrained:
            expected = _pretrain_config(train_csv, extra_csv, cache, b, args.seed, sd, cw, mm)
            ckpt[name], info = reuse_pretrained(
                name,
                args.pretrained[name],
                expected,
                {c.case for c in pretrain_m.cases},
                {c.subject for c in test_m.cases},
            )
            doc["pretrained_checkpoints"][name] = info
            run_dir = Path(ckpt[name]).parent
            T.say(f"{name}: checkpoint {ckpt[name]} (recipe and data checked)")
            T.add(f"pretrain_{name}", recorded_seconds(run_dir))
            continue
        T.say(f"pretraining {name} ({b.pretrain_steps} steps, sequence_drop {sd})")
        ckpt[name], sec = pretrain_mrfound(name, train_csv, work, cache, b, args.seed, sd, extra_csv, cw, mm)
        T.add(f"pretrain_{name}", sec)
    T.say(f"pretraining MONAI channel-stacked MAE ({b.pretrain_steps} steps)")
    monai_model, sec = pretrain_monai(pretrain_m, work, cache, pp, b, args.seed)
    T.add("pretrain_monai_mae", sec)

    # features and probes ----------------------------------------------------------------------------
    from mrfound.finetune.common import load_encoder
    from mrfound.finetune.probe import encoder_feature_fn

    probes: dict[str, Any] = {}
    for fs in FEATURE_SETS:
        t0 = time.time()
        if fs == "radiomics":
            fn = radiomics_protocol_fn(pp, cache)
        elif fs == "monai_mae":
            fn = encoder_feature_fn(monai_model, pp, cache_dir=cache, batch_size=b.batch_size)
        else:
            src = load_encoder(
                str(ckpt["ours" if fs == "random_init" else fs]),
                random_init=fs == "random_init",
                seed=args.seed,
                with_decoder=b.probe_absent == "impute",
            )
            fn = encoder_feature_fn(
                src.encoder,
                src.preprocess,
                cache_dir=cache,
                batch_size=b.batch_size,
                pooling=b.probe_pooling,
                completer=src.completer,
            )
        T.say(f"probe: {LABELS[fs]}")
        tr, te, excl, aug = feature_tables(
            fn, train_m, test_m, protocols, seqs, augment=b.probe_train_protocols == "each"
        )
        probes[fs] = probe_suite(tr, te, excl, protocols, classes, malignant, b, args.seed, augment=aug)
        T.add(f"probe_{fs}", time.time() - t0)
        T.say(
            "   macro AUC "
            + ", ".join(
                f"{p} {D.fmt_metric(probes[fs]['protocols'][p], ci=False)}" for p in D.NAMED_PROTOCOLS
            )
        )

    # fine-tuning ------------------------------------------------------------------------------------
    n_train_lab = sum(1 for c in train_m.cases if c.label)
    finetuned: dict[str, dict[str, Any]] = {"ft_ours": {}, "ft_scratch": {}}
    imp_protocols = [f"without_{s}" for s in seqs]
    best_pred = None
    for variant in ("ft_ours", "ft_scratch"):
        for f in b.ft_fractions:
            T.say(f"fine-tune {LABELS[variant]}, {100 * f:g} % labels")
            model, info, sec = finetune_run(
                variant,
                ckpt["ours"],
                train_csv,
                work,
                cache,
                b,
                args.seed,
                f,
                variant == "ft_scratch",
                n_train_lab,
                pooling=b.ft_pooling,
            )
            t1 = time.time()
            evp = list(
                dict.fromkeys([*protocols, *(imp_protocols if variant == "ft_ours" and f == 1.0 else [])])
            )
            metrics, pred = D.classifier_protocol_metrics(
                model,
                test_m,
                pp,
                evp,
                cache_dir=cache,
                n_boot=b.n_boot,
                seed=args.seed,
                batch_size=b.batch_size,
            )
            T.add(f"{variant}_{f:g}", sec + time.time() - t1)
            entry = {**info, "protocols": {p: metrics[p] for p in protocols}, "train_s": round(sec, 1)}
            entry["centers"] = _per_center(
                pred[pred["protocol"] == "all"], _case_table(test_m), classes, malignant
            )
            if variant == "ft_ours" and f == 1.0:
                entry["without"] = {p: metrics[p] for p in imp_protocols}
                best_pred = pred
            finetuned[variant][str(f)] = entry
            T.say(f"   macro AUC all {D.fmt_metric(metrics['all'])}")

    # sequence importance ---------------------------------------------------------------------------
    seq_imp: dict[str, Any] = {}
    if best_pred is not None:
        pa = best_pred[best_pred["protocol"] == "all"]
        pw = {s: best_pred[best_pred["protocol"] == f"without_{s}"] for s in seqs}
        drops = importance_drops(pa, pw, test_m, classes, b.n_boot, args.seed)
        tab = table_importance(seqs, classes)
        common = [s for s in seqs if s in drops]
        seq_imp = {
            "drops": drops,
            "table_importance": tab,
            "spearman_measured_vs_table": spearman(
                [drops[s]["drop"] for s in common], [tab[s] for s in common]
            ),
            "model": "fine-tuned ours, 100 % labels",
        }

    # leave-one-centre-out fine-tuning (full budget) -------------------------------------------------
    loco_ft: dict[str, Any] = {}
    if b.loco_finetune:
        import pandas as pd

        from mrfound.finetune.metrics import classification_metrics

        centers = sorted({c.center for c in test_m.cases})
        for variant in ("ft_ours", "ft_scratch"):
            pooled, folds = [], {}
            for c in centers:
                sub = D.subset_manifest(train_m, lambda k, c=c: k.center != c)
                held = D.subset_manifest(test_m, lambda k, c=c: k.center == c)
                if len(held) < 2:
                    continue
                csv = sub.to_csv(work / f"train_without_{c}.csv")
                T.say(f"leave-one-centre-out: {LABELS[variant]}, test centre {c}")
                n_lab = sum(1 for k in sub.cases if k.label)
                model, info, sec = finetune_run(
                    f"{variant}_loco_{c}",
                    ckpt["ours"],
                    csv,
                    work,
                    cache,
                    b,
                    args.seed,
                    1.0,
                    variant == "ft_scratch",
                    n_lab,
                    max_steps=b.loco_ft_max_steps,
                    pooling=b.ft_pooling,
                )
                m, pred = D.classifier_protocol_metrics(
                    model,
                    held,
                    pp,
                    ["all"],
                    cache_dir=cache,
                    n_boot=0,
                    seed=args.seed,
                    batch_size=b.batch_size,
                )
                T.add(f"loco_{variant}", sec)
                folds[c] = {**m["all"], "n_train": info["n_train"]}
                pooled.append(pred)
            if pooled:
                pr = pd.concat(pooled, ignore_index=True)
                loco_ft[variant] = {
                    "pooled": classification_metrics(
                        pr["label"].tolist(),
                        pr[[f"p_{k}" for k in classes]].to_numpy(float),
                        classes,
                        malignant,
                        n_boot=b.n_boot,
                        seed=args.seed,
                    ),
                    "folds": folds,
                }

    # claims ----------------------------------------------------------------------------------------
    doc["probes"] = probes
    doc["finetune"] = finetuned
    doc["loco_finetune"] = loco_ft
    doc["sequence_importance"] = seq_imp
    doc["claims"] = claims(probes, finetuned, protocols)
    doc["wall_s"] = {**T.times, "total": round(time.time() - T.t0, 1)}
    doc["reused_runs"] = sorted(REUSED)  # trained by an earlier invocation with identical settings
    doc["wall_s_note"] = (
        "stage times of reused runs are their recorded training times; 'total' is this invocation's wall time"
    )
    doc["machine_end"] = machine_info()
    doc["protocol_sequences"] = {p: list(_protocol_seqs(p, seqs)) for p in protocols}

    figures = write_figures(doc, out, stem, protocols, seqs)
    doc["figures"] = figures
    from mrfound.utils.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / f"{stem}.json", D.jsonable(doc))
    atomic_write_text(out / f"{stem}.md", markdown(doc, stem, protocols, seqs))
    T.say(
        f"wrote {out / (stem + '.json')} and {out / (stem + '.md')} in {doc['wall_s']['total'] / 60:.1f} min"
    )
    for line in doc["claims"]["text"]:
        print("  " + line)
    return doc


def extra_unlabeled(
    args: argparse.Namespace,
    b: Budget,
    centers: Sequence[str],
    work: Path,
    cache: Path,
    pp: Any,
    doc: dict[str, Any],
) -> Path:
    """Simulate (or reuse) ``--extra-unlabeled`` cases and cache them; returns their manifest path.
    Records them in ``doc["extra_unlabeled"]``."""
    from mrfound.data.manifest import read_manifest
    from mrfound.data.phantom import PhantomConfig, generate_cohort

    seed = args.seed + EXTRA_SEED_OFFSET if args.extra_seed is None else args.extra_seed
    n = args.extra_unlabeled
    cfg = PhantomConfig(
        centers=tuple(centers),
        balanced=True,
        spacing_scale=b.spacing_scale,
        unlabeled_fraction=1.0,
        id_prefix="u",
    )
    folder = work / f"extra_{_key([n, seed, list(centers), b.spacing_scale, 'u'])}"
    path = folder / "manifest.csv"
    if not path.is_file():
        print(f"simulating {n} extra unlabeled cases (seed {seed})", flush=True)
        generate_cohort(folder, n, seed, cfg, workers=args.workers)
    extra = read_manifest(path)
    D.fill_cache(extra, pp, cache, args.workers)
    doc["extra_unlabeled"] = {
        "cases": n,
        "seed": seed,
        "centers": list(centers),
        "spacing_scale": b.spacing_scale,
        "id_prefix": "u",
        "used_for": "pretraining only (ours, plain MAE, MONAI MAE); labels unused",
    }
    return path


def _case_table(manifest: Any) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {"case": [c.case for c in manifest.cases], "center": [c.center for c in manifest.cases]}
    )


def _protocol_seqs(p: str, seqs: Sequence[str]) -> tuple[str, ...]:
    from mrfound.data.sequences import protocol_sequences

    return protocol_sequences(p, seqs)


def claims(probes: Mapping[str, Any], ft: Mapping[str, Any], protocols: Sequence[str]) -> dict[str, Any]:
    """The two claims of the issue, evaluated on this run's numbers (plainly, with the margins)."""
    missing = [p for p in protocols if p != "all"]
    out: dict[str, Any] = {"text": []}
    for rival in ("random_init", "plain_mae", "monai_mae", "radiomics"):
        diffs = {}
        for p in missing:
            a, r = D.value(probes["ours"]["protocols"].get(p)), D.value(probes[rival]["protocols"].get(p))
            if a is not None and r is not None:
                diffs[p] = a - r
        wins = sum(1 for d in diffs.values() if d > 0)
        out[f"probe_ours_vs_{rival}_missing_protocols"] = {
            "wins": wins,
            "n": len(diffs),
            "mean_difference": float(np.mean(list(diffs.values()))) if diffs else None,
            "differences": diffs,
        }
        if diffs:
            out["text"].append(
                f"probe, missing-sequence protocols: ours beats {LABELS[rival]} in {wins}/{len(diffs)}"
                f" (mean macro-AUC difference {np.mean(list(diffs.values())):+.3f})"
            )
    if "1.0" in ft["ft_ours"] and "1.0" in ft["ft_scratch"]:
        diffs = {}
        for p in missing:
            a = D.value(ft["ft_ours"]["1.0"]["protocols"].get(p))
            r = D.value(ft["ft_scratch"]["1.0"]["protocols"].get(p))
            if a is not None and r is not None:
                diffs[p] = a - r
        if diffs:
            wins = sum(1 for d in diffs.values() if d > 0)
            mean = float(np.mean(list(diffs.values())))
            out["ft_ours_vs_scratch_missing_protocols"] = {
                "wins": wins,
                "n": len(diffs),
                "mean_difference": mean,
                "differences": diffs,
            }
            out["text"].append(
                f"fine-tuned (100 % labels), missing-sequence protocols: ours beats supervised "
                f"from scratch in {wins}/{len(diffs)} (mean macro-AUC difference {mean:+.3f})"
            )
    ten = ft["ft_ours"].get("0.1", {}).get("protocols", {}).get("all")
    full_scratch = ft["ft_scratch"].get("1.0", {}).get("protocols", {}).get("all")
    a, s = D.value(ten), D.value(full_scratch)
    if a is not None and s is not None:
        out["ft_ours_10pct_vs_scratch_100pct"] = {
            "ours_10pct": a,
            "scratch_100pct": s,
            "difference": a - s,
            "holds": a >= s,
        }
        verdict = "reaches" if a >= s else f"falls short of, by {s - a:.3f},"
        out["text"].append(
            f"fine-tuned ours with 10 % labels (macro AUC {a:.3f}) {verdict} supervised-from-"
            f"scratch with 100 % labels ({s:.3f})"
        )
    return out


def write_figures(
    doc: Mapping[str, Any], out: Path, stem: str, protocols: Sequence[str], seqs: Sequence[str]
) -> list[str]:
    probes, ft = doc["probes"], doc["finetune"]
    figs = []
    shown = list(D.NAMED_PROTOCOLS) if len(protocols) > 8 else list(protocols)
    series = {f"probe: {LABELS[k]}": v["protocols"] for k, v in probes.items()}
    for k in ("ft_ours", "ft_scratch"):
        if "1.0" in ft[k]:
            series[f"{LABELS[k]} (100 %)"] = ft[k]["1.0"]["protocols"]
    figs.append(
        str(
            D.plot_protocol_auc(
                series,
                shown,
                out / f"{stem}_protocols.png",
                title="Missing-sequence protocols: macro AUC on test cases",
            )
        )
    )
    if len(protocols) > 8:
        singles = [p for p in protocols if p.startswith("only_")]
        figs.append(
            str(
                D.plot_protocol_auc(
                    series,
                    singles,
                    out / f"{stem}_single_sequences.png",
                    title="One sequence available at test time: macro AUC",
                )
            )
        )
    eff = {
        f"{LABELS[k]}": {float(f): e["protocols"]["all"] for f, e in ft[k].items()}
        for k in ("ft_ours", "ft_scratch")
    }
    for k in ("ours", "random_init", "radiomics"):
        eff[f"probe: {LABELS[k]}"] = {float(f): m for f, m in probes[k]["fractions"].items()}
    ref = D.value(ft["ft_scratch"].get("1.0", {}).get("protocols", {}).get("all"))
    figs.append(
        str(
            D.plot_label_efficiency(
                eff,
                out / f"{stem}_label_efficiency.png",
                title="Label efficiency (all sequences, test cases)",
                references={"scratch, 100 % labels": ref},
            )
        )
    )
    centers = sorted(next(iter(probes.values()))["centers"])
    cser = {}
    for k, v in probes.items():
        row = dict(v["centers"])
        if "loco" in v:
            row["LOCO pooled"] = v["loco"]["pooled"]
        cser[f"probe: {LABELS[k]}"] = row
    for k, v in doc.get("loco_finetune", {}).items():
        row = dict(ft[k].get("1.0", {}).get("centers", {}))
        row["LOCO pooled"] = v["pooled"]
        cser[f"{LABELS[k]} (100 %)"] = row
    figs.append(
        str(
            plot_centers(
                cser,
                centers,
                out / f"{stem}_centers.png",
                title="Per test centre (in-distribution) and leave-one-centre-out (pooled)",
            )
        )
    )
    si = doc.get("sequence_importance") or {}
    if si.get("drops"):
        r = si.get("spearman_measured_vs_table")
        figs.append(
            str(
                plot_importance(
                    si["drops"],
                    si["table_importance"],
                    out / f"{stem}_sequence_importance.png",
                    title="Sequence importance (fine-tuned ours) vs the signature table"
                    + (f"; Spearman {r:.2f}" if r is not None else ""),
                )
            )
        )
    return [Path(f).name for f in figs]


def _width(st: Mapping[str, Any]) -> str:
    o = st.get("model_overrides") or {}
    return f"{o.get('embed_dim', 192)} wide, {o.get('depth', 6)} blocks"


def _f3(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ci_note(doc: Mapping[str, Any]) -> str:
    """How wide the measured CIs are: mean half-width of the probes' macro-AUC CIs under ``all``."""
    widths = [
        (m["ci_high"] - m["ci_low"]) / 2
        for probe in doc["probes"].values()
        if (m := probe["protocols"].get("all", {}).get("auc_macro", {})).get("ci_high") is not None
        and m.get("ci_low") is not None
    ]
    n = doc["split"]["n_test"]
    if not widths:
        return f"With {n} test cases the 95 % CIs are wide."
    hw = sum(widths) / len(widths)
    return (
        f"With {n} test cases over 8 classes the 95 % CIs are wide (mean half-width {hw:.2f} under "
        "`all`): differences smaller than that are not evidence either way."
    )


def _probe_note(st: Mapping[str, Any]) -> str:
    pooling = st.get("probe_pooling", "mean")
    return {
        "mean": "mean of the tokens",
        "centre": "mean of the tokens in the central half of the ROI",
        "centre_per_sequence": "that central mean per sequence, concatenated",
    }.get(pooling, pooling)


def _train_note(st: Mapping[str, Any]) -> str:
    if st.get("probe_train_protocols", "all") == "each":
        return (
            "The protocol probes are trained on the training cases under every protocol (protocol "
            "augmentation), the label-fraction, per-centre and leave-one-centre-out probes on complete "
            "exams. "
        )
    return ""


def _absent_note(st: Mapping[str, Any]) -> str:
    if st.get("probe_absent", "drop") == "impute":
        return "synthesised from the kept ones by each model's own decoder before encoding"
    return "absent"


def markdown(doc: Mapping[str, Any], stem: str, protocols: Sequence[str], seqs: Sequence[str]) -> str:
    probes, ft = doc["probes"], doc["finetune"]
    m = doc["machine_start"]
    st = doc["settings"]
    lines = [
        f"# Phenotype benchmark ({doc['budget']} budget)\n",
        f"Command: `{doc['command']}`  \nDate: {doc['date']}  \nGit commit: {doc['git_commit']}  \n"
        f"Machine: {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, load average at start "
        f"{m['load_average_1_5_15min']}, at end {doc['machine_end']['load_average_1_5_15min']}; "
        f"torch {m['torch']}  \nWall time: {doc['wall_s']['total'] / 60:.1f} min; seed {doc['seed']}\n",
        f"Cohort: {doc['split']['n_train']} training / {doc['split']['n_test']} test cases (split by "
        "subject, "
        f"stratified by class). Model: `tiny` encoder ({_width(st)}) on {st['roi_size']}^3 "
        f"ROIs at "
        f"{st['spacing']} mm, patch {st['patch_size']}; pretraining {st['pretrain_steps']} steps of batch "
        f"{st['batch_size']} (lr {st['pretrain_lr']}"
        f"{_autocast_note(st)}"
        f") for every pretrained variant; whole-sequence dropout (`mae.sequence_drop`) "
        f"{st.get('ours_sequence_drop', PRETRAINED_VARIANTS['ours']):g} for ours, 0 for plain MAE"
        f"{_ours_recipe_note(st)}. "
        "Fine-tuning (ours and "
        f"from scratch alike): {st['ft_epochs']:g} epochs over the labels used, {st['ft_min_steps']}-"
        f"{st['ft_max_steps']} steps, lr {st['ft_lr']}, sequence dropout {st['sequence_dropout']}, "
        f"head pooling {st.get('ft_pooling', 'mean')}, "
        "class-balanced loss; layer-wise LR decay 0.75 for the pretrained encoder, none from scratch. "
        "Metrics: macro one-vs-rest AUC on the test cases with 95 % bootstrap CI.\n",
        "## Claims\n",
        *[f"- {t}" for t in doc["claims"]["text"]],
        "",
        "How to read this: the probes train a logistic regression on frozen encoder features"
        f" ({_probe_note(st)}) of lesion-centred ROIs with every sequence, then score the test cases with "
        f"the protocol's sequences only (the others {_absent_note(st)} for the multi-sequence encoders, "
        "zero-filled for the channel-stacked MONAI model, whose tokens are mean-pooled, replaced by training"
        " means for radiomics). Pretraining used the training "
        "cases only (no test image, no label); leave-one-centre-out probes train on the other centres' "
        f"training cases and test on the held-out centre's test cases. {_train_note(st)}{_ci_note(doc)} "
        "The phantom is a simulator whose classes differ mainly in per-sequence lesion-to-"
        "liver contrast and enhancement pattern, which hand-crafted intensity statistics capture "
        "directly; it says nothing about real anatomy, scanners or pathology beyond what the signature "
        "table encodes.\n",
        "## Missing-sequence protocols\n",
    ]
    shown = list(protocols)
    rows = [
        [LABELS[k], *[D.fmt_metric(v["protocols"].get(p, {}), ci=len(shown) <= 8) for p in shown]]
        for k, v in probes.items()
    ]
    for k in ("ft_ours", "ft_scratch"):
        if "1.0" in ft[k]:
            rows.append(
                [
                    f"{LABELS[k]} (100 %)",
                    *[D.fmt_metric(ft[k]["1.0"]["protocols"].get(p, {}), ci=len(shown) <= 8) for p in shown],
                ]
            )
    if len(shown) > 8:  # transpose: one row per protocol
        heads = ["protocol", *[r[0] for r in rows]]
        lines.append(D.md_table(heads, [[p, *[r[i + 1] for r in rows]] for i, p in enumerate(shown)]))
    else:
        lines.append(D.md_table(["model", *shown], rows))
    lines.append(f"\n![protocols]({stem}_protocols.png)\n")
    if len(shown) > 8:
        lines.append(f"![single sequences]({stem}_single_sequences.png)\n")
    lines.append("## Label efficiency (all sequences)\n")
    fr = sorted(
        {float(f) for k in ("ft_ours", "ft_scratch") for f in ft[k]}
        | {float(f) for v in probes.values() for f in v["fractions"]}
    )
    rows = []
    for k in ("ft_ours", "ft_scratch"):
        rows.append(
            [
                LABELS[k],
                *[D.fmt_metric(ft[k][str(f)]["protocols"]["all"]) if str(f) in ft[k] else "-" for f in fr],
            ]
        )
    for k, v in probes.items():
        rows.append(
            [
                f"probe: {LABELS[k]}",
                *[D.fmt_metric(v["fractions"][str(f)]) if str(f) in v["fractions"] else "-" for f in fr],
            ]
        )
    # the probes' training-case count per fraction (at least one case per class, so small fractions of a
    # small cohort can coincide)
    first = next(iter(probes.values()))
    n_probe = {k: v.get("n_train", first.get("n_train")) for k, v in first["fractions"].items()}
    heads = [f"{100 * f:g} %" + (f" (probe n={n_probe[str(f)]})" if n_probe.get(str(f)) else "") for f in fr]
    lines += [
        D.md_table(["model", *heads], rows),
        f"\n![label efficiency]({stem}_label_efficiency.png)\n",
        "## Centres\n",
        "In-distribution probe per test centre, and leave-one-centre-out (train on the other centres' "
        "training cases, test on the held-out centre's test cases; pooled over folds):\n",
    ]
    centers = sorted(next(iter(probes.values()))["centers"])
    rows = []
    for k, v in probes.items():
        rows.append(
            [
                f"probe: {LABELS[k]}",
                *[D.fmt_metric(v["centers"].get(c, {}), ci=False) for c in centers],
                D.fmt_metric(v.get("loco", {}).get("pooled", {})),
                " / ".join(
                    D.fmt_metric(v.get("loco", {}).get("folds", {}).get(c, {}), ci=False) for c in centers
                ),
            ]
        )
    for k, v in doc.get("loco_finetune", {}).items():
        rows.append(
            [
                f"{LABELS[k]} (100 %)",
                *[D.fmt_metric(ft[k]["1.0"]["centers"].get(c, {}), ci=False) for c in centers],
                D.fmt_metric(v["pooled"]),
                " / ".join(D.fmt_metric(v["folds"].get(c, {}), ci=False) for c in centers),
            ]
        )
    lines += [
        D.md_table(["model", *centers, "LOCO pooled", "LOCO per fold (" + " / ".join(centers) + ")"], rows),
        f"\n![centres]({stem}_centers.png)\n",
    ]
    si = doc.get("sequence_importance") or {}
    if si.get("drops"):
        lines += [
            "## Sequence importance\n",
            f"{si['model']}: macro AUC with all sequences minus without the sequence, on the test cases that "
            "have it (95 % paired-bootstrap CI), next to the signature table's share of pairwise class "
            f"separation carried by the sequence. Spearman rank correlation: "
            f"{_f3(si['spearman_measured_vs_table'])}.\n",
            D.md_table(
                ["sequence", "AUC drop [95 % CI]", "n cases", "table importance"],
                [
                    [
                        s,
                        f"{d['drop']:+.3f}"
                        + (f" [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]" if d["ci_low"] is not None else ""),
                        d["n_cases"],
                        f"{si['table_importance'][s]:.3f}",
                    ]
                    for s, d in si["drops"].items()
                ],
            ),
            f"\n![sequence importance]({stem}_sequence_importance.png)\n",
        ]
    lines += [
        "## Wall time (s)\n",
        D.md_table(["stage", "seconds"], [[k, v] for k, v in doc["wall_s"].items()]),
    ]
    if doc.get("reused_runs"):
        lines.append(
            f"\nRuns reused from an earlier invocation with identical settings (their recorded training "
            f"times are listed; 'total' is this invocation's wall time): {', '.join(doc['reused_runs'])}.\n"
        )
    for name, info in doc.get("pretrained_checkpoints", {}).items():
        lines.append(
            f"\n{name} was pretrained beforehand (`--pretrained`; recipe, data and test-subject exclusion "
            f"checked) by: `{info.get('command')}`\n"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
