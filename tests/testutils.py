"""Helpers shared by the tests (importable because ``tests/conftest.py`` puts this folder on the path)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_module(relative: str) -> ModuleType:
    """A repository file (e.g. ``benchmarks/phenotype.py``, ``tests/finetune/cohort_data.py``) as a module.

    Tests run in pytest's importlib mode and are not a package, and benchmark scripts are not part of
    the installed library, so both are loaded by path. The module is registered in ``sys.modules``
    (dataclasses look their module up); a benchmark script's folder goes on ``sys.path`` for its
    ``_common`` imports.
    """
    path = REPO / relative
    name = "mrfound_test_" + re.sub(r"\W", "_", relative.removesuffix(".py"))
    if path.parent.name == "benchmarks" and str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
