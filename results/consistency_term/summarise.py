"""Summarise the cross-view consistency trials: reconstruction loss against the plain recipe, step by step.

Each trial is the 853-case pretraining recipe of README (``mrfound pretrain ... --set mae.sequence_drop=0.5
--steps 10000 ...``) plus ``--set mae.consistency_weight=W``; the reference is the seed-0 run without the term
(RUN853). ``logs/`` holds the step, reconstruction loss, consistency loss and gradient norm of each log
(``log.jsonl`` trimmed to those keys by this script's ``--trim``). Writes ``summary.json`` and
``reconstruction.png`` beside this script.

Usage::

    python results/consistency_term/summarise.py [--trim NAME=LOG.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KEYS = ("step", "loss_recon", "loss_consistency", "grad_norm")
TRIALS = {
    "reference": "plain recipe (no term), RUN853",
    "target_scale_w0.01": "scaled by the full view's spread, weight 0.01",
    "target_scale_w0.001": "scaled by the full view's spread, weight 0.001",
    "target_scale_w1e-9": "scaled by the full view's spread, weight 1e-9 (monitor only)",
    "own_scale_w0.1": "each view by its own spread, weight 0.1",
    "own_scale_w0.01": "each view by its own spread, weight 0.01 (run to 10000 steps)",
}


def read(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: r[k] for k in KEYS if k in r} for r in rows if "loss_recon" in r]


def window_means(rows: list[dict], key: str, width: int = 100) -> dict[int, float]:
    out: dict[int, list[float]] = {}
    for r in rows:
        if key in r:
            out.setdefault((r["step"] - 1) // width * width + width, []).append(r[key])
    return {k: float(np.mean(v)) for k, v in sorted(out.items())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trim", nargs="*", default=[], metavar="NAME=LOG")
    args = ap.parse_args(argv)
    logs = HERE / "logs"
    logs.mkdir(exist_ok=True)
    for spec in args.trim:
        name, _, path = spec.partition("=")
        if name not in TRIALS:
            ap.error(f"unknown trial {name!r}; one of {', '.join(TRIALS)}")
        (logs / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in read(Path(path))))
    runs = {n: read(logs / f"{n}.jsonl") for n in TRIALS if (logs / f"{n}.jsonl").is_file()}
    ref = window_means(runs["reference"], "loss_recon")
    summary: dict = {"window": "mean over steps (s - 100, s]", "trials": {}}
    for name, rows in runs.items():
        recon = window_means(rows, "loss_recon")
        cons = window_means(rows, "loss_consistency")
        last = max(recon)
        checkpoints = [s for s in (500, 600, 800, 1000, 2000, 5000, 10000) if s <= last]
        summary["trials"][name] = {
            "label": TRIALS[name],
            "last_step": int(rows[-1]["step"]),
            "loss_recon": {s: round(recon[s], 4) for s in checkpoints},
            "loss_recon_minus_reference": {s: round(recon[s] - ref[s], 4) for s in checkpoints},
            "loss_consistency": {s: round(cons[s], 3) for s in checkpoints if s in cons},
        }
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    colour = dict(zip(TRIALS, plt.get_cmap("tab10").colors, strict=False))  # same colour in both panels
    for name, rows in runs.items():
        recon = window_means(rows, "loss_recon")
        ax[0].plot(list(recon), list(recon.values()), label=TRIALS[name], lw=1.2, color=colour[name])
        cons = window_means(rows, "loss_consistency")
        if cons:
            ax[1].plot(list(cons), list(cons.values()), label=TRIALS[name], lw=1.2, color=colour[name])
    ax[0].set(xscale="log", xlabel="pretraining step", ylabel="reconstruction loss (norm-pix MSE)",
              title="Reconstruction loss, 100-step means")
    ax[1].set(xscale="log", xlabel="pretraining step", ylabel="consistency loss",
              title="Consistency term (each trial's own definition)")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "reconstruction.png", dpi=120)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
