"""``mrfound calibrate``: choose imputation's per-sequence local contrast and store it in the checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mrfound.data.manifest import Manifest

HELP = "calibrate imputation's local contrast per sequence and store it in the checkpoint"
EXAMPLES = """examples:
  mrfound calibrate --checkpoint runs/pre/final --manifest cohort/train.csv
      hides each sequence of about 48 cases in turn, synthesises it from the others as mrfound impute does,
      and keeps per sequence the gain, the width of the local mean and its level with the best liver PSNR
      (the manifest's mask, label > 0); written into runs/pre/final/config.json ('local_contrast'), which
      mrfound impute then applies by default
  mrfound calibrate --checkpoint runs/pre/final --manifest unlabeled.csv --region body --out runs/pre/calib
      label-free (scored in the body), into a calibrated copy of the checkpoint; on the phantom this kept
      the decoder's detail and barely changed the liver's PSNR (README)
  mrfound calibrate --checkpoint runs/pre/final --manifest cohort/train.csv --check cohort/test.csv
      then reports, on up to --cases cases of test.csv the calibration never read, each sequence's liver
      PSNR as decoded and calibrated: whether the choice carries over to unseen patients

Why: a synthesis draws vessels, lesion edges and texture where the source sequences show them, but the
hidden sequence had its own breath-hold, noise and bolus timing, so the least-squares prediction has
less local contrast than the decoder gives; and an under-trained decoder can get a sequence's brightness
wrong alike on every case, which the level corrects. Calibrate on cases you will not evaluate on (e.g.
the pretraining cases); mrfound impute --as-decoded or --local-contrast GAIN SIGMA_MM [LEVEL] override it.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mrfound.calibration import LOCAL_CONTRAST_WIDTHS_MM, REGIONS
    from mrfound.inference import LOCAL_CONTRAST_LEVELS

    p.add_argument("--checkpoint", required=True, help="pretrained checkpoint (mrfound pretrain RUN/final)")
    p.add_argument("--manifest", required=True, help="manifest CSV of cases that have the sequences")
    p.add_argument(
        "--sequences", default=None, help="comma-separated sequences to calibrate (default: all)"
    )
    p.add_argument(
        "--region",
        choices=REGIONS,
        default="liver",
        help="where the error is scored: liver (the manifest's mask, label > 0; default) or body (no masks "
        "needed; on the phantom a body calibration barely changed the liver PSNR: calibrate where you read)",
    )
    p.add_argument("--cases", type=int, default=48, help="cases read, spread over the manifest (48)")
    p.add_argument(
        "--widths-mm",
        nargs="+",
        type=float,
        default=list(LOCAL_CONTRAST_WIDTHS_MM),
        metavar="MM",
        help=f"local-mean widths (default {' '.join(f'{w:g}' for w in LOCAL_CONTRAST_WIDTHS_MM)})",
    )
    p.add_argument(
        "--levels",
        nargs="+",
        type=float,
        default=list(LOCAL_CONTRAST_LEVELS),
        metavar="L",
        help="scales of the local mean to try (default 0.8-1.3 by 0.05; 1 alone: contrast only)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="write a calibrated copy of the checkpoint to this new folder (default: update the "
        "checkpoint's config.json in place; needed for hf:// checkpoints)",
    )
    p.add_argument(
        "--check",
        default=None,
        metavar="MANIFEST",
        help="after storing, report each sequence's PSNR as decoded and calibrated on these held-out cases "
        "(same region; up to --cases of them)",
    )
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: as impute)")
    p.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward pass (4)")
    p.add_argument("--device", help="torch device (default cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    from mrfound.calibration import calibrate_local_contrast, check_store_target, store_calibration
    from mrfound.data.guard import checked_manifest
    from mrfound.errors import ConfigError
    from mrfound.inference import _require
    from mrfound.pipeline import load_pretrained

    if args.cases < 1:
        raise ConfigError(f"--cases must be >= 1, got {args.cases}")
    if args.sw_batch_size < 1:
        raise ConfigError(f"--sw-batch-size must be >= 1, got {args.sw_batch_size}")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise ConfigError(f"--overlap must be in [0, 1), got {args.overlap}")
    check_store_target(args.checkpoint, args.out)
    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    model = load_pretrained(args.checkpoint, device=args.device)
    _require(model, ("autoencoder",), "impute")
    manifest = checked_manifest(args.manifest, on_error="raise", vocabulary=model.vocabulary)
    # read before the long calibration, so that a bad held-out manifest fails first
    check = None
    if args.check is not None:
        check = checked_manifest(args.check, on_error="raise", vocabulary=model.vocabulary)
    res = calibrate_local_contrast(
        model,
        manifest,
        sequences=sequences,
        region=args.region,
        max_cases=args.cases,
        widths_mm=args.widths_mm,
        levels=args.levels,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
    )
    if not res["sequences"]:
        raise ConfigError(
            f"no sequence could be calibrated: none of the {res['cases_read']} cases read has a requested "
            "sequence together with another one"
        )
    folder = store_calibration(
        args.checkpoint,
        res,
        out=args.out,
        provenance={"manifest": str(args.manifest), "command": getattr(args, "_command_line", None)},
    )
    head = f"{'sequence':10s} {'cases':>5s} {'gain':>5s} {'width mm':>8s} {'level':>5s}"
    print(f"{head}  {args.region} PSNR as decoded -> calibrated")
    for name, v in res["sequences"].items():
        print(
            f"{name:10s} {v['n_cases']:5d} {v['gain']:5.2f} {v['sigma_mm']:8g} {v['level']:5.2f}  "
            f"{v['psnr_as_decoded']:6.2f} -> {v['psnr']:6.2f} dB"
        )
    if res["uncalibrated"]:
        print(f"not calibrated (no case has it with another sequence): {', '.join(res['uncalibrated'])}")
    print(f"stored in {folder}/config.json ('local_contrast'); mrfound impute applies it by default")
    if check is not None:
        _report_check(folder, check, args, list(res["sequences"]))
    return 0


def _report_check(folder: Path, check: Manifest, args: argparse.Namespace, sequences: list[str]) -> None:
    """PSNR as decoded and with the stored calibration on the held-out manifest (reloaded from ``folder``,
    so what is checked is what ``impute`` will apply)."""
    from mrfound.calibration import evaluate_local_contrast
    from mrfound.errors import ConfigError
    from mrfound.pipeline import load_pretrained

    model = load_pretrained(folder, device=args.device)
    try:
        ev = evaluate_local_contrast(
            model,
            check,
            sequences=sequences,
            region=args.region,
            max_cases=args.cases,
            overlap=args.overlap,
            sw_batch_size=args.sw_batch_size,
        )
    except ConfigError as exc:  # the calibration is stored either way; say why it was not checked
        print(f"held-out check skipped: {exc}")
        return
    print(f"held-out check on {args.check} ({ev['cases_read']} case(s) read): {args.region} PSNR")
    print(f"{'sequence':10s} {'cases':>5s}  as decoded -> calibrated")
    for name, v in ev["sequences"].items():
        print(f"{name:10s} {v['n_cases']:5d}  {v['psnr_as_decoded']:6.2f} -> {v['psnr']:6.2f} dB")
    if ev["unscored"]:
        print(f"not checked (no held-out case has it with another sequence): {', '.join(ev['unscored'])}")
