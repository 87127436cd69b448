"""Data: vocabularies, manifests, readers, preprocessing, datasets and the phantom simulator."""

from mrfound.data.sequences import (
    CLASSES,
    DEFAULT_VOCABULARY,
    MALIGNANT,
    SEQUENCES,
    Vocabulary,
    canonical_class,
    canonical_sequence,
)

__all__ = [
    "CLASSES",
    "DEFAULT_VOCABULARY",
    "MALIGNANT",
    "SEQUENCES",
    "Vocabulary",
    "canonical_class",
    "canonical_sequence",
]
