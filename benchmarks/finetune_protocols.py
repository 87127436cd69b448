"""Fine-tuned classifiers from several pretraining checkpoints under missing-sequence protocols, paired.

The phenotype benchmark fine-tunes only ours and supervised-from-scratch, so it cannot say whether
whole-sequence dropout in pretraining still matters once the encoder is fine-tuned. This script
fine-tunes each checkpoint given as ``--checkpoint NAME=PATH`` with the phenotype benchmark's recipe
(``phenotype.finetune_run``: the budget's epochs and step limits, learning rate, layer-wise decay 0.75,
sequence-dropout augmentation) on the labelled cases of ``--train-manifest`` (or a ``--labels-fraction``
of them), once per ``--seeds`` seed, and scores every run on ``--test-manifest`` under each
missing-sequence protocol (sequences outside it removed; ``mrfound.demo.classifier_protocol_metrics``).
The first checkpoint is then compared with each other one, seed by seed, by the paired bootstrap of
``compare_probes.compare`` (difference in macro AUC per protocol, and in the drop from ``all``).

Writes ``OUT/<name>_seed<s>/{predictions.csv,metrics.json}``, ``OUT/compare_<a>_vs_<b>_seed<s>.json`` and
``OUT/finetune_protocols.json`` (command, date, commit, machine, settings, the named protocols' macro AUC
of every run and each comparison's summary), and prints the last. Fine-tuned runs go to ``--work`` and are
reused by a rerun with the same settings.

Usage::

    python benchmarks/finetune_protocols.py \\
        --checkpoint ours=RUN_A/final --checkpoint plain_mae=RUN_B/final \\
        --train-manifest W/train.csv --test-manifest W/test.csv --cache-dir W/cache --seeds 0,1 \\
        --work /tmp/ft_protocols --out results/finetune_protocols
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import choose_threads, provenance  # noqa: E402

from mrfound.data.sequences import NAMED_PROTOCOLS  # noqa: E402
from mrfound.utils.machine import machine_info  # noqa: E402


def _named_checkpoints(specs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--checkpoint must be NAME=PATH, got {spec!r}")
        if name in out:
            raise SystemExit(f"--checkpoint name {name!r} given twice")
        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"--checkpoint {name}: {path} is not a checkpoint folder (no config.json)")
        out[name] = Path(path)
    if len(out) < 1:
        raise SystemExit("give at least one --checkpoint NAME=PATH")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from mrfound.models.config import HEAD_POOLING

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH of a pretraining checkpoint")
    ap.add_argument("--train-manifest", required=True, help="labelled training manifest CSV")
    ap.add_argument("--test-manifest", required=True, help="labelled test manifest CSV")
    ap.add_argument("--labels-fraction", type=float, default=1.0, help="share of the labelled cases (1.0)")
    ap.add_argument("--seeds", default="0", help="comma list of fine-tuning seeds (0)")
    ap.add_argument("--budget", default="full", help="phenotype budget whose fine-tuning recipe is used")
    ap.add_argument("--pooling", choices=HEAD_POOLING, default="mean", help="head token pooling (mean)")
    ap.add_argument(
        "--head-only-steps",
        type=int,
        default=0,
        help="of each run's steps, how many train the head alone first (linear-probe-then-fine-tune; 0)",
    )
    ap.add_argument("--protocols", default="full", help="protocols scored ('full', 'named' or a comma list)")
    ap.add_argument("--cache-dir", default=None, help="preprocessing cache (default: WORK/cache)")
    ap.add_argument("--work", required=True, help="folder of the fine-tuned runs (reused by a rerun)")
    ap.add_argument("--out", required=True, help="folder of the results")
    ap.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default: the budget's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on a busy machine)")
    args = ap.parse_args(argv)
    ckpts = _named_checkpoints(args.checkpoint)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds must be a comma list of integers, got {args.seeds!r}") from None
    if not seeds:
        raise SystemExit("--seeds is empty")
    if args.head_only_steps < 0:
        raise SystemExit(f"--head-only-steps must be >= 0, got {args.head_only_steps}")
    if not 0 < args.labels_fraction <= 1:
        raise SystemExit(f"--labels-fraction must be in (0, 1], got {args.labels_fraction}")

    import phenotype as ph
    from compare_probes import compare, read_predictions

    from mrfound.data.guard import checked_manifest
    from mrfound.data.sequences import DEFAULT_VOCABULARY
    from mrfound.demo import classifier_protocol_metrics
    from mrfound.finetune.probe import resolve_protocols
    from mrfound.pipeline import MRFoundModel
    from mrfound.utils.io import atomic_write_json, atomic_write_text

    if args.budget not in ph.BUDGETS:
        raise SystemExit(f"--budget must be one of {', '.join(ph.BUDGETS)}, got {args.budget!r}")
    b = ph.BUDGETS[args.budget]
    n_boot = b.n_boot if args.n_boot is None else args.n_boot
    choose_threads(args.threads)
    vocab = DEFAULT_VOCABULARY
    train = checked_manifest(args.train_manifest, on_error="raise", vocabulary=vocab)
    test = checked_manifest(args.test_manifest, on_error="raise", vocabulary=vocab, prefix="test_")
    protocols = resolve_protocols(args.protocols, vocab.sequences)
    work, out = Path(args.work), Path(args.out)
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    n_lab = sum(1 for c in train.cases if c.label)
    doc: dict[str, Any] = {
        "benchmark": "finetune_protocols",
        **provenance(argv and ["benchmarks/finetune_protocols.py", *argv]),
        "machine": machine_info(),
        "settings": {
            "budget": args.budget,
            "labels_fraction": args.labels_fraction,
            "pooling": args.pooling,
            "head_only_steps": args.head_only_steps,
            "seeds": seeds,
            "protocols": protocols,
            "n_boot": n_boot,
            "checkpoints": {k: str(v) for k, v in ckpts.items()},
            "train_manifest": str(Path(args.train_manifest).resolve()),
            "test_manifest": str(Path(args.test_manifest).resolve()),
        },
        "runs": {},
        "comparisons": {},
    }
    t_start = time.time()
    for name, ckpt in ckpts.items():
        for seed in seeds:
            tag = f"{name}_seed{seed}"
            print(f"fine-tuning {tag} ...", flush=True)
            model, info, sec = ph.finetune_run(
                name, ckpt, Path(args.train_manifest), work, cache, b, seed, args.labels_fraction,
                scratch=False, n_train_cases=n_lab, pooling=args.pooling,
                head_only_steps=args.head_only_steps,
            )
            config = json.loads((Path(info["run"]) / "final" / "config.json").read_text())
            pp = MRFoundModel(model, config, device="cpu").preprocessing  # the checkpoint's own
            t0 = time.time()
            metrics, pred = classifier_protocol_metrics(
                model, test, pp, protocols, cache_dir=cache, n_boot=n_boot, seed=seed, batch_size=b.batch_size
            )
            atomic_write_text(out / tag / "predictions.csv", pred.to_csv(index=False))
            atomic_write_json(out / tag / "metrics.json", {"protocols": metrics, "finetune": info})
            doc["runs"][tag] = {
                **info,
                "train_s": round(sec, 1),
                "eval_s": round(time.time() - t0, 1),
                "auc_macro": {
                    p: metrics[p].get("auc_macro", {}).get("value") for p in NAMED_PROTOCOLS if p in metrics
                },
            }
            print(f"   macro AUC {doc['runs'][tag]['auc_macro']}", flush=True)
    names = list(ckpts)
    for other in names[1:]:
        for seed in seeds:
            a_tag, b_tag = f"{names[0]}_seed{seed}", f"{other}_seed{seed}"
            res = compare(
                read_predictions(out / a_tag / "predictions.csv"),
                read_predictions(out / b_tag / "predictions.csv"),
                n_boot=max(n_boot, 1),
                seed=seed,
            )
            key = f"{names[0]}_vs_{other}_seed{seed}"
            atomic_write_json(out / f"compare_{key}.json", {"a": a_tag, "b": b_tag, **res})
            doc["comparisons"][key] = res["summary"]
    doc["wall_s"] = round(time.time() - t_start, 1)
    atomic_write_json(out / "finetune_protocols.json", doc)
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
