"""Atomic writes: whole files or nothing, with ordinary permissions."""

from __future__ import annotations

import json
import os

import pytest

from dlmi.atomic import FILE_MODE, write_atomic, write_json_atomic


def test_json_round_trip_and_ordinary_permissions(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "a.json", {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert os.stat(path).st_mode & 0o777 == FILE_MODE
    assert FILE_MODE & 0o444  # readable, unlike mkstemp's 0600 default (under any usual umask)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
