"""``mrfound pretrain`` (= ``python -m mrfound.pretrain``): masked-modality autoencoder pretraining.

Both entry points share :func:`add_arguments` and :func:`run`. Multi-GPU or multi-process runs use the
same program under ``accelerate launch`` (see ``EXAMPLES``); ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

HELP = "pretrain a multi-sequence 3D ViT by masked-modality autoencoding"
EXAMPLES = """examples:
  mrfound pretrain --manifest cohort/manifest.csv --model tiny --steps 300 --out runs/pre
  mrfound pretrain --manifest phantom/manifest.csv --manifest chaos/manifest.csv --out runs/mix \\
      --mixed-precision bf16 --batch-size 8
  mrfound pretrain --out runs/pre --resume          continue a run from its newest complete checkpoint
  mrfound pretrain --config pre.yaml --set mae.mask_ratio=0.8 --set lr=3e-4 --out runs/r2
  python -m mrfound.pretrain ...                    the same program

multi-GPU / multi-process (data parallel; --batch-size is per process):
  accelerate launch --multi_gpu --num_processes 4 -m mrfound.pretrain --manifest M --out RUN
  ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m mrfound.pretrain \
      --manifest M --out RUN
  (on CPU, plain `accelerate launch --cpu --num_processes 2` silently runs one process)

outputs in RUN: config.json (resolved config), log.jsonl + tb/ (metrics), checkpoints/step_XXXXXXX/
(training state), viz/*.png (reconstructions), eval.json (held-out reconstruction vs baselines),
split.json (train/held-out cases), final/ (config.json + model.safetensors for mrfound.load_pretrained).
"""

# command-line flag -> config key, for flags that map one to one
_FLAG_KEYS = {
    "model": "model",
    "steps": "steps",
    "out": "out",
    "seed": "seed",
    "batch_size": "batch_size",
    "lr": "lr",
    "min_lr": "min_lr",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps",
    "grad_accum": "grad_accum",
    "clip_grad": "clip_grad",
    "mixed_precision": "mixed_precision",
    "ema": "ema",
    "num_workers": "num_workers",
    "log_every": "log_every",
    "save_every": "save_every",
    "keep_checkpoints": "keep_checkpoints",
    "viz_every": "viz_every",
    "eval_every": "eval_every",
    "eval_fraction": "eval_fraction",
    "lesion_crops": "lesion_crops",
    "roi_size": "roi_size",
    "spacing": "spacing",
    "cache_dir": "cache_dir",
    "skip_nonfinite": "skip_nonfinite",
    "resume": "resume",
    "cpu": "cpu",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``mrfound pretrain`` (flags left out keep the config file's or the default value)."""
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--manifest",
        action="append",
        metavar="CSV",
        help="manifest CSV; repeat to pool several cohorts (e.g. phantom + CHAOS)",
    )
    g.add_argument(
        "--model", metavar="SIZE", help="model size from the registry: tiny, small, base (default tiny)"
    )
    g.add_argument(
        "--roi-size", type=int, metavar="VOX", help="random crop edge in voxels = model input (default 64)"
    )
    g.add_argument("--spacing", type=float, metavar="MM", help="isotropic voxel size in mm (default 1.5)")
    g.add_argument("--cache-dir", metavar="DIR", help="preprocessing cache (default RUN/cache)")
    from mrfound.data.guard import add_on_error_argument

    add_on_error_argument(g)
    g.add_argument(
        "--eval-fraction",
        type=float,
        metavar="F",
        help="share of subjects held out for reconstruction evaluation (default 0.1)",
    )
    g.add_argument(
        "--lesion-crops",
        type=float,
        metavar="F",
        help="share of crops around the lesion position (lesion_x/y/z or mask; never the label), the rest "
        "anywhere in the body (default 0)",
    )
    t = p.add_argument_group("training")
    t.add_argument("--out", metavar="RUN", help="run folder (required unless in --config)")
    t.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    t.add_argument(
        "--batch-size", type=int, metavar="B", help="cases per process per micro-batch (default 8)"
    )
    t.add_argument("--grad-accum", type=int, metavar="K", help="micro-batches per optimizer step (default 1)")
    t.add_argument("--lr", type=float, help="peak learning rate (default 1.5e-4)")
    t.add_argument("--min-lr", type=float, help="final learning rate of the cosine decay (default 1e-6)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.05)")
    t.add_argument(
        "--warmup-steps", type=int, metavar="N", help="linear warm-up steps (default 5%% of steps)"
    )
    t.add_argument(
        "--clip-grad", type=float, metavar="NORM", help="gradient norm clip, 0 = off (default 1.0)"
    )
    t.add_argument(
        "--mixed-precision",
        choices=("no", "bf16", "fp16"),
        help="autocast precision; bf16 works on CPU and GPU, fp16 needs CUDA (default no)",
    )
    t.add_argument(
        "--ema", type=float, metavar="DECAY", help="keep an EMA of the weights (e.g. 0.999) and export it"
    )
    t.add_argument("--seed", type=int, help="seed of init, data order and masking (default 0)")
    t.add_argument("--num-workers", type=int, metavar="N", help="DataLoader workers per process (default 0)")
    t.add_argument(
        "--skip-nonfinite",
        action="store_true",
        default=None,
        help="skip (and count) steps with a NaN/Inf loss instead of stopping",
    )
    t.add_argument("--cpu", action="store_true", default=None, help="train on CPU even if a GPU is present")
    o = p.add_argument_group("logging and checkpoints")
    o.add_argument("--log-every", type=int, metavar="N", help="steps between log.jsonl entries (default 10)")
    o.add_argument(
        "--save-every", type=int, metavar="N", help="steps between checkpoints, 0 = end only (default 500)"
    )
    o.add_argument("--keep-checkpoints", type=int, metavar="K", help="newest checkpoints kept (default 2)")
    o.add_argument(
        "--viz-every", type=int, metavar="N", help="steps between reconstruction PNGs, 0 = end only"
    )
    o.add_argument(
        "--eval-every", type=int, metavar="N", help="steps between held-out evaluations, 0 = end only"
    )
    o.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue RUN from its newest complete checkpoint (settings from RUN/config.json)",
    )
    c = p.add_argument_group("configuration")
    c.add_argument("--config", metavar="FILE", help="YAML or JSON file with config keys (see PretrainConfig)")
    c.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="override a config key, e.g. --set mae.mask_ratio=0.8 --set model_overrides.depth=2",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """Resolve the :class:`PretrainConfig`: defaults < RUN/config.json (resume) < --config < --set < flags.

    Paths (manifests, out, cache_dir) are made absolute so a run can be resumed from another folder.
    On ``--resume``, keys that would change what is computed (anything but steps, logging, checkpointing
    and worker settings) must match the saved config.
    """
    from mrfound.errors import ConfigError
    from mrfound.pretrain.config import (
        PretrainConfig,
        apply_overrides,
        config_diff,
        load_config_file,
        parse_set_options,
    )

    explicit: dict[str, Any] = {}
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            explicit[key] = value
    if getattr(args, "manifest", None):
        explicit["manifest"] = list(args.manifest)
    file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
    sets = parse_set_options(getattr(args, "set", None))

    cfg = PretrainConfig()
    saved = None
    resume = explicit.get("resume", file_values.get("resume", False))
    out = explicit.get("out") or file_values.get("out") or sets.get("out")
    if resume and out and (Path(out) / "config.json").is_file():
        saved_path = Path(out) / "config.json"
        saved = apply_overrides(cfg, load_config_file(saved_path), source=str(saved_path))
        cfg = saved
    if file_values:
        cfg = apply_overrides(cfg, file_values, source=str(args.config))
    cfg = apply_overrides(cfg, sets, source="--set")
    cfg = apply_overrides(cfg, explicit, source="command line")
    cfg = _absolute_paths(cfg)
    if resume:
        cfg.resume = True
    if saved is not None:
        changed = config_diff(_absolute_paths(saved), cfg, ignore=PretrainConfig.RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(
                f"--resume: {', '.join(changed)} differ from {out}/config.json; a resumed run must keep them "
                "(start a new run with another --out instead)"
            )
    cfg.validate()
    return cfg


def _absolute_paths(cfg: Any) -> Any:
    import dataclasses

    def absolute(p: str) -> str:
        return os.path.abspath(os.path.expanduser(p)) if p else p

    return dataclasses.replace(
        cfg,
        manifest=[absolute(m) for m in cfg.manifest],
        out=absolute(cfg.out),
        cache_dir=absolute(cfg.cache_dir) if cfg.cache_dir else cfg.cache_dir,
    )


def run(args: argparse.Namespace) -> int:
    """Run pretraining; prints where the outputs are (main process)."""
    from mrfound.pretrain.run import pretrain

    cfg = config_from_args(args)
    command = getattr(args, "_command_line", None) or "mrfound " + shlex.join(sys.argv[1:])
    result = pretrain(cfg, command=command, on_error=getattr(args, "on_error", "raise"))
    if result.is_main:
        t = result.timings
        done = result.steps - result.train.start_step
        per_step = f", {result.train_wall_s / done:.2f} s/step" if done else ""
        print(
            f"pretrained {cfg.model} to step {result.steps} in {result.wall_s:.1f} s "
            f"(data {t.get('data', 0):.1f} s, training {result.train_wall_s:.1f} s{per_step}, "
            f"eval {t.get('eval', 0):.1f} s); final weights: {result.final_dir}"
        )
        ev = result.eval or {}
        model_ev, base = ev.get("model") or {}, ev.get("mean_baseline") or {}

        def show(d: dict, key: str) -> str:
            return f"{d[key]:.4f}" if d.get(key) is not None else "n/a"

        if model_ev:
            untrained = ev.get("untrained") or {}
            print(
                f"held-out reconstruction loss ({ev.get('loss_space')} MSE): masked patches "
                f"{show(model_ev, 'loss_inpaint')} (untrained {show(untrained, 'loss_inpaint')}, "
                f"mean baseline {show(base, 'loss_inpaint')}); dropped sequences "
                f"{show(model_ev, 'loss_synth')} (untrained {show(untrained, 'loss_synth')}, "
                f"mean baseline {show(base, 'loss_synth')})"
            )
    return 0
