"""Atomic writes: the file or folder appears whole, with the modes a plain write would give it."""

from __future__ import annotations

import os

import pytest

from rlhf_lib.io import atomic_dir, atomic_write_json, atomic_write_text


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_atomic_outputs_get_the_umask_modes_not_the_temp_files_0600(tmp_path, umask_027):
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "m.json", {"k": 1})
    with atomic_dir(tmp_path / "model") as staging:
        (staging / "w.bin").write_bytes(b"0")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "model" / "w.bin").read_bytes() == b"0"


def test_a_failed_atomic_dir_leaves_the_old_folder_and_no_staging(tmp_path):
    with atomic_dir(tmp_path / "model") as staging:
        (staging / "w.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "model") as staging:
        (staging / "w.bin").write_bytes(b"new")
        raise RuntimeError("killed mid-save")
    assert (tmp_path / "model" / "w.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
