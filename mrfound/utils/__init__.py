"""Small utilities shared by the package: atomic file writes, progress bars, seeding."""

from mrfound.utils.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["atomic_dir", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]
