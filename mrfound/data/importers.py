"""Build a manifest from a folder: a filename-pattern importer and one for the LLD-MMRI 2023 layout.

Pattern importer (:func:`import_pattern`): a pattern such as ``"{case}/{sequence}.nii.gz"`` is matched
against every file under ``root`` (paths relative to ``root``, ``/``-separated). Tokens: ``{case}``
(required), ``{sequence}`` (matched through the vocabulary's alias table, so "T2WI" or "C+A" work; files
whose token is no known sequence are skipped and counted), ``{subject}``, ``{center}``, and ``*`` (any
text within one path part). Without ``{sequence}`` every match is one ``sequence=`` (e.g. ``t2``). An
optional mask pattern is filled with a case's tokens; ``mask_map`` (e.g. CHAOS organs -> liver)
rewrites the masks into a folder beside the manifest.

LLD-MMRI importer (:func:`import_lld_mmri`): the release holds one folder per patient (``MR-xxxx``), its
eight phase volumes either named by phase (``T2WI``, ``DWI``, ``In Phase``, ``Out Phase``, ``C-pre``,
``C+A``, ``C+V``, ``C+Delay``; ``.nii.gz``) or stored as ``<studyUID>/<seriesUID>.nii.gz``, and an
annotation JSON (``labels/Annotation.json``)::

    {"Annotation_info": {"MR-1234": [
        {"studyUID": "...", "seriesUID": "...", "phase": "C+A",
         "annotation": {"lesion": {"0": {"category": "Hepatocellular_carcinoma",
                                           "bbox": {"3D_box": {"x_min": .., "x_max": .., "y_min": ..,
                                                                "y_max": .., "z_min": .., "z_max": ..}}}}}},
        ...]}}

One manifest row per lesion (``MR-1234`` for lesion 0, ``MR-1234_1``... for others; ``subject`` is the
patient). Categories map to the class vocabulary (names or the challenge's integer codes; -1 /
"Inaccessible" = unlabelled). Box corners are voxel indices ``(x, y, z) = (i, j, k)`` of the phase's
volume (ITK index order, as the challenge's ``crop_roi.py`` uses them); the centre
``((min+max)/2, ...)`` is mapped through that volume's affine to world RAS mm, and the row's
``lesion_x/y/z`` is the median over the annotated phases (robust to one mis-registered phase).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrfound.data.manifest import Case, Manifest
from mrfound.data.readers import is_nifti_name, read_header, voxel_to_world, write_nifti
from mrfound.data.sequences import DEFAULT_VOCABULARY, Vocabulary, normalise_name
from mrfound.errors import ConfigError, ManifestError

TOKENS = ("case", "sequence", "subject", "center")

LLD_CATEGORIES: dict[str, str] = {
    "hepatichemangioma": "hemangioma",
    "intrahepaticcholangiocarcinoma": "icca",
    "hepaticabscess": "abscess",
    "hepaticmetastasis": "metastasis",
    "hepaticcyst": "cyst",
    "focalnodularhyperplasia": "fnh",
    "fnh": "fnh",
    "hepatocellularcarcinoma": "hcc",
    "hcc": "hcc",
}
"""LLD-MMRI category names (normalised) -> canonical classes."""

LLD_CODES: dict[int, str] = {
    0: "hemangioma",
    1: "icca",
    2: "abscess",
    3: "metastasis",
    4: "cyst",
    5: "fnh",
    6: "hcc",
}
"""The challenge's integer labels (its README) -> canonical classes; -1 means not disclosed."""


@dataclass
class ImportResult:
    """What an importer did.

    Attributes:
        manifest: Path of the written manifest.
        n_cases: Rows written.
        skipped: Files matched by the pattern but not used, with the reason.
        notes: Other remarks (cases without a mask, unlabelled cases...).
    """

    manifest: Path
    n_cases: int
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# pattern importer


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a ``{token}`` / ``*`` filename pattern into a regex (a repeated token must repeat)."""
    out: list[str] = []
    seen: set[str] = set()
    pos = 0
    for m in re.finditer(r"\{(\w+)\}|\*", pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        pos = m.end()
        if m.group(0) == "*":
            out.append(r"[^/]*")
            continue
        name = m.group(1)
        if name not in TOKENS:
            raise ConfigError(f"unknown token {{{name}}} in pattern {pattern!r}; use {', '.join(TOKENS)}")
        out.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+?)")
        seen.add(name)
    out.append(re.escape(pattern[pos:]))
    if "case" not in seen:
        raise ConfigError(f"pattern {pattern!r} has no {{case}} token")
    return re.compile("".join(out))


def parse_mask_map(text: str) -> dict[int, int]:
    """Parse ``"1:1,2:0,3:0"`` into ``{1: 1, 2: 0, 3: 0}``."""
    out: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        try:
            src, dst = (int(v) for v in part.split(":"))
        except ValueError as e:
            raise ConfigError(f"bad mask map entry {part!r}; expected SRC:DST integers like 1:1,2:0") from e
        if not 0 <= dst <= 3:
            raise ConfigError(f"mask map target {dst} is outside 0..3 (bg, liver, lesion, other lesion)")
        out[src] = dst
    if not out:
        raise ConfigError("empty mask map")
    return out


def remap_mask(src: Path, dst: Path, mapping: dict[int, int]) -> Path:
    """Write ``src``'s label map remapped per ``mapping`` (other values unchanged) as uint8, atomically."""
    import nibabel as nib

    img = nib.load(str(src))
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    vals = np.rint(data).astype(np.int64)
    out = vals.copy()
    for s, d in mapping.items():
        out[vals == s] = d
    if out.min() < 0 or out.max() > 255:
        raise ManifestError(
            f"mask values {int(out.min())}..{int(out.max())} do not fit uint8 after mapping", path=str(src)
        )
    return write_nifti(dst, out.astype(np.uint8), img.affine)


def _load_label_table(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise ManifestError("label table not found", path=str(p))
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    if "case" not in df.columns or "label" not in df.columns:
        raise ManifestError(
            f"label table needs 'case' and 'label' columns (has {list(df.columns)})", path=str(p)
        )
    return {r["case"]: {k: v for k, v in r.items() if k != "case"} for r in df.to_dict(orient="records")}


def import_pattern(
    root: str | os.PathLike,
    pattern: str,
    out: str | os.PathLike,
    *,
    mask_pattern: str | None = None,
    mask_map: dict[int, int] | str | None = None,
    label_table: str | os.PathLike | None = None,
    sequence: str | None = None,
    vocabulary: Vocabulary = DEFAULT_VOCABULARY,
) -> ImportResult:
    """Write a manifest for the files under ``root`` matching ``pattern``.

    Args:
        root: Folder to scan.
        pattern: e.g. ``"{case}/{sequence}.nii.gz"`` or ``"images/chaos_{case}_t2.nii.gz"``.
        out: Manifest CSV to write (paths in it are relative to its folder).
        mask_pattern: e.g. ``"labels/chaos_{case}_labels.nii.gz"`` (filled with the case's tokens).
        mask_map: Label remapping (``{src: dst}`` or ``"1:1,2:0"``); remapped masks are written to
            ``<out folder>/<out stem>_masks/``.
        label_table: CSV with ``case``, ``label`` (and optionally ``subject``, ``center``) columns.
        sequence: Sequence of every match when the pattern has no ``{sequence}`` token.
        vocabulary: Sequence and class vocabulary.

    Returns:
        :class:`ImportResult`.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise ManifestError("root folder not found", path=str(root_p))
    rx = pattern_regex(pattern)
    has_seq = "(?P<sequence>" in rx.pattern
    fixed_seq = None
    if not has_seq:
        if not sequence:
            raise ConfigError("the pattern has no {sequence} token: give the sequence (e.g. --sequence t2)")
        fixed_seq = vocabulary.canonical_sequence(sequence)
        if fixed_seq is None:
            raise ConfigError(f"unknown sequence {sequence!r}; known: {', '.join(vocabulary.sequences)}")
    if isinstance(mask_map, str):
        mask_map = parse_mask_map(mask_map)
    if mask_map and not mask_pattern:
        raise ConfigError("a mask map needs a mask pattern")
    labels = _load_label_table(label_table) if label_table else {}
    mask_rx = pattern_regex(mask_pattern) if mask_pattern and "{case}" in mask_pattern else None

    result = ImportResult(Path(out), 0)
    found: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root_p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root_p).as_posix()
            m = rx.fullmatch(rel)
            if not m or (mask_rx is not None and mask_rx.fullmatch(rel)):  # masks are not sequences
                continue
            tok = m.groupdict()
            seq = fixed_seq or vocabulary.canonical_sequence(tok["sequence"])
            if seq is None:
                result.skipped.append(f"{rel}: {tok['sequence']!r} is no known sequence")
                continue
            entry = found.setdefault(tok["case"], {"tokens": tok, "sequences": {}})
            if seq in entry["sequences"]:
                raise ManifestError(
                    f"two files for sequence {seq!r}: {entry['sequences'][seq]} and {full}", case=tok["case"]
                )
            entry["sequences"][seq] = full
    if not found:
        raise ManifestError(f"no file under the root matches pattern {pattern!r}", path=str(root_p))

    out_p = Path(out)
    mask_dir = out_p.parent / f"{out_p.stem}_masks"
    cases: list[Case] = []
    no_mask = 0
    for case_id in sorted(found):
        entry = found[case_id]
        tok = entry["tokens"]
        mask = None
        if mask_pattern:
            rel = mask_pattern
            for t in TOKENS:
                if tok.get(t) is not None:
                    rel = rel.replace("{" + t + "}", tok[t])
            cand = root_p / rel
            if cand.is_file():
                mask = cand
                if mask_map:
                    mask = remap_mask(cand, mask_dir / f"{case_id}_mask.nii.gz", mask_map)
            else:
                no_mask += 1
        info = labels.get(case_id, {})
        label = info.get("label", "") or None
        if label is not None and vocabulary.canonical_class(label) is None:
            raise ManifestError(f"unknown label {label!r} in the label table", case=case_id, column="label")
        cases.append(
            Case(
                case=case_id,
                subject=info.get("subject", "") or tok.get("subject") or case_id,
                center=info.get("center", "") or tok.get("center") or "",
                label=vocabulary.canonical_class(label) if label else None,
                sequences={
                    s: Path(os.path.abspath(p))
                    for s, p in sorted(
                        entry["sequences"].items(), key=lambda kv: vocabulary.sequences.index(kv[0])
                    )
                },
                mask=Path(os.path.abspath(mask)) if mask else None,
            )
        )
    if no_mask:
        result.notes.append(f"{no_mask} case(s) without a mask matching {mask_pattern!r}")
    if labels:
        unused = sorted(set(labels) - set(found))
        if unused:
            result.notes.append(f"{len(unused)} label-table case(s) without images, e.g. {unused[:3]}")
    Manifest.from_cases(cases, out_p.parent, vocabulary).to_csv(out_p)
    result.n_cases = len(cases)
    return result


# ----------------------------------------------------------------------------------------------------
# LLD-MMRI 2023


def lld_category(value: Any, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> str | None:
    """Map an LLD-MMRI category (name or integer code) to a class; ``None`` when not disclosed."""
    if value is None:
        return None
    if isinstance(value, int | float) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip())):
        code = int(value)
        if code < 0:
            return None
        if code not in LLD_CODES:
            raise ManifestError(f"unknown LLD-MMRI category code {code}")
        cls = LLD_CODES[code]
    else:
        key = normalise_name(value)
        if key in ("inaccessible", "unknown", ""):
            return None
        cls = LLD_CATEGORIES.get(key) or vocabulary.canonical_class(value)
        if cls is None:
            raise ManifestError(f"unknown LLD-MMRI category {value!r}")
    if cls not in vocabulary.classes:
        raise ConfigError(f"LLD-MMRI class {cls!r} is not in the class vocabulary {list(vocabulary.classes)}")
    return cls


def _find_annotations(root: Path) -> Path | None:
    for cand in (root / "labels" / "Annotation.json", root / "Annotation.json"):
        if cand.is_file():
            return cand
    hits = sorted(root.rglob("*nnotation*.json"))
    return hits[0] if hits else None


def _case_dirs(root: Path) -> dict[str, Path]:
    base = root / "images" if (root / "images").is_dir() else root
    return {
        d.name: d
        for d in sorted(base.iterdir())
        if d.is_dir() and not d.name.startswith(".") and d.name not in ("labels", "classification_dataset")
    }


def _strip_nii(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)


def import_lld_mmri(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    annotations: str | os.PathLike | None = None,
    vocabulary: Vocabulary = DEFAULT_VOCABULARY,
) -> ImportResult:
    """Write a manifest for an LLD-MMRI 2023 release folder (see the module docstring for the layout).

    Args:
        root: Release folder (holding ``images/`` or the case folders directly, and the annotation JSON).
        out: Manifest CSV to write.
        annotations: The annotation JSON (default: ``root/labels/Annotation.json`` or any
            ``*Annotation*.json`` under ``root``).
        vocabulary: Sequence and class vocabulary.

    Returns:
        :class:`ImportResult`.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise ManifestError("LLD-MMRI folder not found", path=str(root_p))
    ann_path = Path(annotations) if annotations else _find_annotations(root_p)
    ann: dict[str, Any] = {}
    result = ImportResult(Path(out), 0)
    if ann_path is not None:
        try:
            data = json.loads(Path(ann_path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"unreadable annotation JSON ({e})", path=str(ann_path)) from e
        ann = data.get("Annotation_info", data) if isinstance(data, dict) else {}
    else:
        result.notes.append("no annotation JSON found: every case is unlabelled and has no lesion position")
    dirs = _case_dirs(root_p)
    if not dirs:
        raise ManifestError(
            "no case folders found (expected MR-* folders, optionally under images/)", path=str(root_p)
        )

    cases: list[Case] = []
    for patient, folder in dirs.items():
        items = ann.get(patient, [])
        if isinstance(items, dict):
            items = [items]
        by_series = {str(it.get("seriesUID", "")): it for it in items if it.get("seriesUID")}
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_nifti_name(p.name))
        seqs: dict[str, Path] = {}
        for f in files:
            stem = _strip_nii(f.name)
            phase = by_series[stem]["phase"] if stem in by_series else stem
            seq = vocabulary.canonical_sequence(phase)
            if seq is None:
                result.skipped.append(f"{f.relative_to(root_p)}: phase {phase!r} is no known sequence")
                continue
            if seq in seqs:
                raise ManifestError(
                    f"two volumes for sequence {seq!r}: {seqs[seq].name} and {f.name}", case=patient
                )
            seqs[seq] = f
        if not seqs:
            result.skipped.append(f"{folder.relative_to(root_p)}: no phase volume found")
            continue
        # lesions: index -> (categories seen, world centres from each annotated phase)
        lesions: dict[str, dict[str, list[Any]]] = {}
        for it in items:
            seq = vocabulary.canonical_sequence(str(it.get("phase", "")))
            vol = seqs.get(seq) if seq else None
            for idx, les in ((it.get("annotation") or {}).get("lesion") or {}).items():
                rec = lesions.setdefault(str(idx), {"category": [], "centres": []})
                rec["category"].append(les.get("category"))
                box = (les.get("bbox") or {}).get("3D_box")
                if box and vol is not None:
                    centre = [(float(box[f"{a}_min"]) + float(box[f"{a}_max"])) / 2 for a in "xyz"]
                    rec["centres"].append(voxel_to_world(np.asarray(centre), read_header(vol).affine))
        ordered = {s: seqs[s] for s in vocabulary.sequences if s in seqs}
        if not lesions:
            cases.append(Case(case=patient, subject=patient, sequences=ordered))
            continue
        for idx in sorted(lesions, key=lambda k: int(k) if str(k).isdigit() else 0):
            rec = lesions[idx]
            cats = [c for c in rec["category"] if c is not None]
            label = lld_category(Counter(cats).most_common(1)[0][0], vocabulary) if cats else None
            xyz = (
                tuple(float(v) for v in np.median(np.stack(rec["centres"]), axis=0))
                if rec["centres"]
                else None
            )
            case_id = patient if str(idx) == "0" else f"{patient}_{idx}"
            cases.append(Case(case=case_id, subject=patient, label=label, sequences=ordered, lesion_xyz=xyz))  # type: ignore[arg-type]
    if not cases:
        raise ManifestError("no usable case found", path=str(root_p))
    missing = sorted(set(ann) - set(dirs))
    if missing:
        result.notes.append(f"{len(missing)} annotated case(s) without a folder, e.g. {missing[:3]}")
    out_p = Path(out)
    Manifest.from_cases(cases, out_p.parent, vocabulary).to_csv(out_p)
    result.n_cases = len(cases)
    return result
