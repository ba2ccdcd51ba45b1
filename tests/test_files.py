"""Atomic writes: complete or absent, usual permissions, no temporary files left behind."""
import os
import stat

import pytest

from medtune import files


def test_atomic_write_replaces_whole_file_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    files.atomic_write_json(target, {"a": 1})
    files.atomic_write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}") and '"a": 2' in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~files._UMASK  # not mkstemp's 0600
    assert os.listdir(target.parent) == ["metrics.json"]


def test_failed_write_keeps_old_version(tmp_path, monkeypatch):
    target = tmp_path / "a.jsonl"
    files.atomic_write_jsonl(target, [{"x": 1}])

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)  # fails after the new bytes were written to the temporary file
    with pytest.raises(OSError):
        files.atomic_write_jsonl(target, [{"x": 2}])
    assert target.read_text() == '{"x": 1}\n'
    assert os.listdir(tmp_path) == ["a.jsonl"]


def test_publish_dir_moves_nested_files(tmp_path):
    dest = tmp_path / "run"
    stage = files.staging_dir(dest)
    files.atomic_write_text(stage / "adapter" / "w.txt", "w")
    files.publish_dir(stage, dest)
    assert (dest / "adapter" / "w.txt").read_text() == "w"
    assert sorted(p.name for p in dest.iterdir()) == ["adapter"]
