"""``mrfound validate``: check a manifest and its files; report every problem."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "check a manifest and its files; report every problem"
EXAMPLES = """examples:
  mrfound validate --manifest cohort/manifest.csv
      print sequence availability per centre, class counts and every problem; exit 0 if clean, 2 if not
  mrfound validate --manifest cohort/manifest.csv --on-error skip --out checked/
      also write checked/clean.csv (usable rows) and checked/rejected.csv (with a 'reason' column);
      exit 0 while at least one clean row remains
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="manifest CSV to check")
    p.add_argument(
        "--on-error",
        choices=("report", "skip"),
        default="report",
        help="report: only list problems (default); skip: also split rows into clean.csv and rejected.csv",
    )
    p.add_argument("--out", help="folder for clean.csv / rejected.csv (default: the manifest's folder)")


def run(args: argparse.Namespace) -> int:
    from mrfound.data.validate import validate_manifest

    report = validate_manifest(args.manifest)
    print(report.format_summary())
    lines = report.format_problems()
    n_err = len(report.errors)
    n_warn = sum(p.severity == "warning" for p in report.problems)
    if lines:
        print(f"{n_err} error(s), {n_warn} warning(s):")
        for line in lines:
            print(f"  {line}")
    else:
        print("no problems found")
    if report.errors and args.on_error != "skip":  # the first problem as the one-line error, as every command
        from mrfound.data.guard import first_error

        print(f"mrfound validate: error: {first_error(report.errors, args.manifest)}", file=sys.stderr)
    if args.on_error == "skip":
        out = Path(args.out) if args.out else Path(args.manifest).resolve().parent
        clean, rejected, n_clean, n_rej = report.write_split(out)
        print(
            f"{n_clean} clean row(s) -> {clean}; {n_rej} rejected row(s) -> {rejected} "
            f"(of {len(report.frame)})"
        )
        if n_clean == 0:
            print("mrfound validate: error: no clean row remains", file=sys.stderr)
            return 2
        return 0
    return 0 if report.ok else 2
