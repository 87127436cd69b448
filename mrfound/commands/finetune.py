"""``mrfound finetune``: fine-tune a classification or segmentation head on a pretrained encoder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = "fine-tune a classification or segmentation head"
EXAMPLES = """examples:
  mrfound finetune --task classify --checkpoint runs/pre/final --manifest cohort/manifest.csv --out runs/cls
  mrfound finetune --task classify --checkpoint runs/pre/final --manifest train.csv --labels-fraction 0.1 \\
      --sequence-dropout 0.3 --steps 500 --out runs/cls10
  mrfound finetune --task classify --checkpoint runs/pre/final --from-scratch --manifest train.csv \\
      --out runs/scratch
  mrfound finetune --task segment --checkpoint runs/pre/final --manifest chaos/manifest.csv \\
      --epochs 50 --out runs/seg
  mrfound finetune --config ft.yaml --set layer_decay=0.65 --out runs/ft2

Classification trains on lesion-centred ROIs with class-balanced cross-entropy (--balance sampler for
class-balanced resampling) and layer-wise LR decay; --sequence-dropout p removes each available sequence
with probability p during training (at least one kept; 0.25 for classification by default, which also
trains the per-sequence head's stand-ins for absent sequences). The classification head pools the central
tokens of the lesion ROI per sequence (--pooling). Segmentation trains on random body crops plus a
lesion-centred crop per case with MONAI DiceCE on {background, liver, lesion} (mask label 3 "other
lesions" counts as lesion) and validates by sliding-window inference (Dice, HD95 in mm).
Validation: --val-manifest, or --val-fraction of the subjects held out (stratified; default 0.2; 0 = none).
Outputs in RUN: final/ (checkpoint loadable by mrfound.load_pretrained, knows its head and classes),
split.csv, val_metrics.json, val_predictions.csv (classify) or val_segmentation.csv (segment),
config.json, log.jsonl, tb/. Multi-process: accelerate launch -m mrfound finetune ... (see mrfound pretrain).
"""

_FLAGS = (
    "task",
    "checkpoint",
    "manifest",
    "val_manifest",
    "val_fraction",
    "labels_fraction",
    "from_scratch",
    "model",
    "epochs",
    "steps",
    "batch_size",
    "lr",
    "min_lr",
    "weight_decay",
    "warmup_steps",
    "layer_decay",
    "freeze_encoder",
    "head_only_steps",
    "sequence_dropout",
    "balance",
    "pooling",
    "head_dropout",
    "label_smoothing",
    "feature_size",
    "skip_source",
    "sw_batch_size",
    "val_max_cases",
    "spacing",
    "samples_per_case",
    "background_crops",
    "intensity_augment",
    "organ_augment",
    "spatial_augment",
    "sw_overlap",
    "cache_dir",
    "eval_every",
    "n_boot",
    "seed",
    "mixed_precision",
    "grad_accum",
    "ema",
    "num_workers",
    "log_every",
    "save_every",
    "resume",
    "cpu",
    "out",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options (a flag left out keeps the --config file's value or the default)."""
    from mrfound.models.config import HEAD_POOLING, SKIP_SOURCES

    g = p.add_argument_group("task and data")
    g.add_argument("--task", choices=("classify", "segment"), help="classify (default) or segment")
    g.add_argument(
        "--checkpoint", help="pretrained checkpoint (folder, registry name, hf://owner/repo) or random:<size>"
    )
    g.add_argument("--manifest", help="training manifest CSV (labels for classify, masks for segment)")
    g.add_argument("--val-manifest", help="validation manifest CSV (default: hold out --val-fraction)")
    g.add_argument("--val-fraction", type=float, help="share of subjects held out for validation (0.2)")
    g.add_argument(
        "--labels-fraction",
        type=float,
        help="share of labelled training cases used, stratified and seeded (1.0)",
    )
    g.add_argument(
        "--from-scratch",
        action="store_true",
        default=None,
        help="same architecture from random weights (supervised baseline)",
    )
    g.add_argument("--model", help="registry size for --from-scratch without --checkpoint (tiny)")
    g.add_argument("--cache-dir", help="preprocessing cache (default RUN/cache)")
    g.add_argument("--spacing", type=float, help="grid spacing in mm (default: the checkpoint's)")
    t = p.add_argument_group("training")
    t.add_argument("--out", help="run folder")
    t.add_argument("--epochs", type=float, help="passes over the training items (sets --steps)")
    t.add_argument("--steps", type=int, help="optimizer steps (300)")
    t.add_argument("--batch-size", type=int, help="cases per process per micro-batch (8)")
    t.add_argument("--lr", type=float, help="head learning rate; the encoder's decays per layer (5e-4)")
    t.add_argument("--min-lr", type=float, help="final learning rate of the cosine decay (1e-6)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (0.05)")
    t.add_argument("--warmup-steps", type=int, help="linear warm-up steps (5%% of steps)")
    t.add_argument("--layer-decay", type=float, help="layer-wise LR decay, 1 = off (0.75)")
    t.add_argument("--freeze-encoder", action="store_true", default=None, help="train the head only")
    t.add_argument(
        "--head-only-steps",
        type=int,
        help="train only the head for the first N steps, then the whole model "
        "(linear-probe-then-fine-tune; 0)",
    )
    t.add_argument(
        "--sequence-dropout",
        type=float,
        help="training-time sequence removal probability (classify 0.25, segment 0)",
    )
    t.add_argument("--balance", choices=("loss", "sampler", "none"), help="class balancing (loss)")
    t.add_argument(
        "--pooling",
        choices=HEAD_POOLING,
        help="classification pooling: the central half of the lesion ROI averaged per sequence, concatenated "
        "(centre_per_sequence, default), mean of all tokens (mean), that central mean over all sequences "
        "(centre), or attention",
    )
    t.add_argument("--head-dropout", type=float, help="dropout before the classification layer (0)")
    t.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (0)")
    t.add_argument("--feature-size", type=int, help="segmentation decoder width at full resolution (16)")
    t.add_argument(
        "--skip-source",
        choices=SKIP_SOURCES,
        help="segmentation decoder skips: a conv pyramid over the image (image, default) or encoder blocks "
        "(tokens, UNETR)",
    )
    t.add_argument("--samples-per-case", type=int, help="random crops per case per epoch, segment (2)")
    t.add_argument(
        "--background-crops",
        type=float,
        help="share of the random crops centred anywhere in the volume, air included, segment (0)",
    )
    t.add_argument(
        "--intensity-augment",
        type=float,
        help="probability of a random gamma and gain per sequence on a training crop, both tasks (0)",
    )
    t.add_argument(
        "--organ-augment",
        type=float,
        help="probability of a random gain (0.35-1.5) on the liver of a training crop, segment (0)",
    )
    t.add_argument(
        "--spatial-augment",
        type=float,
        help="probability of a random rotation (+-15 deg per axis) and zoom (0.85-1.15) of a training crop "
        "with its mask, both tasks (0)",
    )
    t.add_argument("--sw-overlap", type=float, help="sliding-window overlap for validation (0.25)")
    t.add_argument("--sw-batch-size", type=int, help="sliding windows per forward pass (4)")
    t.add_argument("--val-max-cases", type=int, help="validate on at most this many held-out cases (all)")
    t.add_argument("--eval-every", type=int, help="steps between validations, 0 = end only (0)")
    t.add_argument("--n-boot", type=int, help="bootstrap resamples of the validation CIs (200)")
    t.add_argument("--seed", type=int, help="seed of init, split, label subset and data order (0)")
    t.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), help="autocast precision (no)")
    t.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (1)")
    t.add_argument("--ema", type=float, help="EMA decay of the weights, exported when set")
    t.add_argument("--num-workers", type=int, help="DataLoader workers per process (0)")
    t.add_argument("--log-every", type=int, help="steps between log entries (10)")
    t.add_argument("--save-every", type=int, help="steps between training-state checkpoints, 0 = end (0)")
    t.add_argument(
        "--resume", action="store_true", default=None, help="continue RUN from its newest checkpoint"
    )
    t.add_argument("--cpu", action="store_true", default=None, help="train on CPU even with a GPU")
    c = p.add_argument_group("configuration")
    c.add_argument("--config", help="YAML or JSON file with FinetuneConfig keys")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    from mrfound.data.guard import add_on_error_argument

    add_on_error_argument(g)


def config_from_args(args: argparse.Namespace) -> Any:
    """Resolve the :class:`FinetuneConfig`: defaults < --config < --set < explicit flags.

    Paths are made absolute so the saved config can be rerun from anywhere.
    """
    from mrfound.finetune.config import RANDOM_PREFIX, FinetuneConfig
    from mrfound.pretrain.config import apply_overrides, load_config_file, parse_set_options

    cfg = FinetuneConfig()
    if getattr(args, "config", None):
        cfg = apply_overrides(cfg, load_config_file(args.config), source=str(args.config))
    sets = parse_set_options(getattr(args, "set", None))
    if sets:
        cfg = apply_overrides(cfg, sets, source="--set")
    explicit = {k: getattr(args, k) for k in _FLAGS if getattr(args, k, None) is not None}
    if explicit:
        cfg = apply_overrides(cfg, explicit, source="command line")
    for key in ("manifest", "val_manifest", "out", "cache_dir"):
        value = getattr(cfg, key)
        if value:
            setattr(cfg, key, str(Path(value).expanduser().resolve()))
    if (
        cfg.checkpoint
        and not cfg.checkpoint.startswith((RANDOM_PREFIX, "hf://"))
        and Path(cfg.checkpoint).exists()
    ):
        cfg.checkpoint = str(Path(cfg.checkpoint).resolve())
    cfg.validate()
    return cfg


def _check_manifests(cfg: Any, on_error: str) -> None:
    """Check --manifest / --val-manifest and their files before any output, with the model's vocabulary.

    With ``skip``, bad rows go to RUN/rejected.csv (RUN/val_rejected.csv) and the run uses RUN/clean.csv.
    """
    from mrfound.data.guard import checked_manifest
    from mrfound.data.sequences import Vocabulary
    from mrfound.finetune.config import RANDOM_PREFIX

    ckpt = cfg.checkpoint or f"{RANDOM_PREFIX}{cfg.model}"
    if ckpt.startswith(RANDOM_PREFIX):
        from mrfound.models.registry import get_model_config

        enc = get_model_config(ckpt[len(RANDOM_PREFIX) :], **dict(cfg.model_overrides))
        vocab = Vocabulary(sequences=enc.sequences)
    else:  # the checkpoint's vocabulary, from its config.json (the weights are loaded later, once)
        from mrfound.models.checkpoint import read_config, resolve_checkpoint

        ck = read_config(resolve_checkpoint(ckpt))
        voc = ck.get("vocabulary")
        vocab = Vocabulary.from_dict(voc) if voc else Vocabulary(sequences=tuple(ck["encoder"]["sequences"]))
    for key, prefix in (("manifest", ""), ("val_manifest", "val_")):
        if getattr(cfg, key):
            m = checked_manifest(
                getattr(cfg, key), on_error=on_error, out_dir=cfg.out, vocabulary=vocab, prefix=prefix
            )
            setattr(cfg, key, str(m.path))


def run(args: argparse.Namespace) -> int:
    from mrfound.finetune.classify import finetune_classifier
    from mrfound.finetune.segment import finetune_segmenter

    cfg = config_from_args(args)
    _check_manifests(cfg, getattr(args, "on_error", "raise"))
    summary = finetune_classifier(cfg) if cfg.task == "classify" else finetune_segmenter(cfg)
    m = summary.get("val_metrics")
    if m and cfg.task == "classify" and m.get("n_cases"):
        auc, bal = m["auc_macro"]["value"], m["balanced_accuracy"]["value"]
        print(
            f"validation ({m['n_cases']} cases): macro AUC {_f(auc)}, balanced accuracy {_f(bal)}, "
            f"F1 {_f(m['f1_macro']['value'])}, kappa {_f(m['kappa']['value'])}"
        )
    elif m and cfg.task == "segment":
        print(
            "validation ({} cases): liver Dice {} HD95 {} mm, lesion Dice {} HD95 {} mm".format(
                m["n_cases"],
                _f(m["liver"]["dice"]),
                _f(m["liver"]["hd95"]),
                _f(m["lesion"]["dice"]),
                _f(m["lesion"]["hd95"]),
            )
        )
    print(f"{summary['n_train']} training cases, {summary['steps']} steps; checkpoint: {summary['final']}")
    if m is None:
        print(json.dumps({"train": summary["train_result"]}))
    return 0


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
