"""Training configurations: dataclasses loaded from YAML/JSON, overridden from the command line.

:class:`TrainerConfig` holds what the generic loop (:class:`mrfound.pretrain.trainer.Trainer`) needs and is
reused by fine-tuning; :class:`PretrainConfig` adds the data and model of masked-modality pretraining.

Precedence, lowest first: dataclass defaults < the run's saved ``config.json`` (on ``--resume``) <
``--config FILE`` < ``--set key=value`` < explicit command-line flags. Values given as strings (``--set``)
are converted to the field's type; dotted keys reach into dict fields (``--set mae.mask_ratio=0.8``).
Every problem raises :class:`mrfound.errors.ConfigError` with one line naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

from mrfound.errors import ConfigError

MIXED_PRECISION = ("no", "bf16", "fp16")

C = TypeVar("C", bound="TrainerConfig")


@dataclass
class TrainerConfig:
    """Settings of the generic training loop (optimisation, logging, checkpoints).

    Attributes:
        out: Run folder; gets ``config.json``, ``log.jsonl``, ``tb/``, ``checkpoints/``, ``final/``.
        steps: Number of optimizer steps (each of ``grad_accum`` micro-batches per process).
        batch_size: Micro-batch size per process.
        lr: Peak learning rate (after warm-up) for parameter groups without their own ``lr``.
        min_lr: Learning rate at the end of the cosine decay (scaled alike for groups with their own lr).
        weight_decay: AdamW decoupled weight decay (not applied to biases, norms and embeddings).
        betas: AdamW betas.
        warmup_steps: Linear warm-up length; ``None`` = 5 % of ``steps``.
        grad_accum: Micro-batches accumulated per optimizer step.
        clip_grad: Max global gradient norm; ``None`` or 0 disables clipping (the norm is still logged).
        mixed_precision: ``no``, ``bf16`` (CPU or GPU) or ``fp16`` (CUDA only, with loss scaling).
        ema: Decay of an exponential moving average of the weights (e.g. 0.999); ``None`` = off. When on,
            the exported final weights are the EMA ones.
        seed: Seeds weight init, data order, augmentation and masking.
        num_workers: DataLoader worker processes per training process.
        log_every: Steps between ``log.jsonl``/TensorBoard entries.
        save_every: Steps between training-state checkpoints (0 = only at the end).
        keep_checkpoints: How many of the newest checkpoints to keep.
        skip_nonfinite: Skip (and count) a step whose loss or gradient is NaN/Inf instead of stopping.
        resume: Continue from the newest complete checkpoint in ``out/checkpoints``.
        tensorboard: Also write TensorBoard event files under ``out/tb``.
        cpu: Train on CPU even if a GPU is present.
    """

    out: str = ""
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1.5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int | None = None
    grad_accum: int = 1
    clip_grad: float | None = 1.0
    mixed_precision: str = "no"
    ema: float | None = None
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    skip_nonfinite: bool = False
    resume: bool = False
    tensorboard: bool = True
    cpu: bool = False

    # keys that may differ between a run and its resumption without changing what is computed
    RESUMABLE_CHANGES: typing.ClassVar[frozenset[str]] = frozenset(
        {
            "out",
            "resume",
            "steps",
            "log_every",
            "save_every",
            "keep_checkpoints",
            "num_workers",
            "tensorboard",
            "skip_nonfinite",
            "cpu",
        }
    )

    def validate(self) -> None:
        """Check ranges and choices; raise :class:`ConfigError` naming the key."""
        _check(bool(self.out), "out", self.out, "a run folder is required (--out RUN)")
        _check(_is_int(self.steps) and self.steps > 0, "steps", self.steps, "must be a positive integer")
        _check(
            _is_int(self.batch_size) and self.batch_size > 0,
            "batch_size",
            self.batch_size,
            "must be a positive integer",
        )
        _check(_finite(self.lr) and self.lr > 0, "lr", self.lr, "must be a positive number")
        _check(
            _finite(self.min_lr) and 0 <= self.min_lr <= self.lr,
            "min_lr",
            self.min_lr,
            f"must be between 0 and lr ({self.lr})",
        )
        _check(
            _finite(self.weight_decay) and self.weight_decay >= 0,
            "weight_decay",
            self.weight_decay,
            "must be >= 0",
        )
        _check(
            len(self.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in self.betas),
            "betas",
            self.betas,
            "must be two numbers in [0, 1)",
        )
        if self.warmup_steps is not None:
            _check(
                _is_int(self.warmup_steps) and 0 <= self.warmup_steps <= self.steps,
                "warmup_steps",
                self.warmup_steps,
                f"must be an integer between 0 and steps ({self.steps})",
            )
        _check(
            _is_int(self.grad_accum) and self.grad_accum > 0,
            "grad_accum",
            self.grad_accum,
            "must be a positive integer",
        )
        if self.clip_grad is not None:
            _check(
                _finite(self.clip_grad) and self.clip_grad >= 0,
                "clip_grad",
                self.clip_grad,
                "must be >= 0 (0 or null disables clipping)",
            )
        _check(
            self.mixed_precision in MIXED_PRECISION,
            "mixed_precision",
            self.mixed_precision,
            f"must be one of {', '.join(MIXED_PRECISION)}",
        )
        if self.ema is not None:
            _check(
                _finite(self.ema) and 0 < self.ema < 1,
                "ema",
                self.ema,
                "must be a decay in (0, 1), e.g. 0.999, or null",
            )
        _check(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "must be a non-negative integer")
        _check(
            _is_int(self.num_workers) and self.num_workers >= 0,
            "num_workers",
            self.num_workers,
            "must be >= 0",
        )
        _check(
            _is_int(self.log_every) and self.log_every > 0,
            "log_every",
            self.log_every,
            "must be a positive integer",
        )
        _check(
            _is_int(self.save_every) and self.save_every >= 0,
            "save_every",
            self.save_every,
            "must be >= 0 (0 = only at the end)",
        )
        _check(
            _is_int(self.keep_checkpoints) and self.keep_checkpoints >= 1,
            "keep_checkpoints",
            self.keep_checkpoints,
            "must be >= 1",
        )

    @property
    def resolved_warmup_steps(self) -> int:
        """Warm-up length actually used (5 % of ``steps`` when not set)."""
        if self.warmup_steps is None:
            return int(round(0.05 * self.steps))
        return int(self.warmup_steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, source: str = "config") -> C:
        """Build from a mapping; unknown keys and wrongly typed values raise :class:`ConfigError`."""
        return apply_overrides(cls(), data, source=source)


@dataclass
class PretrainConfig(TrainerConfig):
    """Masked-modality autoencoder pretraining (``mrfound pretrain``).

    Attributes:
        manifest: One or more manifest CSVs; their cases are pooled (e.g. phantom + CHAOS).
        model: Registry size name (``tiny``, ``small``, ``base``).
        model_overrides: Encoder config fields to change, e.g. ``{"depth": 2}``.
        mae: Masked-autoencoder config fields to change, e.g. ``{"mask_ratio": 0.8}``.
        roi_size: Crop edge in voxels (also the encoder's input size).
        spacing: Isotropic voxel size in mm of the common grid.
        preprocess: Further :class:`mrfound.data.preprocess.PreprocessConfig` fields.
        cache_dir: Preprocessing cache folder (default ``OUT/cache``).
        samples_per_case: Random crops drawn per case per epoch.
        lesion_crops: Share of the training crops placed around the case's lesion position (manifest
            ``lesion_x/y/z`` or mask label 2; the class label is never used) with a random shift of up
            to a quarter ROI; the rest anywhere in the body. Cases without a lesion position always get
            a body crop.
        eval_fraction: Share of subjects held out for reconstruction evaluation and figures (0 = none).
        eval_every: Steps between held-out evaluations logged to ``log.jsonl`` (0 = only at the end).
        eval_max_cases: Cap on held-out cases evaluated (``None`` = all).
        viz_every: Steps between reconstruction figures (0 = only at the end).
        viz_cases: Held-out cases shown per figure.
    """

    manifest: list[str] = field(default_factory=list)
    model: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    mae: dict[str, Any] = field(default_factory=dict)
    roi_size: int = 64
    spacing: float = 1.5
    preprocess: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    samples_per_case: int = 1
    lesion_crops: float = 0.0
    eval_fraction: float = 0.1
    eval_every: int = 0
    eval_max_cases: int | None = None
    viz_every: int = 0
    viz_cases: int = 3

    RESUMABLE_CHANGES: typing.ClassVar[frozenset[str]] = TrainerConfig.RESUMABLE_CHANGES | frozenset(
        {"cache_dir", "eval_every", "eval_max_cases", "viz_every", "viz_cases"}
    )

    def validate(self) -> None:
        """Check ranges (see :meth:`TrainerConfig.validate`) and the data/model fields."""
        super().validate()
        _check(len(self.manifest) > 0, "manifest", self.manifest, "at least one manifest is required")
        _check(bool(self.model), "model", self.model, "a model size name is required")
        _check(
            _is_int(self.roi_size) and self.roi_size > 0,
            "roi_size",
            self.roi_size,
            "must be a positive integer",
        )
        _check(
            _finite(self.spacing) and self.spacing > 0, "spacing", self.spacing, "must be a positive number"
        )
        _check(
            _is_int(self.samples_per_case) and self.samples_per_case > 0,
            "samples_per_case",
            self.samples_per_case,
            "must be a positive integer",
        )
        _check(
            _finite(self.lesion_crops) and 0 <= self.lesion_crops <= 1,
            "lesion_crops",
            self.lesion_crops,
            "must be in [0, 1]",
        )
        _check(
            _finite(self.eval_fraction) and 0 <= self.eval_fraction < 1,
            "eval_fraction",
            self.eval_fraction,
            "must be in [0, 1)",
        )
        _check(
            _is_int(self.eval_every) and self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0"
        )
        if self.eval_max_cases is not None:
            _check(
                _is_int(self.eval_max_cases) and self.eval_max_cases > 0,
                "eval_max_cases",
                self.eval_max_cases,
                "must be a positive integer or null",
            )
        _check(_is_int(self.viz_every) and self.viz_every >= 0, "viz_every", self.viz_every, "must be >= 0")
        _check(_is_int(self.viz_cases) and self.viz_cases >= 0, "viz_cases", self.viz_cases, "must be >= 0")


# --------------------------------------------------------------------------------------------------
# loading and overriding


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file into a dict.

    Raises:
        ConfigError: missing/unreadable file, syntax error, or not a mapping at the top level.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p}: cannot read ({e})") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml/json syntax errors carry line numbers in their message
        msg = " ".join(str(e).split())
        raise ConfigError(f"config file {p}: cannot parse ({msg})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_set_options(items: Iterable[str] | None) -> dict[str, str]:
    """Turn ``["lr=1e-3", "mae.mask_ratio=0.8"]`` into ``{"lr": "1e-3", "mae.mask_ratio": "0.8"}``."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(config: C, overrides: Mapping[str, Any], *, source: str = "config") -> C:
    """Return a copy of ``config`` with ``overrides`` applied (values converted to the field types).

    Args:
        config: Base config.
        overrides: ``key -> value``; a value may be a string (converted) or already typed. A dotted key
            ``a.b`` sets entry ``b`` of dict field ``a``.
        source: Where the overrides come from, for error messages (``--set``, a file name).

    Raises:
        ConfigError: unknown key (with a suggestion) or a value that cannot be converted.
    """
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    values = {n: getattr(config, n) for n in names}
    values = json.loads(json.dumps(values, default=list))  # deep copy; tuples -> lists
    for key, raw in overrides.items():
        head, _, rest = str(key).partition(".")
        if head not in names:
            close = difflib.get_close_matches(head, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {head!r}{hint}")
        if rest:
            if typing.get_origin(hints[head]) not in (dict, Mapping) and hints[head] is not dict:
                raise ConfigError(f"{source}: key {head!r} is not a mapping, cannot set {key!r}")
            sub = dict(values[head] or {})
            sub[rest] = _parse_scalar(raw) if isinstance(raw, str) else raw
            values[head] = sub
        else:
            values[head] = _coerce(raw, hints[head], head, source)
    for n in names:  # typed copy of untouched fields, e.g. betas list -> tuple
        values[n] = _coerce(values[n], hints[n], n, source)
    return type(config)(**values)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert ``value`` (a string from the CLI or a parsed YAML/JSON value) to type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        return _coerce(value, non_none[0], key, source)
    bad = ConfigError(f"{source}: key {key!r}: cannot use {value!r} as {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    if origin in (list, tuple):
        if isinstance(value, str):
            s = value.strip()
            value = _parse_scalar(s) if s.startswith("[") else [v for v in s.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{source}: key {key!r}: expected {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [v if item is Any else _coerce(v, item, key, source) for v in value]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if isinstance(value, str):
            value = _parse_scalar(value)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    return value


def _parse_scalar(text: str) -> Any:
    """Parse a ``--set`` value for a dict entry: JSON/YAML scalar or collection, else the string."""
    import yaml

    try:
        v = yaml.safe_load(text)
    except Exception:
        return text
    if isinstance(v, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            return v
    return v


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check(ok: bool, key: str, value: Any, problem: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} = {value!r}: {problem}")


def config_diff(a: TrainerConfig, b: TrainerConfig, ignore: Iterable[str] = ()) -> list[str]:
    """Keys whose values differ between two configs of the same class (for resume checks)."""
    da, db = a.to_dict(), b.to_dict()
    skip = set(ignore)
    return [k for k in da if k not in skip and da[k] != db.get(k)]
