"""Checkpoint folders: ``config.json`` + ``model.safetensors`` (DESIGN §4). No pickle, ever.

``config.json`` holds::

    format_version   int, layout of this folder (this mrfound writes and reads FORMAT_VERSION)
    mrfound_version  version that wrote it (a different major version is refused)
    architecture     name in ARCHITECTURES, e.g. "masked_modality_autoencoder", "multi_sequence_vit"
    encoder          EncoderConfig.to_dict()
    mae / head       architecture-specific configs (MAEConfig.to_dict(), head configs)
    vocabulary       mrfound.data.sequences.Vocabulary.to_dict()
    preprocessing    PreprocessConfig.to_dict() (spacing, ROI size, percentiles...)
    provenance       free-form: run, step, data, time, torch version...
    local_contrast   optional, autoencoders: per-sequence imputation calibration (``mrfound calibrate``,
                     :mod:`mrfound.calibration`), applied by ``impute`` by default

Names are resolved by :func:`resolve_checkpoint`: an existing folder; ``hf://owner/repo[@revision]``
through ``huggingface_hub.snapshot_download`` (only ``config.json`` and ``model.safetensors`` are
fetched; honours ``HF_HUB_OFFLINE`` and the local HF cache); or a registry name, a folder under
``$MRFOUND_HOME/models/`` (``$MRFOUND_HOME`` defaults to ``~/.cache/mrfound``) that may not escape it.

Other architectures (classification / segmentation heads) join with :func:`register_architecture`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrfound.errors import CheckpointError, ConfigError, MrfoundError
from mrfound.utils.io import atomic_dir

FORMAT_VERSION = 1
"""Checkpoint folder layout version written (and the newest read) by this mrfound."""

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
"""File types that carry pickles (torch.save, Lightning, HF .bin); refused."""

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,3}")
_HF_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HF_RE = re.compile(
    rf"hf://(?P<repo>{_HF_PART}/{_HF_PART})(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._/-]{{0,127}}))?"
)

Builder = Callable[[Mapping[str, Any]], nn.Module]
ARCHITECTURES: dict[str, Builder] = {}
"""Architecture name -> function building the (untrained) model from a checkpoint config."""


def register_architecture(name: str, builder: Builder) -> None:
    """Make ``name`` loadable: ``builder(config_dict)`` returns the model with random weights."""
    ARCHITECTURES[name] = builder


def _build_vit(cfg: Mapping[str, Any]) -> nn.Module:
    from mrfound.models.config import EncoderConfig
    from mrfound.models.encoder import MultiSequenceViT

    return MultiSequenceViT(EncoderConfig.from_dict(cfg["encoder"]))


def _build_mae(cfg: Mapping[str, Any]) -> nn.Module:
    from mrfound.models.config import EncoderConfig, MAEConfig
    from mrfound.models.mae import MaskedModalityAutoencoder

    return MaskedModalityAutoencoder(
        EncoderConfig.from_dict(cfg["encoder"]), MAEConfig.from_dict(cfg.get("mae", {}))
    )


register_architecture("multi_sequence_vit", _build_vit)
register_architecture("masked_modality_autoencoder", _build_mae)

PLUGIN_MODULES = ("mrfound.models.heads",)
"""Modules that register further architectures on import; loaded when a config names an unknown one,
so that a fresh process can load e.g. a classifier checkpoint without importing the heads first."""


def _known_architecture(name: Any) -> bool:
    if name in ARCHITECTURES:
        return True
    import importlib

    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
    return name in ARCHITECTURES


def mrfound_home() -> Path:
    """``$MRFOUND_HOME`` or ``~/.cache/mrfound``."""
    return Path(os.environ.get("MRFOUND_HOME") or "~/.cache/mrfound").expanduser()


def _version() -> str:
    import mrfound

    return mrfound.__version__


def _major(version: Any) -> int | None:
    m = re.match(r"\s*(\d+)\.", str(version))
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------- resolve
def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """Find the checkpoint folder for a path, a registry name or ``hf://owner/repo[@revision]``.

    Args:
        name_or_path: Folder (or its ``config.json``/``model.safetensors``), registry name under
            ``$MRFOUND_HOME/models``, or ``hf://owner/repo[@revision]``.
        cache_dir: Hugging Face cache folder (default: the hub's own, ``$HF_HUB_CACHE``).
        local_files_only: Never contact the Hub (``HF_HUB_OFFLINE=1`` has the same effect).

    Returns:
        The resolved folder holding ``config.json``.

    Raises:
        CheckpointError: Pickle file, bad name, not found, escaping the registry, download failure.
    """
    text = os.fspath(name_or_path)
    if text.startswith("hf://"):
        return _resolve_hf(text, cache_dir, local_files_only)
    path = Path(text).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{text}: pickle checkpoints ({', '.join(PICKLE_SUFFIXES)}) are refused because loading them can "
            f"run arbitrary code; use a folder with {CONFIG_NAME} + {WEIGHTS_NAME}"
        )
    if path.exists():
        if path.is_file():
            if path.name in (CONFIG_NAME, WEIGHTS_NAME):
                path = path.parent
            else:
                raise CheckpointError(f"{text}: is a file; expected a checkpoint folder with {CONFIG_NAME}")
        _require_config(path)
        return path.resolve()
    if path.is_absolute() or text.startswith(("./", "../", "~")):
        raise CheckpointError(f"{text}: no such checkpoint folder")
    return _resolve_registry(text)


def _require_config(folder: Path) -> None:
    if (folder / CONFIG_NAME).is_file():
        return
    pickles = (
        sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if folder.is_dir()
        else []
    )
    if pickles:
        raise CheckpointError(
            f"{folder}: holds pickle file(s) {', '.join(pickles)} and no {CONFIG_NAME}; "
            "pickle checkpoints are "
            "refused because loading them can run arbitrary code"
        )
    raise CheckpointError(f"{folder}: not a checkpoint folder (no {CONFIG_NAME})")


def _resolve_registry(name: str) -> Path:
    home = mrfound_home() / "models"
    parts = name.split("/")
    if not _NAME_RE.fullmatch(name) or any(p in (".", "..") for p in parts):
        raise CheckpointError(
            f"{name!r}: not an existing folder and not a valid model name (letters, digits, '.', '_', '-', "
            "optionally one level of '/'; no '..' or absolute paths)"
        )
    candidate = home / name
    resolved = candidate.resolve()
    if not resolved.is_relative_to(home.resolve()):
        raise CheckpointError(f"model name {name!r} resolves to {resolved}, outside {home}; refused")
    if not resolved.is_dir():
        known = sorted(p.name for p in home.iterdir() if p.is_dir()) if home.is_dir() else []
        raise CheckpointError(
            f"{name!r}: no such folder and no model of that name in {home} "
            f"(known: {', '.join(known) if known else 'none'}; set MRFOUND_HOME to change the registry)"
        )
    _require_config(resolved)
    return resolved


def parse_hf_id(text: str) -> tuple[str, str | None]:
    """Validate ``hf://owner/repo[@revision]`` strictly (before any request) -> (repo_id, revision)."""
    m = _HF_RE.fullmatch(text)
    bad = m is None or ".." in text or "--" in m.group("repo") or m.group("repo").endswith(".git")
    if bad:
        raise CheckpointError(
            f"{text!r}: not a valid Hugging Face id; expected hf://owner/repo or hf://owner/repo@revision "
            "(letters, digits, '.', '_', '-')"
        )
    return m.group("repo"), m.group("revision")


def _resolve_hf(text: str, cache_dir: str | os.PathLike | None, local_files_only: bool) -> Path:
    repo_id, revision = parse_hf_id(text)
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id=repo_id,
            revision=revision,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=local_files_only,
        )
    except Exception as exc:  # the hub raises many types (HTTP, offline, not found, validation)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{text}: could not get it from the Hugging Face Hub ({type(exc).__name__}: {msg})"
        ) from exc
    path = Path(folder)
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{text}: the repository has no {CONFIG_NAME}; not an mrfound checkpoint")
    return path


# ---------------------------------------------------------------------------------------------- config
def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``config.json`` of a checkpoint folder (format, version, architecture, configs)."""
    path = Path(folder) / CONFIG_NAME
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    validate_config(cfg, source=str(path))
    return cfg


def validate_config(cfg: Any, source: str = CONFIG_NAME) -> None:
    """Raise ``CheckpointError`` unless ``cfg`` is a config this mrfound can build."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: must be a JSON object")
    fmt = cfg.get("format_version")
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise CheckpointError(f"{source}: format_version must be a positive int, got {fmt!r}")
    if fmt > FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format {fmt} is newer than this mrfound reads ({FORMAT_VERSION}); "
            f"upgrade mrfound (it was written by mrfound {cfg.get('mrfound_version', '?')})"
        )
    written, ours = _major(cfg.get("mrfound_version")), _major(_version())
    if written is None:
        raise CheckpointError(
            f"{source}: mrfound_version missing or malformed: {cfg.get('mrfound_version')!r}"
        )
    if written != ours:
        raise CheckpointError(
            f"{source}: written by mrfound {cfg['mrfound_version']}, incompatible with this mrfound "
            f"{_version()} "
            "(different major version)"
        )
    arch = cfg.get("architecture")
    if not isinstance(arch, str) or not _known_architecture(arch):
        raise CheckpointError(
            f"{source}: unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    if not isinstance(cfg.get("encoder"), dict):
        raise CheckpointError(f"{source}: 'encoder' config missing")
    from mrfound.models.config import EncoderConfig

    try:
        encoder = EncoderConfig.from_dict(cfg["encoder"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{source}: invalid encoder config ({exc})") from None
    vocab = cfg.get("vocabulary")
    if vocab is not None and not isinstance(vocab, dict):
        raise CheckpointError(f"{source}: 'vocabulary' must be a JSON object")
    if vocab is not None and tuple(vocab.get("sequences", ())) != encoder.sequences:
        raise CheckpointError(f"{source}: vocabulary sequences differ from the encoder's sequences")


def build_model(
    cfg: Mapping[str, Any], *, device: torch.device | str | None = None, source: str = CONFIG_NAME
) -> nn.Module:
    """Build the architecture a config names, with random weights (``device="meta"`` for shapes only)."""
    validate_config(dict(cfg), source=source)
    try:
        if device is None:
            return ARCHITECTURES[cfg["architecture"]](cfg)
        with torch.device(device):
            return ARCHITECTURES[cfg["architecture"]](cfg)
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{source}: invalid {cfg['architecture']} config ({exc})") from None


# ---------------------------------------------------------------------------------------------- save
def save_checkpoint(
    folder: str | os.PathLike, model: nn.Module, config: Mapping[str, Any] | None = None
) -> Path:
    """Write ``folder/config.json`` + ``folder/model.safetensors`` atomically (whole folder at once).

    Args:
        folder: Target folder (replaced atomically if it exists).
        model: An mrfound model (has ``checkpoint_config()``); ``model.module`` of a wrapper is used.
        config: Extra config entries: ``vocabulary`` (dict), ``preprocessing`` (dict), ``provenance``
            (dict), ``head``... The model's own architecture/encoder/mae entries always win. A missing
            vocabulary defaults to the encoder's sequences with the default classes; missing
            preprocessing to ``PreprocessConfig(roi_size=img_size)``.

    Returns:
        The folder.
    """
    model = getattr(model, "module", model)  # DDP / accelerate wrappers
    model = getattr(model, "_orig_mod", model)  # torch.compile
    if not hasattr(model, "checkpoint_config"):
        raise CheckpointError(
            f"cannot save {type(model).__name__}: not an mrfound model (no checkpoint_config)"
        )
    from safetensors.torch import save_file

    from mrfound.data.sequences import Vocabulary

    arch_cfg = model.checkpoint_config()
    cfg: dict[str, Any] = {"format_version": FORMAT_VERSION, "mrfound_version": _version()}
    cfg.update(dict(config or {}))
    cfg.update(arch_cfg)
    cfg["format_version"], cfg["mrfound_version"] = FORMAT_VERSION, _version()
    seqs = list(arch_cfg["encoder"]["sequences"])
    if cfg.get("vocabulary") is None:
        cfg["vocabulary"] = Vocabulary(sequences=tuple(seqs)).to_dict()
    elif hasattr(cfg["vocabulary"], "to_dict"):
        cfg["vocabulary"] = cfg["vocabulary"].to_dict()
    if cfg.get("preprocessing") is None:
        cfg["preprocessing"] = _default_preprocessing(arch_cfg["encoder"]["img_size"])
    elif hasattr(cfg["preprocessing"], "to_dict"):
        cfg["preprocessing"] = cfg["preprocessing"].to_dict()
    provenance = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }
    provenance.update(dict(cfg.get("provenance") or {}))
    cfg["provenance"] = provenance
    validate_config(cfg, source="config")
    try:
        text = json.dumps(cfg, indent=2, default=_json_default) + "\n"
    except TypeError as exc:
        raise CheckpointError(f"checkpoint config is not JSON-serialisable: {exc}") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(folder) as tmp:
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "mrfound_version": _version()})
    return Path(folder)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (os.PathLike, Path)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _default_preprocessing(img_size: Any) -> dict[str, Any]:
    roi = img_size if isinstance(img_size, int) else list(img_size)
    try:
        from mrfound.data.preprocess import PreprocessConfig
    except ImportError:
        return {"roi_size": roi}
    try:
        return PreprocessConfig(roi_size=roi).to_dict()
    except (TypeError, ValueError, MrfoundError):
        return {"roi_size": roi}


# ---------------------------------------------------------------------------------------------- load
def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        folder = path.parent
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{folder}: has pickle file(s) {', '.join(pickles)} but no {WEIGHTS_NAME}; "
                "pickle checkpoints "
                "are refused because loading them can run arbitrary code"
            )
        raise CheckpointError(f"{path}: missing")
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    # safetensors: u64 little-endian header length, then a JSON header starting with '{'
    header_ok = len(head) == 9 and 0 < int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"
    looks_pickled = head.startswith(b"PK\x03\x04") or (
        head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"
    )
    if not header_ok and looks_pickled:
        raise CheckpointError(
            f"{path}: is a pickle / torch.save file, not safetensors; "
            "refused because loading pickles can run "
            "arbitrary code"
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None


def _describe(names: list[str]) -> str:
    shown = ", ".join(names[:6])
    return shown + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``CheckpointError`` naming missing, unexpected and wrongly shaped tensors."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing tensors {_describe(missing)}")
    if extra:
        problems.append(f"unexpected tensors {_describe(extra)}")
    if wrong:
        problems.append(f"wrong shapes {_describe(wrong)}")
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match the architecture in {CONFIG_NAME}: {'; '.join(problems)}"
        )


def load_checkpoint(
    folder: str | os.PathLike, **resolve_kwargs: Any
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a checkpoint safely and check its tensors against its architecture.

    Args:
        folder: Anything :func:`resolve_checkpoint` accepts.
        **resolve_kwargs: ``cache_dir`` / ``local_files_only`` for ``hf://`` ids.

    Returns:
        ``(config, state_dict)`` with CPU tensors.
    """
    path = resolve_checkpoint(folder, **resolve_kwargs)
    cfg = read_config(path)
    weights = path / WEIGHTS_NAME
    state_dict = _read_weights(weights)
    check_state_dict(
        build_model(cfg, device="meta", source=str(path / CONFIG_NAME)), state_dict, str(weights)
    )
    return cfg, state_dict


def load_model(
    name_or_path: str | os.PathLike, *, device: torch.device | str | None = None, **resolve_kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a checkpoint's architecture, load its weights strictly and switch to eval mode.

    Returns:
        ``(model, config)``.
    """
    cfg, state_dict = load_checkpoint(name_or_path, **resolve_kwargs)
    model = build_model(cfg)
    model.load_state_dict(state_dict, strict=True)
    model.to(device if device is not None else "cpu")
    model.eval()
    return model, cfg
