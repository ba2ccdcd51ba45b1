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


def test_split_lines_breaks_on_newlines_only():
    text = "a\u2028b\u2029c\x85d\x0ce\r\nf\n\ng"  # Unicode line breaks stay inside a line; "\r\n" ends one
    assert files.split_lines(text) == ["a\u2028b\u2029c\x85d\x0ce", "f", "", "g"]
    assert text.splitlines() != files.split_lines(text)  # what str.splitlines() would have done
    assert files.split_lines("x\n") == ["x"] and files.split_lines("x") == ["x"] and files.split_lines("") == []


def test_read_text_drops_a_bom_and_names_the_first_bad_byte(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfline 1\r\nline 2")
    assert files.read_text_lines(tmp_path / "bom.txt") == ["line 1", "line 2"]
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(files.MedtuneError, match=r"latin1.txt: not UTF-8 text \(byte 3\)"):
        files.read_text(tmp_path / "latin1.txt")
    (tmp_path / "bom-latin1.txt").write_bytes(b"\xef\xbb\xbf" + "caf\u00e9".encode("latin-1"))
    with pytest.raises(files.MedtuneError, match=r"\(byte 6\)"):  # counted in the file, the mark included
        files.read_text(tmp_path / "bom-latin1.txt")
