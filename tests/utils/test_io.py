"""Tests of mrfound/utils/io.py: atomic files and folders."""

import os
import stat

import pytest

from mrfound.utils.io import atomic_dir, atomic_write_json, atomic_write_text, cleanup_stale_temps


def test_atomic_write_replaces_and_keeps_normal_mode(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_json(p, {"x": 2})
    assert p.read_text().strip().endswith("}") and '"x": 2' in p.read_text()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")

    def boom(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    from mrfound.utils.io import atomic_write_with

    with pytest.raises(OSError, match="No space"):
        atomic_write_with(p, boom)
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_dir_all_or_nothing(tmp_path):
    target = tmp_path / "final"
    with atomic_dir(target) as d:
        (d / "w.bin").write_bytes(b"1")
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "w.bin").write_bytes(b"2")
        raise RuntimeError("crash while writing")
    assert (target / "w.bin").read_bytes() == b"1"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["final"]


def test_cleanup_restores_folder_moved_aside(tmp_path):
    aside = tmp_path / ".final.old-0123abcd"
    aside.mkdir()
    (aside / "w.bin").write_bytes(b"1")
    (tmp_path / ".x.json.abc.tmp.json").write_text("partial")
    cleanup_stale_temps(tmp_path)
    assert (tmp_path / "final" / "w.bin").read_bytes() == b"1"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["final"]
