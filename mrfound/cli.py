"""The ``mrfound`` command line.

Each subcommand lives in ``mrfound/commands/<name>.py`` and defines ``HELP`` (one line), ``EXAMPLES``
(text shown under ``--help``), ``add_arguments(parser)`` and ``run(args) -> int | None``. Modules are
imported only when their command runs, so ``mrfound --help`` answers without importing torch.

User errors (:class:`mrfound.errors.MrfoundError`, missing files, bad values) print one line
``mrfound <command>: error: ...`` and exit with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Sequence

COMMANDS: dict[str, str] = {
    "phantom": "simulate a multi-centre, multi-sequence liver MRI cohort (NIfTI + manifest)",
    "manifest": "build a manifest from a folder (filename pattern or the LLD-MMRI layout)",
    "validate": "check a manifest and its files; report every problem",
    "preprocess": "resample and normalise every case into the preprocessing cache",
    "pretrain": "pretrain a multi-sequence 3D ViT by masked-modality autoencoding",
    "probe": "linear-probe a frozen encoder under missing-sequence protocols",
    "finetune": "fine-tune a classification or segmentation head",
    "evaluate": "score predictions against a labelled manifest",
    "predict": "classify (and segment) new cases with a checkpoint",
    "impute": "synthesise a missing sequence for each case",
    "calibrate": "calibrate imputation's local contrast per sequence and store it in the checkpoint",
    "demo": "run the whole story on a simulated cohort and write a report",
    "info": "show versions, the vocabularies, the model registry or a checkpoint's config",
}


class UsageError(Exception):
    """Raised by a command for a bad combination of arguments (exit 2)."""


def _build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrfound",
        description="Self-supervised foundation models for multi-sequence liver MRI.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'mrfound COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(f"mrfound.commands.{name}")
        p = sub.add_parser(
            name,
            help=help_text,
            description=f"mrfound {name}: {help_text}.",
            epilog=getattr(module, "EXAMPLES", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show Python tracebacks for errors")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _find_command(argv: Sequence[str]) -> str | None:
    for a in argv:
        if a in COMMANDS:
            return a
        if not a.startswith("-"):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mrfound`` console script.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        Process exit code: 0 success, 2 bad input, 1 unexpected failure.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _find_command(argv)
    debug = "--debug" in argv or os.environ.get("MRFOUND_DEBUG") == "1"
    try:
        parser = _build_parser(command)
        args = parser.parse_args(argv)
        # The exact command, for provenance (sys.argv is the host's when called in-process).
        args._command_line = "mrfound " + shlex.join(argv)
    except ImportError as e:  # a command's optional dependency is missing
        if debug:
            raise
        print(f"mrfound {command}: error: {e}", file=sys.stderr)
        return 2
    if args.version:
        from mrfound import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    return _run(args, debug)


def _run(args: argparse.Namespace, debug: bool) -> int:
    from mrfound.errors import MrfoundError

    try:
        rc = args._module.run(args)
        return int(rc or 0)
    except KeyboardInterrupt:
        print(f"mrfound {args.command}: interrupted", file=sys.stderr)
        return 130
    except (MrfoundError, UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError, UnicodeDecodeError) as e:
        if debug:
            raise
        msg = str(e).replace("\n", " ").strip() or type(e).__name__
        print(f"mrfound {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, I/O errors: not the user's input, but still no traceback
        if debug:
            raise
        print(f"mrfound {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
