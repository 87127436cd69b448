"""``mrfound predict``: classify (and segment) new cases with a fine-tuned checkpoint."""

from __future__ import annotations

import argparse

HELP = "classify (and segment) new cases with a checkpoint"
EXAMPLES = """examples:
  mrfound predict --checkpoint runs/cls/final --manifest new_patients.csv --out preds/
      writes preds/predictions.csv: case, label_pred, p_<class> per class, sequences_used, roi_source
  mrfound predict --checkpoint runs/seg/final --manifest new_patients.csv --out preds/ --on-error skip
      writes preds/segmentations/<case>.nii.gz (0 background, 1 liver, 2 lesion) on the grid of each
      case's first available sequence (its exact affine and shape), and preds/predictions.csv with
      liver and lesion volumes; unusable cases are listed in preds/skipped.csv instead of stopping
  mrfound predict --checkpoint runs/cls/final --manifest part2.csv --out preds/ --merge
      add part2's rows to an existing preds/predictions.csv (rows of the same cases are replaced)

The classification ROI is centred on the manifest's lesion_x/y/z, else on label 2 of its mask, else on
the body (column roi_source). Cases are streamed (memory does not grow with the manifest). Results are
built in a private temporary folder inside --out and published under a lock file, so concurrent runs
on one --out never mix their files; a failed run publishes nothing.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, help="fine-tuned checkpoint (folder, registry name or hf://owner/repo)"
    )
    p.add_argument("--manifest", required=True, help="manifest CSV of the cases to predict")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="ROI crops per forward pass (8)")
    p.add_argument(
        "--on-error",
        choices=("raise", "skip", "stop"),
        default="raise",
        help="raise: stop with an error at the first unusable case (default; 'stop' is a synonym); skip: "
        "set it aside (listed in OUT/skipped.csv)",
    )
    p.add_argument(
        "--overlap",
        type=float,
        default=None,
        help="sliding-window overlap, segmentation (default: the window stride an odd multiple of half a "
        "patch, as in impute; 0.609 for ROI 32, patch 8)",
    )
    p.add_argument(
        "--largest-component",
        action="store_true",
        help="segmentation: keep only the largest connected liver(+lesion) component, drop islands",
    )
    p.add_argument("--num-workers", type=int, default=0, help="processes preprocessing cases ahead (0)")
    p.add_argument(
        "--merge", action="store_true", help="keep rows of other cases already in OUT/predictions.csv"
    )
    p.add_argument("--device", help="torch device (default cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    from mrfound.commands._inference import model_and_manifest
    from mrfound.errors import ConfigError
    from mrfound.finetune import format_command
    from mrfound.inference import predict_manifest

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, manifest = model_and_manifest(args)
    summary = predict_manifest(
        model,
        manifest,
        args.out,
        batch_size=args.batch_size,
        on_error=args.on_error,
        overlap=args.overlap,
        num_workers=args.num_workers,
        merge=args.merge,
        command=format_command("predict", args),
        largest_component=args.largest_component,
    )
    msg = f"predicted {summary.n_cases} case(s) -> {summary.predictions}"
    if summary.segmentations:
        seg_dir = summary.predictions.parent / "segmentations"
        msg += f" and {len(summary.segmentations)} segmentation(s) in {seg_dir}"
    print(msg)
    if summary.skipped:
        print(
            f"skipped {len(summary.skipped)} case(s), listed in {summary.predictions.parent / 'skipped.csv'}:"
        )
        for case, reason in summary.skipped:
            print(f"  {case}: {reason}")
    return 0
