"""The input guard every manifest-reading command calls before it writes anything.

:func:`checked_manifest` runs :func:`mrfound.data.validate.validate_manifest` (structure of the CSV, then
every referenced file opened once: header, shape, affine, voxels, mask values, mask/lesion geometry) and
turns its report into one of two behaviours, chosen with ``--on-error``:

* ``raise`` (default): the first problem becomes a :class:`~mrfound.errors.ManifestError` whose one line
  names the case, the column and the problem (plus how many other problems ``mrfound validate`` would
  list), so the command exits with code 2 before any output exists;
* ``skip``: the rows with problems are written to ``OUT/rejected.csv`` (with a ``reason`` column) and the
  usable rows to ``OUT/clean.csv`` (both atomically, paths rebased onto ``OUT``, exactly what
  ``mrfound validate --on-error skip`` writes), and the command goes on with the clean rows.

Problems of the file as a whole (not UTF-8, not comma-separated, empty, header without rows, a misspelt
sequence column...) cannot be skipped row by row and raise in both modes, as does a manifest whose every
row is rejected. Commands add the option with :func:`add_on_error_argument`. :func:`split_manifest` does
the ``skip`` split without writing anything, for commands that publish ``rejected.csv`` themselves
together with their other outputs (``mrfound predict`` publishes under a lock).

Cost: each referenced file is read once (about 1.5 ms per 24^3 file, 1.5 s for 1000 files on one core).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mrfound.data.manifest import Manifest, read_manifest
from mrfound.data.sequences import DEFAULT_VOCABULARY, Vocabulary
from mrfound.errors import ConfigError, ManifestError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mrfound.data.validate import ValidationReport

ON_ERROR = ("raise", "skip")
_ALIASES = {"raise": "raise", "stop": "raise", "report": "raise", "skip": "skip"}


def add_on_error_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--on-error {raise,skip}`` (default ``raise``) to a command's parser."""
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="raise",
        help="raise: stop with a one-line error at the first bad manifest row, before any output (default); "
        "skip: list bad rows with their reason in OUT/rejected.csv (usable rows in OUT/clean.csv) and "
        "process the rest",
    )


def first_error(problems: list, path: str | os.PathLike) -> ManifestError:
    """The one-line error for the first of ``problems`` (validate's :class:`Problem` list), with a count
    of the others."""
    first = problems[0]
    more = ""
    if len(problems) > 1:
        more = f" (and {len(problems) - 1} more; 'mrfound validate --manifest {path}' lists them all)"
    problem, file = first.problem, None
    head, sep, tail = problem.rpartition(": ")
    if sep and os.path.isabs(tail):  # validate appends the image's path: name it as ManifestError does
        problem, file = head, tail
    if first.row is None:  # a problem of the manifest itself: name the manifest
        return ManifestError(problem + more, column=first.column, path=str(path))
    if not first.case:
        problem = f"row {first.row}: {problem}"
    return ManifestError(problem + more, case=first.case or None, column=first.column, path=file)


def _validated(path: str | os.PathLike, vocabulary: Vocabulary, progress: bool | None) -> ValidationReport:
    """validate_manifest, raising for problems of the file as a whole (they cannot be skipped by row)."""
    from mrfound.data.validate import validate_manifest

    report = validate_manifest(path, vocabulary, progress=progress)
    file_errors = [p for p in report.errors if p.row is None]
    if file_errors:
        raise first_error(file_errors, path)
    return report


def _mode(on_error: str) -> str:
    mode = _ALIASES.get(on_error)
    if mode is None:
        raise ConfigError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    return mode


def _no_usable_row(report: ValidationReport, path: str | os.PathLike, where: str) -> ManifestError:
    first = first_error(report.errors, path)
    n = len(report.frame)
    return ManifestError(f"no usable row: all {n} row(s) rejected ({where}); first: {first}", path=str(path))


def checked_manifest(
    path: str | os.PathLike,
    *,
    on_error: str = "raise",
    out_dir: str | os.PathLike | None = None,
    vocabulary: Vocabulary = DEFAULT_VOCABULARY,
    prefix: str = "",
    progress: bool | None = False,
) -> Manifest:
    """Validate a manifest and its files, then raise on the first problem or set bad rows aside.

    Args:
        path: Manifest CSV.
        on_error: ``"raise"`` (``"stop"`` is accepted as a synonym) or ``"skip"``.
        out_dir: Folder receiving ``rejected.csv`` and ``clean.csv`` with ``"skip"`` (created if needed;
            untouched with ``"raise"``).
        vocabulary: Sequence and class vocabulary the manifest is read with (the model's, for commands
            that load a checkpoint).
        prefix: Prepended to ``clean.csv``/``rejected.csv`` when one command splits several manifests
            into one folder (e.g. ``"val_"``).
        progress: Progress bar over the files (``None``: only on a terminal).

    Returns:
        The :class:`~mrfound.data.manifest.Manifest` of the usable rows (``"skip"``: read from
        ``out_dir/clean.csv``, so its ``path`` is that file; ``"raise"``: the manifest itself).

    Raises:
        ManifestError: one line naming case, column and problem (``"raise"``), a problem of the file as a
            whole (both modes), or no usable row left (``"skip"``).
        ConfigError: unknown ``on_error``, or ``"skip"`` without ``out_dir``.
    """
    mode = _mode(on_error)
    if mode == "skip" and out_dir is None:
        raise ConfigError("--on-error skip needs an output folder for rejected.csv")
    report = _validated(path, vocabulary, progress)
    if mode == "raise":
        if report.errors:
            raise first_error(report.errors, path)
        return read_manifest(path, vocabulary)
    clean, rejected, n_clean, _ = report.write_split(out_dir, prefix=prefix)
    if n_clean == 0:
        raise _no_usable_row(report, path, f"reasons in {rejected}")
    return read_manifest(clean, vocabulary)


def checked_manifest_reported(
    path: str | os.PathLike,
    *,
    on_error: str,
    out_dir: str | os.PathLike,
    vocabulary: Vocabulary = DEFAULT_VOCABULARY,
) -> Path:
    """:func:`checked_manifest` for commands that write per-case outputs (``predict``, ``impute``).

    Checks every row before anything is written: with ``"raise"`` the first problem is an error that
    also points at ``--on-error skip``; with ``"skip"`` the rejected rows are written to
    ``out_dir/rejected.csv`` and listed on standard output.

    Returns:
        The manifest to process (``out_dir/clean.csv`` with ``"skip"``).
    """
    skip = _mode(on_error) == "skip"
    try:
        manifest = checked_manifest(
            path, on_error=on_error, out_dir=out_dir if skip else None, vocabulary=vocabulary
        )
    except ManifestError as e:
        if skip:
            raise
        raise ManifestError(f"{e} (use --on-error skip to set such rows aside)") from e
    if skip:
        import pandas as pd

        rejected_csv = Path(out_dir) / "rejected.csv"
        rejected = pd.read_csv(rejected_csv, dtype=str, keep_default_na=False)
        if len(rejected):
            print(f"rejected {len(rejected)} case(s), listed in {rejected_csv}:")
            for case, reason in zip(rejected["case"], rejected["reason"]):
                print(f"  {case}: {reason}")
    return Path(manifest.path)


@dataclass
class Split:
    """What :func:`split_manifest` found.

    Attributes:
        manifest: The usable rows (``path`` and ``root`` those of the original manifest).
        rejected: The rejected rows as written in the manifest, plus a ``reason`` column.
        report: The full validation report.
    """

    manifest: Manifest
    rejected: pd.DataFrame
    report: ValidationReport

    def rejected_rows(self) -> list[tuple[str, str]]:
        """``(case, reason)`` of each rejected row."""
        return list(zip(self.rejected["case"], self.rejected["reason"], strict=True))


def split_manifest(
    path: str | os.PathLike, *, vocabulary: Vocabulary = DEFAULT_VOCABULARY, progress: bool | None = False
) -> Split:
    """``--on-error skip`` without writing anything: for commands that publish ``rejected.csv`` together
    with their other outputs (e.g. under a lock).

    Raises:
        ManifestError: a problem of the file as a whole, or no usable row.
    """
    report = _validated(path, vocabulary, progress)
    reasons = report.row_reasons()
    bad = [i + 1 in reasons for i in range(len(report.frame))]
    rejected = report.frame[bad].copy()
    rejected["reason"] = ["; ".join(reasons[i + 1]) for i in range(len(bad)) if bad[i]]
    if all(bad):
        raise _no_usable_row(report, path, "run 'mrfound validate' for the list")
    with tempfile.TemporaryDirectory() as tmp:  # paths are resolved (absolute) while reading
        clean, _, _, _ = report.write_split(tmp)
        manifest = read_manifest(clean, vocabulary)
    manifest.path, manifest.root = Path(path), Path(os.path.abspath(Path(path).parent))
    return Split(manifest, rejected.reset_index(drop=True), report)


__all__ = ["ON_ERROR", "Split", "add_on_error_argument", "checked_manifest", "first_error", "split_manifest"]
