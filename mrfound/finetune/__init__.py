"""Downstream use of a pretrained encoder (DESIGN §4 heads, §7): linear probe, fine-tuning, evaluation.

* :mod:`mrfound.finetune.metrics`: classification metrics with bootstrap CIs, segmentation Dice/HD95.
* :mod:`mrfound.finetune.probe`: logistic-regression probe of frozen features under missing-sequence
  protocols (``mrfound probe``).
* :mod:`mrfound.finetune.radiomics`: hand-crafted lesion features (the classical baseline).
* :mod:`mrfound.finetune.classify` / :mod:`mrfound.finetune.segment`: fine-tuning with the shared
  Accelerate trainer (``mrfound finetune``).
* :mod:`mrfound.finetune.evaluate`: score a predictions CSV, ROC and confusion figures
  (``mrfound evaluate``).

Heavy modules are imported by the submodules only.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterable


def format_command(name: str, args: argparse.Namespace, skip: Iterable[str] = ()) -> str:
    """A reproducible ``mrfound <name> --flag value ...`` line from parsed arguments.

    Built from the parsed values (not ``sys.argv``) so it is the same whether the command ran from
    a shell, ``python -m mrfound`` or ``mrfound.cli.main([...])``. ``False``/``None`` flags are left out.
    """
    parts = ["mrfound", name]
    skipped = set(skip) | {"command", "debug", "version"}
    for key, value in vars(args).items():
        if key.startswith("_") or key in skipped or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *(shlex.quote(str(v)) for v in value)]
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)
