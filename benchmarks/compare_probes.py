"""Is model A really ahead of model B? Paired bootstrap of two probes' test predictions.

Reads two ``predictions.csv`` files written by ``mrfound probe`` on the same test cases (or any table with
``case``, ``label`` and ``p_<class>`` columns; one without a ``protocol`` column counts as protocol
``all``; ``mrfound predict`` writes no true label), and for every protocol in
both scores the difference ``metric(A) - metric(B)`` on the same bootstrap resamples of the cases
(:func:`mrfound.finetune.metrics.paired_difference`). Two unpaired 95 % CIs that overlap say little:
the paired CI of the difference is the one to read. Also reports, per protocol, how much each model
loses from protocol ``all`` and whether A degrades less than B, with the paired CI of ``drop_b - drop_a``
(``degradation``, :func:`mrfound.finetune.metrics.paired_drop_difference`: both protocols and both
models on the same resamples of the ``all`` cases).

Usage::

    .venv/bin/python benchmarks/compare_probes.py --a OURS/predictions.csv --b RANDOM/predictions.csv \\
        [--metric auc_macro] [--n-boot 2000] [--out compare.json]

Prints the JSON (and writes it to ``--out``); exit code 2 with one line for unreadable or mismatched
files. ``--summarise compare_*.json`` prints one line per comparison written before (the named protocols'
scores, the paired difference under ``all`` and the counts over every protocol), the lines a README table
is written from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402

from mrfound.data.sequences import NAMED_PROTOCOLS  # noqa: E402


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions table with a ``protocol`` column (``all`` where the file has none).

    Raises:
        ValueError: one line naming the file and the problem.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.csv"
    if not path.is_file():
        raise ValueError(f"{path}: no such predictions file")
    df = pd.read_csv(path)
    missing = [c for c in ("case", "label") if c not in df.columns]
    if missing or not any(c.startswith("p_") for c in df.columns):
        raise ValueError(f"{path}: needs columns case, label and p_<class>; missing {missing or ['p_*']}")
    if "protocol" not in df.columns:
        df = df.assign(protocol="all")
    dup = df.duplicated(["protocol", "case"])
    if dup.any():
        row = df[dup].iloc[0]
        raise ValueError(f"{path}: case {row['case']} appears twice under protocol {row['protocol']}")
    df.attrs["path"] = str(path)
    return df


def compare(
    a: pd.DataFrame, b: pd.DataFrame, metric: str = "auc_macro", n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Paired differences A - B per protocol shared by both tables (see the module docstring)."""
    from mrfound.data.sequences import MALIGNANT
    from mrfound.finetune.metrics import paired_difference, paired_drop_difference

    classes = [c[2:] for c in a.columns if c.startswith("p_")]
    if classes != [c[2:] for c in b.columns if c.startswith("p_")]:
        raise ValueError(f"{a.attrs.get('path')} and {b.attrs.get('path')} have different class columns")
    cols = [f"p_{c}" for c in classes]
    protocols = [p for p in dict.fromkeys(a["protocol"]) if p in set(b["protocol"])]
    if not protocols:
        raise ValueError(f"{a.attrs.get('path')} and {b.attrs.get('path')} share no protocol")
    rows: dict[str, Any] = {}
    frames: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}  # per protocol: A and B, same case order
    kw = {"malignant": MALIGNANT, "metric": metric, "n_boot": n_boot, "seed": seed}
    for p in protocols:
        pa = a[a["protocol"] == p].set_index("case")
        pb = b[b["protocol"] == p].set_index("case")
        if set(pa.index) != set(pb.index):
            only = sorted(set(pa.index) ^ set(pb.index))[:3]
            raise ValueError(f"protocol {p}: the two files score different cases (e.g. {only})")
        pb = pb.loc[pa.index]
        disagree = (pa["label"] != pb["label"]).to_numpy()
        if disagree.any():
            case = pa.index[disagree][0]
            raise ValueError(f"protocol {p}, case {case}: the two files disagree on the true label")
        frames[p] = pa, pb
        rows[p] = paired_difference(
            pa["label"].to_numpy(),
            pa[cols].to_numpy(np.float64),
            pb[cols].to_numpy(np.float64),
            classes,
            **kw,
        )
    if "all" in rows:
        ref_a, ref_b = frames["all"]
        position = {c: i for i, c in enumerate(ref_a.index)}
        for p, r in rows.items():  # loss from `all`: positive = worse without the protocol's sequences
            r["drop_a"] = rows["all"]["a"] - r["a"]
            r["drop_b"] = rows["all"]["b"] - r["b"]
            r["a_degrades_less"] = bool(r["drop_a"] < r["drop_b"]) if p != "all" else None
            if p == "all":
                continue
            pa, pb = frames[p]
            outside = [c for c in pa.index if c not in position]
            if outside:
                raise ValueError(f"protocol {p}: case {outside[0]} is not scored under protocol all")
            # drop_b - drop_a on the same resamples of the `all` cases: > 0 = A loses less
            r["degradation"] = paired_drop_difference(
                ref_a["label"].to_numpy(),
                ref_a[cols].to_numpy(np.float64),
                ref_b[cols].to_numpy(np.float64),
                [position[c] for c in pa.index],
                pa[cols].to_numpy(np.float64),
                pb[cols].to_numpy(np.float64),
                classes,
                **kw,
            )
    others = [r for p, r in rows.items() if p != "all"]
    summary = {
        "protocols": len(rows),
        "a_ahead": sum(r["difference"]["value"] > 0 for r in rows.values()),
        "a_ahead_ci_excludes_0": sum(r["difference"]["ci_low"] > 0 for r in rows.values()),
        "b_ahead_ci_excludes_0": sum(r["difference"]["ci_high"] < 0 for r in rows.values()),
        "mean_difference": float(np.mean([r["difference"]["value"] for r in rows.values()])),
    }
    if "all" in rows and others:
        summary["a_degrades_less"] = sum(bool(r["a_degrades_less"]) for r in others)
        summary["a_degrades_less_ci_excludes_0"] = sum(
            r["degradation"]["difference"]["ci_low"] > 0 for r in others
        )
        summary["b_degrades_less_ci_excludes_0"] = sum(
            r["degradation"]["difference"]["ci_high"] < 0 for r in others
        )
        summary["protocols_without_all"] = len(others)
    return {"metric": metric, "summary": summary, "protocols": rows}


def summary_line(name: str, doc: dict[str, Any]) -> str:
    """One line of a comparison written by :func:`main`: A's and B's metric under the named protocols (those
    present), A minus B under ``all`` with its paired CI, in how many protocols A is ahead (CI of the
    difference above / below 0), the mean difference, and in how many A degrades less from ``all``."""
    pa, s = doc["protocols"], doc["summary"]
    named = [p for p in NAMED_PROTOCOLS if p in pa]
    a = " / ".join(f"{pa[p]['a']:.3f}" for p in named)
    b = " / ".join(f"{pa[p]['b']:.3f}" for p in named)
    d = pa["all"]["difference"]
    return (
        f"{name}: A {a} | B {b} | all {d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | A ahead "
        f"{s['a_ahead']} of {s['protocols']} ({s['a_ahead_ci_excludes_0']} / {s['b_ahead_ci_excludes_0']}), "
        f"mean {s['mean_difference']:+.3f} | degrades less {s['a_degrades_less']} "
        f"({s['a_degrades_less_ci_excludes_0']} / {s['b_degrades_less_ci_excludes_0']})"
    )


def _summarise(paths: list[str]) -> None:
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
            line = summary_line(Path(path).stem.removeprefix("compare_"), doc)
        except (OSError, ValueError, KeyError, TypeError) as e:
            msg = f"compare_probes: error: {path}: not a comparison written by this script ({e})"
            print(msg, file=sys.stderr)
            raise SystemExit(2) from None
        print(line)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", help="predictions.csv (or its folder) of model A")
    ap.add_argument("--b", help="predictions.csv (or its folder) of model B")
    ap.add_argument("--metric", default="auc_macro", help="one of the SCALAR_METRICS (default auc_macro)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here (atomically)")
    ap.add_argument(
        "--summarise", nargs="+", metavar="JSON", help="instead: one line per comparison JSON written before"
    )
    args = ap.parse_args(argv)
    if args.summarise:
        _summarise(args.summarise)
        return {}
    if not (args.a and args.b):
        ap.error("give --a and --b (or --summarise)")
    from mrfound.errors import ConfigError

    try:
        res = compare(read_predictions(args.a), read_predictions(args.b), args.metric, args.n_boot, args.seed)
    except (ValueError, ConfigError) as e:
        print(f"compare_probes: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    res = {**provenance(argv and ["benchmarks/compare_probes.py", *argv]), "a": args.a, "b": args.b, **res}
    if args.out:
        from mrfound.utils.io import atomic_write_json

        atomic_write_json(Path(args.out), res)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
