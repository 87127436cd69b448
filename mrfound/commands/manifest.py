"""``mrfound manifest``: build a manifest from a folder (filename pattern or the LLD-MMRI layout)."""

from __future__ import annotations

import argparse

HELP = "build a manifest from a folder (filename pattern or the LLD-MMRI layout)"
EXAMPLES = """examples:
  mrfound manifest --root cohort/ --pattern "{case}/{sequence}.nii.gz" --out cohort/manifest.csv
      one folder per case, one file per sequence ("T2WI", "C+A", "t1_pv"... via the alias table)
  mrfound manifest --root ../shared/data/chaos_t2 --pattern "images/chaos_{case}_t2.nii.gz" \\
        --sequence t2 --mask-pattern "labels/chaos_{case}_labels.nii.gz" --mask-map 1:1,2:0,3:0,4:0 \\
        --out chaos/manifest.csv
      CHAOS T2: organ labels remapped to liver=1 (written to chaos/manifest_masks/)
  mrfound manifest --lld-mmri LLD-MMRI2023/ --out lld/manifest.csv
      the LLD-MMRI 2023 release: phase volumes per MR-* folder + labels/Annotation.json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.add_argument("--root", help="folder to scan with --pattern")
    p.add_argument(
        "--pattern",
        help="file pattern relative to --root, tokens {case} {sequence} {subject} "
        '{center} and *, e.g. "{case}/{sequence}.nii.gz"',
    )
    p.add_argument("--sequence", help="sequence of every file when the pattern has no {sequence} token")
    p.add_argument("--mask-pattern", help='mask file pattern, e.g. "labels/{case}_seg.nii.gz"')
    p.add_argument(
        "--mask-map",
        help="remap mask labels, e.g. 1:1,2:0,3:0,4:0 (remapped masks are written beside the manifest)",
    )
    p.add_argument("--label-map", help="CSV with case,label (optionally subject,center) columns")
    p.add_argument("--lld-mmri", metavar="DIR", help="import an LLD-MMRI 2023 release folder instead")
    p.add_argument("--annotations", help="LLD-MMRI annotation JSON (default: DIR/labels/Annotation.json)")


def run(args: argparse.Namespace) -> int:
    from mrfound.cli import UsageError
    from mrfound.data.importers import import_lld_mmri, import_pattern

    if args.lld_mmri:
        if args.pattern or args.root:
            raise UsageError("use either --lld-mmri DIR or --root/--pattern, not both")
        result = import_lld_mmri(args.lld_mmri, args.out, annotations=args.annotations)
    else:
        if not (args.root and args.pattern):
            raise UsageError("give --root and --pattern (or --lld-mmri DIR)")
        result = import_pattern(
            args.root,
            args.pattern,
            args.out,
            mask_pattern=args.mask_pattern,
            mask_map=args.mask_map,
            label_table=args.label_map,
            sequence=args.sequence,
        )
    print(f"wrote {result.manifest} ({result.n_cases} cases)")
    for note in result.notes:
        print(f"note: {note}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} file(s):")
        for s in result.skipped[:20]:
            print(f"  {s}")
        if len(result.skipped) > 20:
            print(f"  ... and {len(result.skipped) - 20} more")
    return 0
