"""``mrfound phantom``: simulate a multi-centre, multi-sequence liver MRI cohort (NIfTI + manifest)."""

from __future__ import annotations

import argparse
import time

HELP = "simulate a multi-centre, multi-sequence liver MRI cohort (NIfTI + manifest)"
EXAMPLES = """examples:
  mrfound phantom --out cohort --cases 80 --seed 1
      80 exams from the 5 built-in centres: cohort/manifest.csv, cohort/cases/<case>/<sequence>.nii.gz
  mrfound phantom --out cohort --cases 200 --seed 1 --unlabeled-fraction 0.5 --preview
      half of the cases without label (pretraining only) and a class x sequence montage cohort/preview.png
  mrfound phantom --out extra --cases 640 --seed 101 --unlabeled-fraction 1 --id-prefix u
      unlabeled cases with ids uph00000, usub00000, ...: pool with the first (pretrain --manifest twice)
  mrfound phantom --out cohort --cases 40 --centers uni_3t,surveillance --workers 2
      only two centres (complete protocol; abbreviated t2 + dwi + t1_pv)
  mrfound phantom --out cohort --cases 40 --anatomy ../shared/data/chaos_t2/labels
      lesions inserted into real organ label maps (1 liver, 2/3 kidneys, 4 spleen); only contrast simulated

centres: uni_3t (complete, 3 T), community_15t (no DWI), oncology (no in/opposed phase),
         surveillance (t2 + dwi + t1_pv only), private_15t (complete, coronal T2)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True,
                   help="output folder (created atomically; an earlier cohort is replaced)")
    p.add_argument("--cases", type=int, default=80, help="number of cases (default 80)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed; same seed, same files (default 0)")
    p.add_argument("--centers", help="comma-separated centre names (default: all built-in centres)")
    p.add_argument("--unlabeled-fraction", type=float, default=0.0,
                   help="fraction of cases written without label, for pretraining (default 0)")
    p.add_argument("--anatomy", metavar="DIR", help="folder of real organ label maps to insert lesions into")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: available CPUs, max 8)")
    p.add_argument("--preview", action="store_true",
                   help="also write DIR/preview.png (class x sequence montage)")
    p.add_argument("--balanced", action="store_true",
                   help="equal class frequencies instead of each centre's referral mix")
    p.add_argument("--spacing-scale", type=float, default=1.0,
                   help="multiply every voxel size (2 = coarse, small volumes for quick tests)")
    p.add_argument("--variation", type=float, default=1.0,
                   help="multiply the per-case spread of every lesion magnitude (0 = textbook lesions)")
    p.add_argument("--id-prefix", default="",
                   help="prepend to every case and subject id, to pool cohorts of other seeds (default none)")


def run(args: argparse.Namespace) -> int:
    from mrfound.data.phantom import PhantomConfig, generate_cohort
    from mrfound.data.phantom.acquisition import get_centers

    centers = tuple(c.name for c in get_centers(args.centers)) if args.centers else None
    config = PhantomConfig(centers=centers, unlabeled_fraction=args.unlabeled_fraction,
                           anatomy_dir=args.anatomy, balanced=args.balanced,
                           spacing_scale=args.spacing_scale, variation=args.variation,
                           id_prefix=args.id_prefix)
    t0 = time.perf_counter()
    manifest = generate_cohort(args.out, args.cases, args.seed, config, workers=args.workers,
                               preview=args.preview)
    print(f"wrote {args.cases} cases to {manifest} in {time.perf_counter() - t0:.1f} s")
    if args.preview:
        print(f"preview: {manifest.parent / 'preview.png'}")
    return 0
