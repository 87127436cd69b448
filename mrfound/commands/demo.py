"""``mrfound demo``: run the whole story on a simulated cohort and write a report."""

from __future__ import annotations

import argparse

HELP = "run the whole story on a simulated cohort and write a report"
EXAMPLES = """examples:
  mrfound demo --out demo_out
      simulate 120 cases, pretrain tiny, probe, fine-tune, segment, predict and impute in about 10 min
      on 2 CPU cores; open demo_out/report.md
  mrfound demo --out demo_out --minutes 20 --cases 200 --seed 3
      a larger cohort and a longer budget (the training stages take the extra time)
  mrfound demo --out demo_out --minutes 5 --no-segment
      skip the segmentation stage

The training stages measure this machine's speed first and size their step counts to the --minutes
budget, so a busy machine trains fewer steps (the report says how many).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-time budget in minutes (default 10)")
    p.add_argument("--cases", type=int, default=120, help="simulated cases (default 120, at least 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort, split and models (default 0)")
    p.add_argument("--workers", type=int, default=None, help="processes for simulation and preprocessing")
    p.add_argument("--no-segment", action="store_true", help="skip the segmentation fine-tune")


def run(args: argparse.Namespace) -> int:
    from mrfound.demo import DemoConfig, run_demo
    from mrfound.finetune import format_command

    cfg = DemoConfig(
        out=args.out,
        minutes=args.minutes,
        cases=args.cases,
        seed=args.seed,
        workers=args.workers,
        segment=not args.no_segment,
        command=format_command("demo", args),
    )
    run_demo(cfg)
    return 0
