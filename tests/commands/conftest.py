"""Fixtures shared by the command tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from testutils import load_module


@pytest.fixture(scope="session")
def inference_builders() -> ModuleType:
    """``tests/test_inference.py`` (cohort and checkpoint builders), loaded by path (importlib mode)."""
    return load_module("tests/test_inference.py")


@pytest.fixture(scope="session")
def inference_setup(inference_builders, tmp_path_factory) -> dict[str, Path]:
    """A 3-case cohort's manifest and tiny checkpoints (autoencoder, segmenter, ...), built once for the
    ``predict`` and ``impute`` tests by ``tests/test_inference.py``'s builders."""
    h = inference_builders
    folder = tmp_path_factory.mktemp("inference_cmd")
    return {"manifest": h.make_cohort(folder / "cohort", n=3), **h.make_checkpoints(folder / "ckpt")}


@pytest.fixture()
def run_command(inference_setup) -> Callable[..., int]:
    """``run(command, which, out, *extra, manifest=None)`` runs ``mrfound COMMAND --checkpoint
    <inference_setup[which]> --manifest <manifest, the 3-case cohort by default> --out OUT *extra`` and
    returns its exit code."""
    from mrfound.cli import main

    def run(command: str, which: str, out: Path, *extra: str, manifest: Path | None = None) -> int:
        inputs = [
            "--checkpoint",
            str(inference_setup[which]),
            "--manifest",
            str(manifest or inference_setup["manifest"]),
        ]
        return main([command, *inputs, "--out", str(out), *extra])

    return run
