"""Files: atomic writes (a file is either absent, its old version, or complete - never half-written) and the one
way medtune reads the text files people have (UTF-8 with or without a byte-order mark; JSON Lines split on newlines
only)."""

from __future__ import annotations

import codecs
import json
import os
import shutil
import tempfile
from pathlib import Path

from medtune.errors import MedtuneError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask is process-wide and not thread-safe


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def publish_dir(tmp_dir: str | Path, dest: str | Path) -> None:
    """Move every file of `tmp_dir` into `dest`, one atomic rename each, then remove `tmp_dir`. Files get the usual
    permissions (umask): some writers (safetensors, temporary files) create them 0600."""
    tmp_dir, dest = Path(tmp_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(tmp_dir.rglob("*")):
        if src.is_file():
            target = dest / src.relative_to(tmp_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            src.chmod(0o666 & ~_UMASK)
            os.replace(src, target)
    shutil.rmtree(tmp_dir, ignore_errors=True)


STAGING = ".staging-"  # the name prefix of staging_dir's folders


def staging_dir(dest: str | Path) -> Path:
    """A fresh temporary folder beside `dest` (same file system, so publish_dir's renames are atomic)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=dest, prefix=STAGING))


# ---------------------------------------------------------------- reading what people have


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file, with or without a byte-order mark (dropped). Not UTF-8: one MedtuneError naming the
    first bad byte (counted from 0, the mark included)."""
    data = Path(path).read_bytes()
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise MedtuneError(f"{path}: not UTF-8 text (byte {e.start + skip})") from None


def split_lines(text: str) -> list[str]:
    """Lines as JSON Lines defines them: split on "\\n" only, a "\\r" before it dropped ("\\r\\n" files). Unlike
    str.splitlines(), U+2028, U+2029, U+0085, form feeds and the other Unicode breaks stay inside their line (U+2028
    and U+2029 may stand unescaped inside JSON strings). A last line without a newline counts; a final newline adds
    no empty line."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def read_text_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text or JSON Lines file (read_text, then split_lines); blank lines are kept, so that
    list index + 1 is the line number an editor shows."""
    return split_lines(read_text(path))
