"""Manifest validation: every problem of a manifest and its files, not just the first.

:func:`validate_manifest` decodes the CSV leniently (a non-UTF-8 or semicolon-separated file is
reported, then still read), checks every row and opens every referenced file once: the header first
(cheap), then the voxels (needed for NaN/Inf, constant images and mask values). The result is a
:class:`ValidationReport` with one :class:`Problem` per finding plus a summary (sequence availability
per centre, class counts). With ``--on-error skip`` the CLI splits the rows into ``clean.csv`` and
``rejected.csv`` (with a ``reason`` column) through :meth:`ValidationReport.write_split`.

Severities: ``error`` (the row or file cannot be used; exit code 2), ``warning`` (suspicious but usable)
and ``info`` (e.g. an alias column mapped to its canonical sequence). Column- and file-level errors
(a misspelt sequence column, a semicolon-separated file) do not reject rows: ``write_split`` writes a
fixed, comma-separated UTF-8 CSV.
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mrfound.data.manifest import (
    LESION_COLUMNS,
    RESERVED_COLUMNS,
    map_columns,
    parse_lesion,
    parse_table,
    resolve_path,
)
from mrfound.data.readers import (
    ImageHeader,
    ImageReadError,
    read_image,
    world_bounds,
    world_to_voxel,
)
from mrfound.data.sequences import DEFAULT_VOCABULARY, SEQUENCE_ALIASES, Vocabulary, normalise_name
from mrfound.errors import ManifestError

MASK_VALUES = (0, 1, 2, 3)


@dataclass
class Problem:
    """One finding.

    Attributes:
        row: 1-based data row (the header is row 0), ``None`` for file- or column-level problems.
        case: Case id of the row ("" if none).
        column: Manifest column concerned, or ``None``.
        problem: What is wrong, in words.
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        code: Stable short identifier (e.g. ``missing_file``) for programs and tests.
    """

    row: int | None
    case: str
    column: str | None
    problem: str
    severity: str = "error"
    code: str = ""

    def __str__(self) -> str:
        where = []
        if self.case:
            where.append(f"case {self.case}")
        elif self.row is not None:
            where.append(f"row {self.row}")
        if self.column:
            where.append(f"column {self.column}")
        prefix = ", ".join(where) if where else "manifest"
        return f"{prefix}: {self.problem}"


@dataclass
class FileCheck:
    """What was learnt about one file (shared by every row that references it)."""

    header: ImageHeader | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)  # (code, message)
    mask_values: list[float] | None = None


@dataclass
class ValidationReport:
    """Everything :func:`validate_manifest` found.

    Attributes:
        path: The manifest.
        frame: The raw table (strings), original column names; empty if unreadable.
        problems: Every finding, in file order.
        availability: Centre x sequence table of counts of available sequences (plus ``cases``).
        class_counts: Class -> count (``unlabeled`` for empty labels; unknown labels as written).
        column_map: Manifest column -> canonical sequence.
    """

    path: Path
    frame: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    availability: pd.DataFrame = field(default_factory=pd.DataFrame)
    class_counts: dict[str, int] = field(default_factory=dict)
    column_map: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        """Problems of severity ``error``."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        """No errors (warnings and infos allowed)."""
        return not self.errors

    def row_reasons(self) -> dict[int, list[str]]:
        """1-based data row -> its errors (rows without errors absent)."""
        out: dict[int, list[str]] = {}
        for p in self.errors:
            if p.row is not None:
                col = f"{p.column}: " if p.column else ""
                out.setdefault(p.row, []).append(f"{col}{p.problem}")
        return out

    def format_summary(self) -> str:
        """Availability table and class counts as text."""
        lines = [f"manifest {self.path} ({len(self.frame)} rows)"]
        if len(self.availability):
            lines.append("sequence availability per centre (cases with the sequence):")
            lines.append(self.availability.to_string())
        if self.class_counts:
            lines.append("classes: " + ", ".join(f"{k} {v}" for k, v in self.class_counts.items()))
        return "\n".join(lines)

    def format_problems(self) -> list[str]:
        """One line per problem: ``severity  case X, column Y: problem``."""
        return [f"{p.severity:7s} {p}" for p in self.problems]

    def write_split(self, out_dir: str | os.PathLike, prefix: str = "") -> tuple[Path, Path, int, int]:
        """Write ``clean.csv`` (rows without errors) and ``rejected.csv`` (with ``reason``) atomically.

        Relative paths are rewritten relative to ``out_dir`` so both files resolve the same images.
        ``prefix`` is prepended to both names (several manifests split into one folder).

        Returns:
            ``(clean_path, rejected_path, n_clean, n_rejected)``.
        """
        from mrfound.utils.io import atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        frame = self.frame.copy()
        path_cols = [c for c in frame.columns if c in self.column_map or c == "mask"]
        root = Path(os.path.abspath(self.path.parent))
        out_abs = Path(os.path.abspath(out))
        if out_abs != root:
            for c in path_cols:
                frame[c] = [_rebase(v, root, out_abs) for v in frame[c]]
        reasons = self.row_reasons()
        bad = [i + 1 in reasons for i in range(len(frame))]
        clean = frame[[not b for b in bad]]
        rejected = frame[bad].copy()
        rejected["reason"] = ["; ".join(reasons[i + 1]) for i in range(len(frame)) if bad[i]]
        clean_path = atomic_write_text(out / f"{prefix}clean.csv", clean.to_csv(index=False))
        rejected_path = atomic_write_text(out / f"{prefix}rejected.csv", rejected.to_csv(index=False))
        return clean_path, rejected_path, len(clean), len(rejected)


def _rebase(value: str, root: Path, new_root: Path) -> str:
    if not value or os.path.isabs(os.path.expanduser(value)):
        return value
    return os.path.relpath(resolve_path(value, root), new_root)


def _suggest(column: str, vocabulary: Vocabulary) -> str | None:
    """Closest sequence name or alias for an unknown column (``None`` when nothing is close)."""
    targets = {normalise_name(s): s for s in vocabulary.sequences}
    for alias, seq in {**SEQUENCE_ALIASES, **vocabulary.sequence_aliases}.items():
        if seq in vocabulary.sequences and len(normalise_name(alias)) >= 3:
            targets.setdefault(normalise_name(alias), seq)
    key = normalise_name(column)
    if not key:
        return None
    match = difflib.get_close_matches(key, list(targets), n=1, cutoff=0.8)
    return targets[match[0]] if match else None


def _looks_like_images(values: pd.Series) -> bool:
    vals = [v for v in values if v]
    if not vals:
        return False
    exts = (".nii", ".nii.gz", ".dcm", ".mha", ".nrrd")
    return sum(str(v).lower().endswith(exts) for v in vals) >= max(1, len(vals) // 2)


def _check_file(path: Path, is_mask: bool) -> FileCheck:
    """Open one file: header, then voxels; collect every problem."""
    fc = FileCheck()
    try:  # read_image checks magic, header, shape and affine before it reads the voxels (once)
        data, affine = read_image(path)
    except ImageReadError as e:
        fc.problems.append((_code_of(e.problem), f"{e.problem}: {path}"))
        return fc
    fc.header = ImageHeader(tuple(data.shape), affine, "", tuple(data.shape))
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad:
        fc.problems.append(("nan_inf", f"{n_bad} NaN/Inf voxels: {path}"))
    vals = data[finite] if n_bad else data
    if vals.size == 0 or float(vals.min()) == float(vals.max()):
        v = float(vals.min()) if vals.size else float("nan")
        if not is_mask:
            fc.problems.append(("constant", f"constant image (every voxel = {v:g}): {path}"))
    if is_mask and vals.size:
        lo, hi = float(vals.min()), float(vals.max())
        non_int = bool(np.any(vals != np.rint(vals)))
        if non_int or lo < 0 or hi > 3:
            bad_vals = np.unique(vals[~np.isin(vals, MASK_VALUES)])
            shown = ", ".join(f"{v:g}" for v in bad_vals[:8]) + (" ..." if len(bad_vals) > 8 else "")
            fc.problems.append(("mask_values", f"mask values outside {{0,1,2,3}}: {shown}: {path}"))
    return fc


def _code_of(message: str) -> str:
    table = (
        ("file not found", "missing_file"),
        ("permission denied", "permission"),
        ("is a folder", "is_folder"),
        ("not a NIfTI or DICOM", "not_nifti"),
        ("unreadable NIfTI header", "corrupt"),
        ("corrupt NIfTI", "corrupt"),
        ("unreadable", "corrupt"),
        ("not 3D", "not_3d"),
        ("too large", "too_large"),
        ("too small", "too_small"),
        ("NaN/Inf entries", "bad_affine"),
        ("singular", "bad_affine"),
    )
    for needle, code in table:
        if needle in message:
            return code
    return "unreadable"


def _overlaps(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return bool(np.all(a[0] <= b[1]) and np.all(b[0] <= a[1]))


def validate_manifest(
    path: str | os.PathLike, vocabulary: Vocabulary = DEFAULT_VOCABULARY, progress: bool | None = None
) -> ValidationReport:
    """Check a manifest and every file it references; collect every problem.

    Args:
        path: The manifest CSV.
        vocabulary: Sequence and class vocabulary.
        progress: Show a progress bar over the files (``None``: only on a terminal).

    Returns:
        The :class:`ValidationReport` (never raises for problems inside the manifest).

    Raises:
        ManifestError: only when the manifest file itself does not exist or is a folder.
    """
    from tqdm.auto import tqdm

    p = Path(path)
    table = parse_table(p)
    report = ValidationReport(path=p, frame=table.frame)
    add = report.problems.append

    if table.encoding_problem:
        add(Problem(None, "", None, table.encoding_problem, code="not_utf8"))
    if table.empty:
        add(Problem(None, "", None, "manifest is empty (no header, no rows)", code="empty"))
        return report
    if table.delimiter != ",":
        name = "semicolon" if table.delimiter == ";" else "tab"
        add(
            Problem(
                None,
                "",
                None,
                f"manifest is {name}-separated; mrfound expects comma-separated CSV "
                "(re-export with ',' as the separator; with --on-error skip, clean.csv is written "
                "comma-separated)",
                code="separator",
            )
        )
    for col in table.duplicate_columns:
        add(
            Problem(
                None, "", col, "column appears more than once (only the first is used)", code="dup_column"
            )
        )
    frame = table.frame
    if "case" not in frame.columns:
        add(
            Problem(
                None, "", "case", f"no 'case' column (columns: {list(frame.columns)})", code="no_case_column"
            )
        )
        return report
    if len(frame) == 0:
        add(Problem(None, "", None, "manifest has a header but no rows", code="header_only"))
        return report

    mapping, conflicts = map_columns(list(frame.columns), vocabulary)
    report.column_map = mapping
    for col, seq in mapping.items():
        if col != seq:
            add(Problem(None, "", col, f"column mapped to sequence {seq!r} (alias)", "info", "alias_column"))
    for seq, cols in conflicts.items():
        add(
            Problem(
                None,
                "",
                ", ".join(cols),
                f"columns all name sequence {seq!r}; keep one",
                code="conflicting_columns",
            )
        )
    for col in frame.columns:
        if col in RESERVED_COLUMNS or col in mapping:
            continue
        guess = _suggest(col, vocabulary)
        if guess is not None or _looks_like_images(frame[col]):
            hint = f"; did you mean {guess!r}?" if guess else ""
            add(
                Problem(
                    None,
                    "",
                    col,
                    f"unknown column that looks like a sequence{hint} (its files are ignored)",
                    code="misspelt_column",
                )
            )
        else:
            near = difflib.get_close_matches(col.lower(), RESERVED_COLUMNS, n=1, cutoff=0.8)
            if near:
                add(
                    Problem(
                        None,
                        "",
                        col,
                        f"unknown column; did you mean {near[0]!r}? (passed through)",
                        "warning",
                        "unknown_column",
                    )
                )
    if not mapping:
        add(
            Problem(
                None,
                "",
                None,
                "no sequence column; expected some of " + ", ".join(vocabulary.sequences),
                code="no_sequence_column",
            )
        )

    root = Path(os.path.abspath(p.parent))
    rows = frame.to_dict(orient="records")
    seq_cols = [c for c in mapping if c not in {x for cols in conflicts.values() for x in cols[1:]}]

    # every file once, with a progress bar
    files: dict[Path, bool] = {}
    for row in rows:
        for c in seq_cols:
            if row[c]:
                files.setdefault(resolve_path(row[c], root), False)
        if row.get("mask", ""):
            files[resolve_path(row["mask"], root)] = True
    checks: dict[Path, FileCheck] = {}
    disable = None if progress is None else not progress
    for f, is_mask in tqdm(files.items(), desc="checking files", unit="file", disable=disable, leave=False):
        checks[f] = _check_file(f, is_mask)

    counts = Counter(r["case"] for r in rows)
    centre_rows: list[dict[str, object]] = []
    class_counts: Counter[str] = Counter()
    for i, row in enumerate(rows, start=1):
        case = row["case"]
        centre_rows.append(
            {"center": row.get("center", "") or "(none)", **{mapping[c]: bool(row[c]) for c in seq_cols}}
        )
        if not case:
            add(Problem(i, "", "case", "empty case id", code="empty_case"))
        elif counts[case] > 1:
            add(Problem(i, case, "case", f"duplicate case id ({counts[case]} rows)", code="duplicate_case"))
        label = row.get("label", "")
        if label:
            canon = vocabulary.canonical_class(label)
            class_counts[canon or label] += 1
            if canon is None:
                add(
                    Problem(
                        i,
                        case,
                        "label",
                        f"unknown label {label!r}; known: {', '.join(vocabulary.classes)}",
                        code="unknown_label",
                    )
                )
        else:
            class_counts["unlabeled"] += 1
        present = [c for c in seq_cols if row[c]]
        if not present:
            add(Problem(i, case, None, "row has no sequence", code="no_sequence"))
        bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        headers: dict[str, ImageHeader] = {}
        for c in present + (["mask"] if row.get("mask", "") else []):
            f = resolve_path(row[c], root)
            fc = checks[f]
            for code, msg in fc.problems:
                add(Problem(i, case, c, msg, code=code))
            if fc.header is not None and not fc.problems:
                headers[c] = fc.header
                bounds[c] = world_bounds(fc.header.shape, fc.header.affine)
        if "mask" in bounds:
            img_bounds = [b for c, b in bounds.items() if c != "mask"]
            if img_bounds and not any(_overlaps(bounds["mask"], b) for b in img_bounds):
                add(
                    Problem(
                        i,
                        case,
                        "mask",
                        "mask's world extent does not overlap any image of the case "
                        "(wrong affine or wrong file?)",
                        code="mask_no_overlap",
                    )
                )
        xyz, lesion_problem = parse_lesion(row)
        if lesion_problem:
            add(Problem(i, case, "lesion_x", lesion_problem, code="bad_lesion"))
        elif xyz is not None:
            ref = "mask" if "mask" in headers else next((c for c in present if c in headers), None)
            if ref is not None:
                h = headers[ref]
                v = world_to_voxel(np.asarray(xyz), h.affine)
                if np.any(v < -0.5) or np.any(v > np.asarray(h.shape) - 0.5):
                    add(
                        Problem(
                            i,
                            case,
                            "lesion_x",
                            f"lesion point {tuple(round(x, 1) for x in xyz)} mm lies "
                            f"outside the image grid of column {ref!r} (voxel {np.round(v, 1).tolist()}, "
                            f"shape {list(h.shape)})",
                            code="lesion_outside",
                        )
                    )

    if centre_rows:
        avail = pd.DataFrame(centre_rows)
        seq_names = [s for s in vocabulary.sequences if s in avail.columns]
        table_ = (
            avail.groupby("center")[seq_names].sum().astype(int)
            if seq_names
            else pd.DataFrame(index=sorted(avail["center"].unique()))
        )
        table_.insert(0, "cases", avail.groupby("center").size())
        report.availability = table_
    report.class_counts = dict(sorted(class_counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return report


def require_valid(path: str | os.PathLike, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> ValidationReport:
    """Validate and raise ``ManifestError`` with the first error (the count of the others) if any."""
    report = validate_manifest(path, vocabulary, progress=False)
    if report.errors:
        first = report.errors[0]
        more = (
            f" (and {len(report.errors) - 1} more; run 'mrfound validate')" if len(report.errors) > 1 else ""
        )
        raise ManifestError(f"{first.problem}{more}", case=first.case or None, column=first.column)
    return report


__all__ = ["Problem", "ValidationReport", "require_valid", "validate_manifest", "LESION_COLUMNS"]
