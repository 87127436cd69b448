"""``python -m mrfound.pretrain``: the same program as ``mrfound pretrain`` (shared parser and runner).

This is the entry point for ``accelerate launch``::

    accelerate launch --multi_gpu --num_processes 4 -m mrfound.pretrain --manifest M --out RUN
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m mrfound.pretrain \
        --manifest M --out RUN
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse like ``mrfound pretrain`` and run; user errors print one line and return 2."""
    from mrfound import cli
    from mrfound.commands import pretrain as command

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m mrfound.pretrain",
        description=f"mrfound pretrain: {command.HELP}.",
        epilog=command.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    args.command = "pretrain"
    args._module = command
    args._command_line = "python -m mrfound.pretrain " + shlex.join(argv)
    return cli._run(args, bool(args.debug) or os.environ.get("MRFOUND_DEBUG") == "1")


if __name__ == "__main__":
    sys.exit(main())
