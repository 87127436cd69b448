"""Print the tables of README's tube-masking section from the comparisons in this folder.

Usage: python results/probe_tube_masking/summarise.py   (after probes.sh)
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMED = ("all", "no_contrast", "t2_only", "contrast_only")


def _load(name: str) -> dict:
    return json.loads((HERE / f"compare_{name}.json").read_text())


def main() -> None:
    for name in sorted(p.stem[len("compare_"):] for p in HERE.glob("compare_*.json")):
        d = _load(name)
        s = d["summary"]
        pa = d["protocols"]
        a = " / ".join(f"{pa[p]['a']:.3f}" for p in NAMED)
        b = " / ".join(f"{pa[p]['b']:.3f}" for p in NAMED)
        diff = pa["all"]["difference"]
        print(
            f"{name}: A {a} | B {b} | all {diff['value']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]"
            f" | A ahead {s['a_ahead']} of {s['protocols']} ({s['a_ahead_ci_excludes_0']} / "
            f"{s['b_ahead_ci_excludes_0']}), mean {s['mean_difference']:+.3f} | degrades less "
            f"{s['a_degrades_less']} ({s['a_degrades_less_ci_excludes_0']} / {s['b_degrades_less_ci_excludes_0']})"
        )


if __name__ == "__main__":
    main()
