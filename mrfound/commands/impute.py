"""``mrfound impute``: synthesise a missing sequence for each case with a pretrained autoencoder."""

from __future__ import annotations

import argparse

HELP = "synthesise a missing sequence for each case"
EXAMPLES = """examples:
  mrfound impute --checkpoint runs/pre/final --manifest cohort/manifest.csv --sequence t1_art --out synth/
      writes synth/<case>_t1_art.nii.gz for every case, on the grid of the case's reference sequence (its
      first available sequence, exact affine and shape), and synth/imputed_t1_art.csv
  mrfound impute --checkpoint runs/pre/final --manifest new.csv --sequence "C+A" --out synth/ --on-error skip
  mrfound impute --checkpoint runs/pre/final --manifest m.csv --sequence C+A --out s/ --local-contrast 0.6 20
      keeps 60 % of the synthesis' contrast around its 20 mm Gaussian local mean: a synthesis cannot know
      where the hidden sequence's breath-hold put each vessel, nor how far its contrast bolus had come, and
      such shrinkage, chosen per sequence on cases with the truth, lowers the error. mrfound calibrate
      chooses it and stores it in the checkpoint; impute then applies it unless given --as-decoded

The pretrained masked-modality autoencoder's decoder synthesises the sequence from whatever other
sequences a case has, over the whole volume (sliding window, Gaussian blending). A case that already has
the sequence gets it synthesised from the others (the original is hidden), e.g. to check the quality.
Intensities are in the case's normalised units of preprocessing: 0 and 1 are the sequence's 1st and
99th intensity percentiles inside the body, clipped to [0, 1.5]; the scanner's scale of a missing
sequence is unknown, so none is restored.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, help="pretrained checkpoint (mrfound pretrain RUN/final, name, hf://)"
    )
    p.add_argument("--manifest", required=True, help="manifest CSV of the cases")
    p.add_argument("--sequence", required=True, help="sequence to synthesise (name or alias, e.g. t1_art)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--on-error",
        choices=("raise", "skip", "stop"),
        default="raise",
        help="raise: stop with an error at the first unusable case (default; 'stop' is a synonym); skip: "
        "set it aside",
    )
    lc = p.add_mutually_exclusive_group()
    lc.add_argument(
        "--local-contrast",
        nargs="+",
        type=float,
        metavar="V",
        default=None,
        help="GAIN SIGMA_MM [LEVEL]: keep only GAIN (0-1) of the synthesis' contrast around its Gaussian "
        "local mean of width SIGMA_MM, that mean scaled by LEVEL (default 1) (default: the checkpoint's "
        "calibration of the sequence by mrfound calibrate, if any, else as decoded)",
    )
    lc.add_argument(
        "--as-decoded",
        action="store_true",
        help="ignore the checkpoint's calibration: the synthesis as the decoder gives it",
    )
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: see docs)")
    p.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward pass (4)")
    p.add_argument("--num-workers", type=int, default=0, help="processes preprocessing cases ahead (0)")
    p.add_argument("--device", help="torch device (default cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    from mrfound.commands._inference import model_and_manifest
    from mrfound.errors import ConfigError
    from mrfound.inference import impute_manifest

    if args.sw_batch_size < 1:
        raise ConfigError(f"--sw-batch-size must be >= 1, got {args.sw_batch_size}")
    model, manifest = model_and_manifest(args)
    summary = impute_manifest(
        model,
        manifest,
        args.sequence,
        args.out,
        on_error=args.on_error,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        num_workers=args.num_workers,
        local_contrast="none" if args.as_decoded else (args.local_contrast or "auto"),
    )
    print(
        f"synthesised {len(summary.files)} volume(s) -> {summary.table.parent} (index: {summary.table.name})"
    )
    if summary.local_contrast is None:
        print("local contrast: as decoded")
    else:
        gain, sigma, level = summary.local_contrast
        source = "given" if args.local_contrast else "the checkpoint's calibration"
        print(
            f"local contrast: {gain:g} of it kept around a {sigma:g} mm local mean, scaled by {level:g} "
            f"({source})"
        )
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} case(s):")
        for case, reason in summary.skipped:
            print(f"  {case}: {reason}")
    return 0
