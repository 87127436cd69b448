"""Exceptions shared across mrfound.

User-facing problems (bad manifests, unreadable files, wrong checkpoints) raise :class:`MrfoundError`
or a subclass. The command line turns these into one-line messages and exit code 2, so a message must
name what a person needs to fix it: the case, the column or file, and the problem.
"""

from __future__ import annotations


class MrfoundError(Exception):
    """Base class for errors caused by the user's input, shown without a traceback."""


class ManifestError(MrfoundError):
    """A manifest (or one of its rows or files) is invalid.

    Args:
        message: What is wrong.
        case: Case id of the offending row, when known.
        column: Manifest column of the offending value, when known.
        path: File involved, when known.
    """

    def __init__(self, message: str, *, case: str | None = None, column: str | None = None,
                 path: str | None = None) -> None:
        self.problem = message
        self.case = case
        self.column = column
        self.path = path
        parts = []
        if case is not None:
            parts.append(f"case {case!r}")
        if column is not None:
            parts.append(f"column {column!r}")
        if path is not None:
            parts.append(f"file {path}")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class CheckpointError(MrfoundError):
    """A checkpoint is missing, malformed, unsafe or incompatible with this mrfound."""


class ConfigError(MrfoundError):
    """A configuration value is unknown or out of range."""


class NonFiniteLossError(MrfoundError):
    """Training produced a NaN/Inf loss; raised instead of writing non-finite weights."""
