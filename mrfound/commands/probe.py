"""``mrfound probe``: linear-probe a frozen encoder (or radiomics features) under missing-sequence
protocols."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "linear-probe a frozen encoder under missing-sequence protocols"
EXAMPLES = """examples:
  mrfound probe --checkpoint runs/pre/final --train-manifest cohort/manifest.csv --out out/probe
  mrfound probe --checkpoint runs/pre/final --train-manifest train.csv --test-manifest test.csv \\
      --protocols all,no_contrast,t2_only --out out/probe
  mrfound probe --checkpoint runs/pre/final --random-init --train-manifest cohort/manifest.csv \\
      --out out/probe_rand
  mrfound probe --checkpoint random:tiny --train-manifest cohort/manifest.csv --out out/probe_rand_tiny
  mrfound probe --checkpoint runs/pre/final --absent impute --train-manifest cohort/manifest.csv \\
      --out out/probe_imputed
  mrfound probe --features radiomics --train-manifest cohort/manifest.csv --out out/probe_radiomics
  mrfound probe --checkpoint runs/pre/final --train-protocols each --train-manifest train.csv \\
      --test-manifest test.csv --out out/probe_protocol_augmented

The probe (standardise + class-balanced logistic regression, C chosen by inner subject-grouped CV)
is trained on features of all available sequences and tested under each protocol with the sequences
outside the protocol removed (cases left with none are excluded and counted; with --absent impute the
removed and missing sequences are synthesised by the checkpoint's decoder before encoding). With
--train-protocols each it is trained on the training cases under every protocol instead. Without
--test-manifest: stratified subject-grouped K-fold CV (folds stored in OUT/splits.csv).
Protocols: all, no_contrast, t2_only, contrast_only, only_<seq>, without_<seq>; 'named' = the first
four, 'full' (default) = every protocol of the design (named + each single + each leave-one-out).
Writes OUT/metrics.json, OUT/predictions.csv (one row per case and protocol) and OUT/splits.csv.
Features are cached per (checkpoint, manifest, protocol) in --feature-cache.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mrfound.finetune.probe import TRAIN_PROTOCOLS
    from mrfound.models.config import EMBED_ABSENT, EMBED_POOLING

    p.add_argument("--checkpoint", help="checkpoint folder, registry name, hf://owner/repo, or random:<size>")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="probe the checkpoint's architecture at random init (baseline)",
    )
    p.add_argument(
        "--features",
        choices=("encoder", "radiomics"),
        default="encoder",
        help="encoder features (default) or hand-crafted radiomics features (baseline)",
    )
    p.add_argument("--train-manifest", required=True, help="labelled training manifest CSV")
    p.add_argument("--test-manifest", help="labelled test manifest CSV (default: cross-validation)")
    p.add_argument(
        "--protocols", default="full", help="comma list of protocols, or 'named' / 'full' (default full)"
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds without a test manifest (5)")
    p.add_argument("--seed", type=int, default=0, help="seed of folds, inner CV, bootstrap, random init (0)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (1000)")
    p.add_argument(
        "--pooling",
        choices=EMBED_POOLING,
        default="mean",
        help="encoder token pooling: mean of all tokens (default), of the central half of the lesion ROI, "
        "or that central mean per sequence, concatenated (centre_per_sequence; absent sequences imputed "
        "by the probe)",
    )
    p.add_argument(
        "--absent",
        choices=EMBED_ABSENT,
        default="drop",
        help="sequences a case or protocol lacks: left out of the encoder's tokens (drop, default), or "
        "synthesised first by the checkpoint's decoder from the kept ones, so the encoder sees every "
        "sequence (impute; needs a pretraining checkpoint)",
    )
    p.add_argument(
        "--train-protocols",
        choices=TRAIN_PROTOCOLS,
        default="all",
        help="train the probe on complete exams only (all, default), or on the training cases under every "
        "protocol of --protocols (each: protocol augmentation, so the probe has seen each protocol's "
        "features; extracts the training cases under every protocol)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="cases per forward pass (8)")
    p.add_argument(
        "--spacing",
        type=float,
        default=None,
        help="grid spacing in mm for --features radiomics (default 1.5)",
    )
    p.add_argument("--cache-dir", help="preprocessing cache (default $MRFOUND_HOME/cache/preprocess)")
    p.add_argument("--feature-cache", help="feature cache (default $MRFOUND_HOME/cache/features)")
    p.add_argument("--device", help="torch device (default cuda if available, else cpu)")
    p.add_argument("--out", required=True, help="output folder")
    from mrfound.data.guard import add_on_error_argument

    add_on_error_argument(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from mrfound.data.guard import checked_manifest
    from mrfound.errors import ConfigError
    from mrfound.finetune import format_command
    from mrfound.finetune.common import load_encoder
    from mrfound.finetune.probe import encoder_feature_fn, probe_cohort
    from mrfound.models.checkpoint import mrfound_home
    from mrfound.utils.io import atomic_write_json, atomic_write_text

    if args.folds < 2 and not args.test_manifest:
        raise ConfigError(f"--folds must be >= 2, got {args.folds}")
    if args.n_boot < 0 or args.batch_size < 1:
        raise ConfigError("--n-boot must be >= 0 and --batch-size >= 1")
    home = mrfound_home() / "cache"
    cache_dir = args.cache_dir or str(home / "preprocess")
    feature_cache = args.feature_cache or str(home / "features")
    if args.features == "encoder":
        if not args.checkpoint:
            raise ConfigError("--checkpoint is required for --features encoder")
        impute = args.absent == "impute"
        src = load_encoder(args.checkpoint, random_init=args.random_init, seed=args.seed, with_decoder=impute)
        device = (
            torch.device(args.device)
            if args.device
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        (src.completer if impute else src.encoder).to(device)
        feature_fn = encoder_feature_fn(
            src.encoder,
            src.preprocess,
            cache_dir=cache_dir,
            batch_size=args.batch_size,
            device=device,
            pooling=args.pooling,
            completer=src.completer,
        )
        vocab, key, source = src.vocabulary, src.key, src.description
        if args.pooling != "mean":  # other features: their own cache entries
            key, source = f"{key}-pooling-{args.pooling}", f"{source}, {args.pooling} token pooling"
        if impute:
            key, source = f"{key}-absent-impute", f"{source}, absent sequences imputed by its decoder"
    else:
        from mrfound.data.preprocess import PreprocessConfig
        from mrfound.data.sequences import DEFAULT_VOCABULARY
        from mrfound.finetune.radiomics import radiomics_feature_fn

        if args.checkpoint or args.random_init or args.pooling != "mean" or args.absent != "drop":
            raise ConfigError("--features radiomics takes no --checkpoint/--random-init/--pooling/--absent")
        pre = PreprocessConfig(spacing=args.spacing) if args.spacing else PreprocessConfig()
        feature_fn = radiomics_feature_fn(pre, cache_dir=cache_dir)
        vocab = DEFAULT_VOCABULARY
        key = f"radiomics-s{pre.spacing:g}"
        source = f"hand-crafted radiomics features (spacing {pre.spacing:g} mm)"
    # every row and file checked before any output (--on-error skip: bad rows -> OUT/rejected.csv)
    train = checked_manifest(args.train_manifest, on_error=args.on_error, out_dir=args.out, vocabulary=vocab)
    test = (
        checked_manifest(
            args.test_manifest, on_error=args.on_error, out_dir=args.out, vocabulary=vocab, prefix="test_"
        )
        if args.test_manifest
        else None
    )
    res = probe_cohort(
        train,
        feature_fn,
        test_manifest=test,
        protocols=args.protocols,
        sequences=vocab.sequences,
        classes=vocab.classes,
        malignant=vocab.malignant,
        folds=args.folds,
        seed=args.seed,
        n_boot=args.n_boot,
        model_key=key,
        feature_cache=feature_cache,
        source=source,
        train_protocols=args.train_protocols,
    )
    out = Path(args.out)
    doc = res.metrics_json(
        seed=args.seed, command=format_command("probe", args), folds=None if test is not None else args.folds
    )
    atomic_write_text(out / "predictions.csv", res.result.predictions.to_csv(index=False))
    if res.result.splits is not None:
        atomic_write_text(out / "splits.csv", res.result.splits.to_csv(index=False))
    atomic_write_json(out / "metrics.json", doc)
    _print_table(doc)
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.csv'}")
    return 0


def _print_table(doc: dict) -> None:
    print(
        f"{'protocol':<18} {'cases':>5} {'excl':>4}  {'macro AUC':>22}  {'bal.acc':>6}  {'F1':>5}  "
        f"{'kappa':>5}  {'B/M AUC':>7}"
    )
    for name, m in doc["protocols"].items():
        if not m.get("n_cases"):
            print(f"{name:<18} {0:>5} {m.get('n_excluded', 0):>4}  (no case)")
            continue
        auc = m["auc_macro"]
        ci = f"[{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]" if auc.get("ci_low") is not None else ""
        print(
            f"{name:<18} {m['n_cases']:>5} {m['n_excluded']:>4}  {_val(m, 'auc_macro'):>6} {ci:>15}  "
            f"{_val(m, 'balanced_accuracy'):>6}  {_val(m, 'f1_macro'):>5}  {_val(m, 'kappa'):>5}  "
            f"{_val(m, 'auc_benign_malignant'):>7}"
        )


def _val(m: dict, key: str) -> str:
    v = m[key]["value"]
    return "n/a" if v is None else f"{v:.3f}"
