"""Content-addressed preprocessing cache (DESIGN §3 "Cache").

A case's key is the SHA-256 of: a format version, the preprocessing settings that change the arrays
(:meth:`PreprocessConfig.cache_dict`), the vocabulary, and, for every input, its role (sequence name or
mask) and the SHA-256 of its bytes (every file of a DICOM folder), plus the lesion point. Renaming or
moving files keeps the key; editing a file, a setting or the vocabulary changes it. The case id is not
part of the key, so two rows pointing at the same files share one entry.

Entries are ``<folder>/<key[:2]>/<key>.npz`` written atomically; they hold only numeric arrays and a JSON
string (loaded with ``allow_pickle=False``): the available image channels as float16 (stored
uncompressed: they do not compress well and load fastest raw), the mask and body deflated (they compress
~50x).
File digests are memoised per process by (path, size, mtime), so each input is hashed once per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mrfound.data.manifest import Case
from mrfound.data.preprocess import PreprocessConfig, preprocess_case
from mrfound.data.sequences import DEFAULT_VOCABULARY, Vocabulary
from mrfound.utils.io import atomic_write_with

CACHE_FORMAT = 1
_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (of every file, in name order, for a folder); memoised per process."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for child in sorted(c for c in p.rglob("*") if c.is_file()):
            h.update(str(child.relative_to(p)).encode())
            h.update(file_digest(child).encode())
        return h.hexdigest()
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


def _save_npz(path: Path, arrays: dict[str, np.ndarray], stored: set[str]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy")
            info.compress_type = zipfile.ZIP_STORED if name in stored else zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


class PreprocessCache:
    """Preprocessed cases on disk, keyed by content.

    Args:
        folder: Cache folder (created on first write).
        config: Preprocessing settings.
        vocabulary: Sequence vocabulary (channel order).

    Example:
        >>> cache = PreprocessCache("cache/", PreprocessConfig())  # doctest: +SKIP
        >>> sample = cache.get(manifest.cases[0])                   # computed once, then read
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        config: PreprocessConfig | None = None,
        vocabulary: Vocabulary = DEFAULT_VOCABULARY,
    ) -> None:
        self.folder = Path(folder)
        self.config = config or PreprocessConfig()
        self.vocabulary = vocabulary
        self._settings = json.dumps(
            {
                "format": CACHE_FORMAT,
                "config": self.config.cache_dict(),
                "vocabulary": list(vocabulary.sequences),
            },
            sort_keys=True,
        )

    def key(self, case: Case) -> str:
        """Content key of a case (hashes its input files)."""
        parts = {
            "settings": self._settings,
            "inputs": {s: file_digest(p) for s, p in sorted(case.sequences.items())},
            "mask": file_digest(case.mask) if case.mask is not None else None,
            "lesion_xyz": [round(float(v), 4) for v in case.lesion_xyz] if case.lesion_xyz else None,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def path(self, case: Case) -> Path:
        """Where the case's entry lives (whether or not it exists)."""
        k = self.key(case)
        return self.folder / k[:2] / f"{k}.npz"

    def has(self, case: Case) -> bool:
        """Whether the case is cached under the current settings."""
        return self.path(case).is_file()

    def get(self, case: Case) -> dict[str, Any]:
        """The preprocessed case (see :func:`preprocess_case`), computed and stored on a miss."""
        return self.get_with_status(case)[0]

    def get_with_status(self, case: Case) -> tuple[dict[str, Any], bool]:
        """``(sample, hit)``: ``hit`` is True when the entry was already cached."""
        path = self.path(case)
        if path.is_file():
            try:
                return self.load(path), True
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # a damaged entry (disk trouble): recompute and overwrite it
        sample = preprocess_case(case, self.config, self.vocabulary)
        self.put(path, sample, case)
        # hand back exactly what a later hit will read (float16-rounded), so first and later runs agree
        sample["image"] = sample["image"].astype(np.float16).astype(np.float32)
        return sample, False

    def put(self, path: Path, sample: dict[str, Any], case: Case | None = None) -> Path:
        """Store a sample at ``path`` atomically."""
        arrays: dict[str, np.ndarray] = {
            # only the available channels: missing ones are zeros by definition
            "image": sample["image"][np.asarray(sample["available"], dtype=bool)].astype(np.float16),
            "available": np.asarray(sample["available"], dtype=bool),
            "affine": np.asarray(sample["affine"], dtype=np.float64),
            "body": np.asarray(sample["body"], dtype=bool),
            "intensity_range": np.asarray(sample["intensity_range"], dtype=np.float32),
            "meta": np.array(
                json.dumps(
                    {
                        "case": case.case if case else None,
                        "format": CACHE_FORMAT,
                        "settings": json.loads(self._settings),
                    }
                )
            ),
        }
        if sample.get("mask") is not None:
            arrays["mask"] = np.asarray(sample["mask"], dtype=np.uint8)
        if sample.get("lesion_center") is not None:
            arrays["lesion_center"] = np.asarray(sample["lesion_center"], dtype=np.float64)
        return atomic_write_with(path, lambda tmp: _save_npz(tmp, arrays, stored={"image"}))

    @staticmethod
    def load(path: str | os.PathLike) -> dict[str, Any]:
        """Read an entry back into the :func:`preprocess_case` dict (image as float32)."""
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            available = z["available"]
            stored = z["image"]
            image = np.zeros((len(available), *stored.shape[1:]), dtype=np.float32)
            image[available] = stored
            return {
                "image": image,
                "available": available,
                "mask": z["mask"] if "mask" in names else None,
                "affine": z["affine"],
                "lesion_center": z["lesion_center"] if "lesion_center" in names else None,
                "body": z["body"],
                "intensity_range": z["intensity_range"],
            }
