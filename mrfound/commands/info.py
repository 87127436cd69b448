"""``mrfound info``: versions, vocabularies, the model registry, or a checkpoint's config."""

from __future__ import annotations

import argparse
import json
import platform

HELP = "show versions, the vocabularies, the model registry or a checkpoint's config"
EXAMPLES = """examples:
  mrfound info                          versions and vocabularies
  mrfound info --checkpoint runs/pre/final   a checkpoint's config (architecture, vocabularies, provenance)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="checkpoint folder, registry name or hf://owner/repo to describe")


def run(args: argparse.Namespace) -> int:
    from mrfound import __version__
    from mrfound.data.sequences import CLASSES, MALIGNANT, SEQUENCES

    if args.checkpoint:
        from mrfound.models.checkpoint import load_checkpoint

        # verify the weights too (safetensors only, each tensor against the architecture): a checkpoint
        # that load_pretrained would refuse is not described as if it were usable
        config, _ = load_checkpoint(args.checkpoint)
        print(json.dumps(config, indent=2))
        return 0
    import torch

    print(f"mrfound {__version__}  (python {platform.python_version()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cuda {'yes' if torch.cuda.is_available() else 'no'})")
    print(f"sequences: {', '.join(SEQUENCES)}")
    print(f"classes:   {', '.join(CLASSES)}  (malignant: {', '.join(sorted(MALIGNANT))})")
    try:
        from mrfound.models.registry import MODEL_SIZES
    except ImportError:  # registry not importable: still report what we can
        return 0
    for name, cfg in MODEL_SIZES.items():
        print(f"model {name:6s} width {cfg.embed_dim} depth {cfg.depth} heads {cfg.num_heads}")
    return 0
