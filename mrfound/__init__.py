"""mrfound: self-supervised foundation models for multi-sequence liver MRI.

Quick use from another project::

    import mrfound
    model = mrfound.load_pretrained("path/to/run/final")       # or a registry name, or hf://owner/repo
    vec = model.embed({"t2": "case1_t2.nii.gz", "t1_pv": "case1_pv.nii.gz"})
    table = mrfound.extract_features("cohort/manifest.csv", model)

Heavy modules (torch, MONAI) are imported on first use, so ``import mrfound`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mrfound.data.sequences import CLASSES, MALIGNANT, SEQUENCES, Vocabulary

__version__ = "0.1.0"

__all__ = [
    "CLASSES",
    "MALIGNANT",
    "SEQUENCES",
    "Vocabulary",
    "__version__",
    "extract_features",
    "load_pretrained",
]

if TYPE_CHECKING:  # pragma: no cover
    from mrfound.pipeline import extract_features, load_pretrained


def __getattr__(name: str) -> Any:
    if name in ("load_pretrained", "extract_features"):
        from mrfound import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'mrfound' has no attribute {name!r}")
