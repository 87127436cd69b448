"""``mrfound evaluate``: score a predictions CSV against a labelled manifest (DESIGN §7 metrics)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "score predictions against a labelled manifest"
EXAMPLES = """examples:
  mrfound evaluate --predictions out/pred/predictions.csv --manifest cohort/test.csv --out out/eval
  mrfound evaluate --predictions out/probe/predictions.csv --manifest cohort/manifest.csv \\
      --out out/eval --n-boot 200

The predictions CSV needs `case` and one `p_<class>` column per class (as `mrfound predict` and
`mrfound probe` write them); a `protocol` column is scored per protocol. Writes OUT/metrics.json
(macro AUC, balanced accuracy, macro F1, kappa, mean(F1, kappa), benign-vs-malignant AUC with bootstrap
95 % CIs, confusion matrix), OUT/roc.png and OUT/confusion.png.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", required=True, help="predictions CSV (case, label_pred, p_<class>...)")
    p.add_argument("--manifest", required=True, help="labelled manifest CSV (the truth)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (default 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--protocol",
        default=None,
        help="protocol drawn in the figures when the predictions have a protocol column "
        "(default: 'all' if present, else the first)",
    )


def run(args: argparse.Namespace) -> int:
    from mrfound.data.manifest import read_manifest
    from mrfound.errors import ConfigError
    from mrfound.finetune import format_command
    from mrfound.finetune.evaluate import evaluate_predictions, plot_confusion, plot_roc, read_predictions
    from mrfound.utils.io import atomic_write_json

    if args.n_boot < 0:
        raise ConfigError(f"--n-boot must be >= 0, got {args.n_boot}")
    preds = read_predictions(args.predictions)
    manifest = read_manifest(args.manifest)
    labels = {c.case: c.label for c in manifest.cases}
    res = evaluate_predictions(
        preds, labels, malignant=manifest.vocabulary.malignant, n_boot=args.n_boot, seed=args.seed
    )
    groups = res["groups"]
    shown = args.protocol or ("all" if "all" in groups else next(iter(groups)))
    if shown not in groups:
        raise ConfigError(f"--protocol {shown!r} is not in the predictions (have: {', '.join(groups)})")
    out = Path(args.out)
    suffix = f" ({shown})" if len(groups) > 1 or "protocol" in preds.columns else ""
    plot_roc(groups[shown]["roc"], out / "roc.png", title=f"ROC curves, one-vs-rest{suffix}")
    plot_confusion(
        groups[shown]["confusion_matrix"],
        res["classes"],
        out / "confusion.png",
        title=f"Confusion matrix{suffix}",
    )
    metrics = {
        "metrics": {k: v for k, v in groups[shown].items() if k != "roc"},
        "shown_protocol": shown,
        "n_predictions": res["n_predictions"],
        "n_labelled": res["n_labelled"],
        "n_unlabelled": res["n_unlabelled"],
        "n_unmatched": res["n_unmatched"],
        "predictions": str(Path(args.predictions).resolve()),
        "manifest": str(Path(args.manifest).resolve()),
        "seed": args.seed,
        "command": format_command("evaluate", args),
    }
    if "protocol" in preds.columns:
        metrics["protocols"] = {g: {k: v for k, v in m.items() if k != "roc"} for g, m in groups.items()}
    atomic_write_json(out / "metrics.json", metrics)
    m = groups[shown]
    where = f" under protocol {shown}" if "protocol" in preds.columns else ""
    print(
        f"{m['n_cases']} labelled cases{where} ({res['n_unmatched']} predictions not in the manifest): "
        f"macro AUC {_fmt(m['auc_macro'])}, balanced accuracy {_fmt(m['balanced_accuracy'])}, "
        f"F1 {_fmt(m['f1_macro'])}, kappa {_fmt(m['kappa'])}, benign/malignant AUC "
        f"{_fmt(m['auc_benign_malignant'])}"
    )
    print(f"wrote {out / 'metrics.json'}, {out / 'roc.png'}, {out / 'confusion.png'}")
    return 0


def _fmt(entry: dict) -> str:
    v = entry.get("value")
    if v is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
