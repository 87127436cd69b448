"""Content-addressed preprocessing cache (DESIGN §3 "Cache").

A case's key is the SHA-256 of: a format version, the preprocessing settings that change the arrays
(:meth:`PreprocessConfig.cache_dict`), the vocabulary, and, for every input, its role (sequence name or
mask) and the SHA-256 of its bytes (every file of a DICOM folder), plus the lesion point. Renaming or
moving files keeps the key; editing a file, a setting or the vocabulary changes it. The case id is not
part of the key, so two rows pointing at the same files share one entry.

Entries are ``<folder>/<key[:2]>/<key>.npz`` written atomically; they hold only numeric arrays and a JSON
string (loaded with ``allow_pickle=False``): the available image channels as float16, the mask and the
body mask, these three stored uncompressed so that a crop can memory-map them and read only its ROI
(:meth:`PreprocessCache.get_compact`; each mapped member's CRC is checked once per process). Entries
written before, with a deflated mask and body, are read as they are.
File digests are memoised per process by (path, size, mtime), so each input is hashed once per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrfound.data.manifest import Case
from mrfound.data.preprocess import PreprocessConfig, preprocess_case
from mrfound.data.sequences import DEFAULT_VOCABULARY, Vocabulary
from mrfound.utils.io import atomic_write_with

CACHE_FORMAT = 1
MEMORY_ENV = "MRFOUND_CACHE_MEMORY_MB"
"""Environment variable: default in-memory budget (MB) of :class:`PreprocessCache` (0 = off)."""
_DIGESTS: dict[tuple[str, int, int], str] = {}
_VERIFIED: set[tuple[str, int, int]] = set()
"""(entry::member, size, mtime) of memory-mapped members that passed their CRC check in this process."""


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


def _stored_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    """Read-only memory map of an uncompressed ``.npy`` member of an ``.npz`` file.

    The member's CRC is checked the first time an entry (path, size, mtime) is mapped in a process, so a
    damaged entry is still detected, but later maps skip the full read: a crop then touches only the
    pages of its ROI. Raises ``ValueError``/``BadZipFile`` on anything unexpected (the caller falls back to
    a full read).
    """
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise ValueError(f"{name} is not stored uncompressed")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header of {name}")
        n_name, n_extra = struct.unpack("<HH", head[26:30])
        start = info.header_offset + 30 + n_name + n_extra
        f.seek(start)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy format {version} not mapped")
        data_start = f.tell()
        if dtype.hasobject:
            raise ValueError("object arrays are never loaded")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if data_start - start + nbytes != info.file_size:
            raise ValueError(f"{name}: size does not match its header")
        st = os.fstat(f.fileno())
        key = (f"{path}::{name}", st.st_size, st.st_mtime_ns)
        if key not in _VERIFIED:
            f.seek(start)
            crc, left = 0, info.file_size
            while left > 0:
                block = f.read(min(left, 1 << 22))
                if not block:
                    raise zipfile.BadZipFile(f"{name} is truncated")
                crc = zlib.crc32(block, crc)
                left -= len(block)
            if crc != info.CRC:
                raise zipfile.BadZipFile(f"bad CRC of {name}")
            _VERIFIED.add(key)
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start, shape=shape, order=order)


class PreprocessCache:
    """Preprocessed cases on disk, keyed by content.

    Args:
        folder: Cache folder (created on first write).
        config: Preprocessing settings.
        vocabulary: Sequence vocabulary (channel order).
        memory_mb: Keep up to this many MB of entries in process memory (compact float16 form, least
            recently used evicted) so that repeated crops of a small cohort skip the disk and the zip;
            ``None`` reads ``$MRFOUND_CACHE_MEMORY_MB`` (default 0 = off).

    Example:
        >>> cache = PreprocessCache("cache/", PreprocessConfig())  # doctest: +SKIP
        >>> sample = cache.get(manifest.cases[0])                   # computed once, then read
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        config: PreprocessConfig | None = None,
        vocabulary: Vocabulary = DEFAULT_VOCABULARY,
        memory_mb: float | None = None,
    ) -> None:
        self.folder = Path(folder)
        if memory_mb is None:
            memory_mb = float(os.environ.get(MEMORY_ENV, "0") or 0)
        self.memory_bytes = int(max(0.0, float(memory_mb)) * 1e6)
        self._memory: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._memory_used = 0
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
        # image, body and mask uncompressed: a crop memory-maps them and reads only its ROI (body and
        # mask would deflate ~50x, but inflating them cost more than the rest of a cached crop)
        return atomic_write_with(path, lambda tmp: _save_npz(tmp, arrays, stored={"image", "body", "mask"}))

    @staticmethod
    def load(path: str | os.PathLike) -> dict[str, Any]:
        """Read an entry back into the :func:`preprocess_case` dict (image as float32)."""
        return expand_compact(PreprocessCache.load_compact(path))

    @staticmethod
    def load_compact(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
        """Read an entry as stored: ``image`` holds only the available channels, float16.

        Args:
            path: The entry.
            mmap: Return the uncompressed members (``image``, and ``body``/``mask`` of entries written
                since they are stored uncompressed) as read-only memory maps, each CRC-checked once per
                process, instead of reading them: cropping then reads only the ROI, not the volume.
        """
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)

            def member(name: str) -> np.ndarray | None:
                if name not in names:
                    return None
                if mmap:
                    try:
                        return _stored_member(Path(path), z.zip, f"{name}.npy")
                    except ValueError:
                        pass  # compressed (older entries) or unexpected layout: read it the ordinary way
                return z[name]

            return {
                "image": member("image"),
                "available": z["available"],
                "mask": member("mask"),
                "affine": z["affine"],
                "lesion_center": z["lesion_center"] if "lesion_center" in names else None,
                "body": member("body"),
                "intensity_range": z["intensity_range"],
            }

    def get_compact(self, case: Case) -> dict[str, Any]:
        """The case in compact form (see :meth:`load_compact`), from memory when kept there.

        Cropping this and then calling :func:`expand_compact` gives exactly the crop of :meth:`get`'s
        volume, without converting the whole volume to float32 (the costly part of a cache hit).
        """
        path = self.path(case)
        key = str(path)
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            return dict(hit)
        compact = None
        if path.is_file():
            try:
                # a memory map when the entry will not be kept in memory: the crop reads only its ROI
                compact = self.load_compact(path, mmap=self.memory_bytes <= 0)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                compact = None
        if compact is None:
            sample, _ = self.get_with_status(case)
            compact = dict(sample)
            avail = np.asarray(sample["available"], dtype=bool)
            compact["image"] = sample["image"][avail].astype(np.float16)
            compact["available"] = avail
        if self.memory_bytes > 0:
            size = sum(v.nbytes for v in compact.values() if isinstance(v, np.ndarray))
            if size <= self.memory_bytes:
                while self._memory and self._memory_used + size > self.memory_bytes:
                    _, old = self._memory.popitem(last=False)
                    self._memory_used -= sum(v.nbytes for v in old.values() if isinstance(v, np.ndarray))
                self._memory[key] = compact
                self._memory_used += size
        return dict(compact)


_CHUNK = 16384
"""Elements per conversion call: below torch's parallel grain size (32768), so no thread pool starts."""


def _copy_to_float32(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for a contiguous float32 ``dst``.

    float16 sources go through torch's vectorised (F16C) conversion, ~8x faster than numpy's, in chunks
    small enough to stay on the calling thread: this runs beside training (DataLoader main process or
    workers), where waking a thread pool per call costs more than the copy on a busy CPU.
    """
    if src.dtype != np.float16 or not dst.flags.c_contiguous:
        dst[...] = src
        return
    d = torch.from_numpy(dst.reshape(-1))
    with warnings.catch_warnings():  # a read-only memory map: the tensor is only read from
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        s = torch.from_numpy(np.ascontiguousarray(src).reshape(-1))
    for i in range(0, d.numel(), _CHUNK):
        d[i : i + _CHUNK].copy_(s[i : i + _CHUNK])


def expand_compact(compact: dict[str, Any]) -> dict[str, Any]:
    """Compact entry (available channels, float16) -> :func:`preprocess_case` dict (all channels, float32)."""
    available = np.asarray(compact["available"], dtype=bool)
    stored = compact["image"]
    image = np.zeros((len(available), *stored.shape[1:]), dtype=np.float32)
    for dst, src in zip(np.flatnonzero(available), stored):
        _copy_to_float32(image[dst], src)
    out = dict(compact)
    out["image"] = image
    return out
