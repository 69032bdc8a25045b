"""Atomic writes and sizes on disk: every file or directory lmopt writes goes through here.

A target is either its old content or its complete new content, never half: the new content is
written under a temporary name in the same directory (same file system) and renamed over the target
only when complete; on any exception the temporary is removed and the target left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file path next to `path` that replaces `path` when the block ends without error.

    For writers that take a path (`savefig`, `safetensors.save_file`); give them the format
    explicitly, since the temporary name ends in `.tmp`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; the result should read like any file the user writes
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """`open` for writing whose content appears at `path` only when the block ends without error."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def move_into_place(tmp_dir: Path, target: Path) -> Path:
    """Rename the finished directory `tmp_dir` to `target`, replacing an existing one.

    The old target is renamed aside first and deleted only after the new one is in place, so at
    every moment `target` is either the complete old or the complete new directory.
    """
    if target.exists():
        old = target.with_name(f".{target.name}.old-{tmp_dir.name[-8:]}")
        target.rename(old)
        tmp_dir.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp_dir.rename(target)
    return target


def atomic_directory(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)`, then move `tmp_dir` to `target` (replacing an existing one)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        write(tmp)
        return move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def size_on_disk_mb(path: str | Path | None) -> float | None:
    """Size of the weight files (safetensors, bin, gguf, pt) under a model directory, in MB."""
    if path is None:
        return None
    files = [p for p in Path(path).rglob("*") if p.suffix in WEIGHT_SUFFIXES]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
