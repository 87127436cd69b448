"""The manifest: one CSV row per case (one target lesion in one exam), DESIGN §3.

Columns: ``case`` (required, unique), ``subject`` (default: the case), ``center``, ``label`` (class
name or alias; empty = unlabeled), one column per sequence (path to a NIfTI file or DICOM series folder,
relative to the manifest's folder or absolute; empty = missing), ``mask`` (NIfTI label map 0 background,
1 liver, 2 target lesion, 3 other lesions), ``lesion_x/lesion_y/lesion_z`` (world mm, RAS+, the NIfTI
affine's frame). Other columns pass through in :attr:`Case.extra`.

Sequence columns are found through the vocabulary: a column named by an alias ("T2WI", "C+A") is
mapped to its canonical name (``mrfound validate`` reports the mapping). :func:`read_manifest` checks
the table's structure only (it opens no image); :func:`mrfound.data.validate.validate_manifest` checks
the files too and reports every problem instead of stopping at the first.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mrfound.data.sequences import DEFAULT_VOCABULARY, Vocabulary
from mrfound.errors import ManifestError

RESERVED_COLUMNS: tuple[str, ...] = (
    "case",
    "subject",
    "center",
    "label",
    "mask",
    "lesion_x",
    "lesion_y",
    "lesion_z",
)
LESION_COLUMNS: tuple[str, str, str] = ("lesion_x", "lesion_y", "lesion_z")


@dataclass
class Case:
    """One manifest row.

    Attributes:
        case: Unique row id.
        subject: Patient id (splits keep a subject on one side).
        center: Acquiring centre ("" if unknown).
        label: Canonical class name, or ``None`` if unlabeled.
        sequences: Available sequences only: canonical name -> absolute path.
        mask: Absolute path of the label map, or ``None``.
        lesion_xyz: Target-lesion centre in world mm (RAS+), or ``None``.
        extra: Pass-through columns (raw strings).
    """

    case: str
    subject: str = ""
    center: str = ""
    label: str | None = None
    sequences: dict[str, Path] = field(default_factory=dict)
    mask: Path | None = None
    lesion_xyz: tuple[float, float, float] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.subject:
            self.subject = self.case
        self.sequences = {k: Path(v) for k, v in self.sequences.items()}
        if self.mask is not None:
            self.mask = Path(self.mask)
        if self.lesion_xyz is not None:
            self.lesion_xyz = tuple(float(v) for v in self.lesion_xyz)  # type: ignore[assignment]


@dataclass
class ParsedTable:
    """A manifest CSV decoded into strings, with what was noticed on the way (used by validate).

    Attributes:
        frame: All cells as strings ("" for empty), original column names.
        encoding_problem: Message if the file is not UTF-8 (then decoded as Latin-1).
        delimiter: The delimiter used (``","`` expected).
        duplicate_columns: Column names present more than once.
        empty: The file holds nothing (not even a header).
    """

    frame: pd.DataFrame
    encoding_problem: str | None = None
    delimiter: str = ","
    duplicate_columns: list[str] = field(default_factory=list)
    empty: bool = False


def parse_table(path: str | os.PathLike) -> ParsedTable:
    """Decode a manifest CSV into a string DataFrame without judging its content.

    Non-UTF-8 bytes fall back to Latin-1 and a semicolon- or tab-separated file is split on that
    delimiter, so :func:`validate_manifest` can report these and still check every row.

    Raises:
        ManifestError: the file does not exist or is a folder.
    """
    p = Path(path)
    if not p.exists():
        raise ManifestError("manifest not found", path=str(p))
    if p.is_dir():
        raise ManifestError("manifest path is a folder, expected a CSV file", path=str(p))
    raw = p.read_bytes()
    encoding_problem = None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        encoding_problem = (
            f"manifest is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8"
        )
        text = raw.decode("latin-1")
    if not text.strip():
        return ParsedTable(pd.DataFrame(), encoding_problem, ",", [], empty=True)
    header = text.splitlines()[0]
    delimiter = ","
    if "," not in header:
        if header.count(";") > 0:
            delimiter = ";"
        elif header.count("\t") > 0:
            delimiter = "\t"
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    rows = [r for r in rows if any(c.strip() for c in r)]  # blank lines are not rows
    names = [c.strip() for c in rows[0]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    width = len(names)
    body = [(r + [""] * width)[:width] for r in rows[1:]]
    if dupes:  # keep the first of each duplicate name so the frame stays addressable
        keep = [i for i, n in enumerate(names) if names.index(n) == i]
        names = [names[i] for i in keep]
        body = [[r[i] for i in keep] for r in body]
    frame = pd.DataFrame([[c.strip() for c in r] for r in body], columns=names, dtype=str)
    return ParsedTable(frame, encoding_problem, delimiter, dupes, empty=False)


def map_columns(columns: list[str], vocabulary: Vocabulary) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Map manifest column names to canonical sequence names.

    Returns:
        ``(column -> sequence)`` for every sequence column (exact or alias), and ``sequence -> columns``
        listing every sequence named by more than one column (a conflict).
    """
    mapping: dict[str, str] = {}
    for col in columns:
        if col in RESERVED_COLUMNS:
            continue
        seq = vocabulary.canonical_sequence(col)
        if seq is not None:
            mapping[col] = seq
    by_seq: dict[str, list[str]] = {}
    for col, seq in mapping.items():
        by_seq.setdefault(seq, []).append(col)
    conflicts = {s: cols for s, cols in by_seq.items() if len(cols) > 1}
    return mapping, conflicts


def resolve_path(value: str, root: Path) -> Path:
    """Absolute path of a manifest cell (relative cells are relative to the manifest's folder)."""
    p = Path(os.path.expanduser(value))
    if not p.is_absolute():
        p = root / p
    return Path(os.path.normpath(os.path.abspath(p)))


def parse_lesion(row: dict[str, str]) -> tuple[tuple[float, float, float] | None, str | None]:
    """Read ``lesion_x/y/z`` from a row: ``(xyz or None, problem or None)``."""
    vals = [row.get(c, "").strip() for c in LESION_COLUMNS]
    if not any(vals):
        return None, None
    if not all(vals):
        return None, "lesion_x/lesion_y/lesion_z must be all set or all empty"
    try:
        xyz = tuple(float(v) for v in vals)
    except ValueError:
        return None, f"lesion coordinates are not numbers: {vals}"
    if not all(math.isfinite(v) for v in xyz):
        return None, f"lesion coordinates are not finite: {vals}"
    return xyz, None  # type: ignore[return-value]


class Manifest:
    """A parsed manifest: a list of :class:`Case` plus where it came from.

    Attributes:
        cases: The rows, in file order.
        root: Folder that relative paths are resolved against.
        path: The CSV file (``None`` for an in-memory manifest).
        vocabulary: Vocabulary used to map sequence columns and labels.
    """

    def __init__(
        self,
        cases: list[Case],
        root: str | os.PathLike,
        path: str | os.PathLike | None = None,
        vocabulary: Vocabulary = DEFAULT_VOCABULARY,
    ) -> None:
        self.cases = list(cases)
        self.root = Path(root)
        self.path = Path(path) if path is not None else None
        self.vocabulary = vocabulary
        self._frame: pd.DataFrame | None = None

    @classmethod
    def from_cases(
        cls, cases: list[Case], root: str | os.PathLike = ".", vocabulary: Vocabulary = DEFAULT_VOCABULARY
    ) -> Manifest:
        """Build an in-memory manifest (no CSV file)."""
        return cls(cases, Path(os.path.abspath(root)), None, vocabulary)

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __getitem__(self, i: int) -> Case:
        return self.cases[i]

    @property
    def frame(self) -> pd.DataFrame:
        """One row per case: case, subject, center, label ("" if none), one column per vocabulary
        sequence (absolute path or ""), mask, lesion_x/y/z (NaN if none), then the extra columns."""
        if self._frame is None:
            self._frame = self._build_frame(relative_to=None)
        return self._frame

    def _build_frame(self, relative_to: Path | None) -> pd.DataFrame:
        def show(p: Path | None) -> str:
            if p is None:
                return ""
            if relative_to is None:
                return str(p)
            # relative inside the manifest's folder (the cohort moves as one), absolute outside it
            rel = os.path.relpath(p, relative_to)
            return str(p) if rel.startswith("..") else rel

        extra_cols: list[str] = []
        for c in self.cases:
            extra_cols += [k for k in c.extra if k not in extra_cols]
        records = []
        for c in self.cases:
            rec: dict[str, object] = {
                "case": c.case,
                "subject": c.subject,
                "center": c.center,
                "label": c.label or "",
            }
            for s in self.vocabulary.sequences:
                rec[s] = show(c.sequences.get(s))
            rec["mask"] = show(c.mask)
            xyz = c.lesion_xyz
            for i, col in enumerate(LESION_COLUMNS):
                rec[col] = float(xyz[i]) if xyz is not None else float("nan")
            for k in extra_cols:
                rec[k] = c.extra.get(k, "")
            records.append(rec)
        cols = [
            "case",
            "subject",
            "center",
            "label",
            *self.vocabulary.sequences,
            "mask",
            *LESION_COLUMNS,
        ] + extra_cols
        return pd.DataFrame.from_records(records, columns=cols)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the manifest atomically; paths under the file's folder are written relative to it."""
        from mrfound.utils.io import atomic_write_text

        path = Path(path)
        folder = Path(os.path.abspath(path.parent))
        frame = self._build_frame(relative_to=folder)
        if all(c.lesion_xyz is None for c in self.cases):
            frame = frame.drop(columns=list(LESION_COLUMNS))
        return atomic_write_text(path, frame.to_csv(index=False, float_format="%.4f"))

    def __repr__(self) -> str:
        return f"Manifest({len(self.cases)} cases, root={self.root})"


def read_manifest(path: str | os.PathLike, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> Manifest:
    """Read a manifest CSV, checking its structure (not its images).

    Args:
        path: The CSV file.
        vocabulary: Sequence/class vocabulary (aliases accepted for columns and labels).

    Returns:
        The :class:`Manifest`.

    Raises:
        ManifestError: not UTF-8, not comma-separated, empty, no ``case`` column, duplicate or empty case
            ids, a row without any sequence, an unknown label, bad lesion coordinates, or two columns
            naming the same sequence. One line naming case and column; run ``mrfound validate`` for the
            full list.
    """
    p = Path(path)
    table = parse_table(p)
    where = str(p)
    if table.encoding_problem:
        raise ManifestError(table.encoding_problem, path=where)
    if table.empty:
        raise ManifestError("manifest is empty (no header, no rows)", path=where)
    if table.delimiter != ",":
        name = "semicolon" if table.delimiter == ";" else "tab"
        raise ManifestError(f"manifest is {name}-separated; mrfound expects comma-separated CSV", path=where)
    if table.duplicate_columns:
        raise ManifestError(f"duplicate column names {table.duplicate_columns}", path=where)
    frame = table.frame
    if "case" not in frame.columns:
        raise ManifestError(f"no 'case' column (columns: {list(frame.columns)})", path=where)
    if len(frame) == 0:
        raise ManifestError("manifest has a header but no rows", path=where)
    mapping, conflicts = map_columns(list(frame.columns), vocabulary)
    if conflicts:
        seq, cols = next(iter(conflicts.items()))
        raise ManifestError(f"columns {cols} all name sequence {seq!r}", path=where)
    if not mapping:
        raise ManifestError(
            f"no sequence column; expected some of {', '.join(vocabulary.sequences)}", path=where
        )
    root = Path(os.path.abspath(p.parent))
    seen: set[str] = set()
    cases: list[Case] = []
    extra_cols = [c for c in frame.columns if c not in RESERVED_COLUMNS and c not in mapping]
    for i, row in enumerate(frame.to_dict(orient="records")):
        case_id = row["case"]
        if not case_id:
            raise ManifestError(f"row {i + 1}: empty case id", column="case", path=where)
        if case_id in seen:
            raise ManifestError("duplicate case id", case=case_id, column="case")
        seen.add(case_id)
        seqs = {mapping[c]: resolve_path(row[c], root) for c in mapping if row[c]}
        if not seqs:
            raise ManifestError("row has no sequence", case=case_id)
        label = None
        if row.get("label", ""):
            label = vocabulary.canonical_class(row["label"])
            if label is None:
                raise ManifestError(
                    f"unknown label {row['label']!r}; known: {', '.join(vocabulary.classes)}",
                    case=case_id,
                    column="label",
                )
        xyz, problem = parse_lesion(row)
        if problem:
            raise ManifestError(problem, case=case_id, column="lesion_x")
        cases.append(
            Case(
                case=case_id,
                subject=row.get("subject", "") or case_id,
                center=row.get("center", ""),
                label=label,
                sequences={s: seqs[s] for s in vocabulary.sequences if s in seqs},
                mask=resolve_path(row["mask"], root) if row.get("mask", "") else None,
                lesion_xyz=xyz,
                extra={c: row[c] for c in extra_cols},
            )
        )
    return Manifest(cases, root, p, vocabulary)


def as_manifest(
    manifest: Manifest | str | os.PathLike, vocabulary: Vocabulary = DEFAULT_VOCABULARY
) -> Manifest:
    """Accept a :class:`Manifest` or a CSV path."""
    if isinstance(manifest, Manifest):
        return manifest
    return read_manifest(manifest, vocabulary)
