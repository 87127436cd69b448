"""What ``mrfound predict`` and ``mrfound impute`` share: option checks, the model, the checked manifest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def model_and_manifest(args: argparse.Namespace) -> tuple[Any, Path]:
    """Check ``--overlap`` and ``--num-workers``, load ``--checkpoint`` and validate ``--manifest``.

    The manifest is checked against the model's sequence vocabulary before anything is written: a bad
    row stops the command here (one line, no ``--out``), or with ``--on-error skip`` is set aside in
    ``--out`` and the returned manifest is the clean one.

    Raises:
        ConfigError: For an out-of-range option.
    """
    from mrfound.data.guard import checked_manifest_reported
    from mrfound.errors import ConfigError
    from mrfound.pipeline import load_pretrained

    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise ConfigError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {args.num_workers}")
    model = load_pretrained(args.checkpoint, device=args.device)
    manifest = checked_manifest_reported(
        args.manifest, on_error=args.on_error, out_dir=args.out, vocabulary=model.vocabulary
    )
    return model, manifest
