"""``python -m mrfound`` is the ``mrfound`` command."""

import sys

from mrfound.cli import main

sys.exit(main())
