"""Atomic writes: a target is its old or its complete new content, and nothing is left behind."""

import pytest

from lmopt.io import atomic_directory, atomic_open, atomic_path, atomic_write_text, size_on_disk_mb, write_json


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "artifact"

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_directory(target, broken)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_an_existing_artifact(tmp_path):
    target = tmp_path / "a"
    atomic_directory(target, lambda t: (t / "v").write_text("1"))
    atomic_directory(target, lambda t: (t / "v").write_text("2"))
    assert (target / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_failed_file_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_writes_land_complete(tmp_path):
    with atomic_path(tmp_path / "w.bin") as tmp:
        tmp.write_bytes(b"\x00\x01")
    with atomic_open(tmp_path / "b.bin", "wb") as fh:
        fh.write(b"\x02")
    write_json(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "w.bin").read_bytes() == b"\x00\x01" and (tmp_path / "b.bin").read_bytes() == b"\x02"
    assert (tmp_path / "r.json").read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "r.json", "w.bin"]


def test_size_on_disk_counts_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1_500_000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "extra.bin").write_bytes(b"x" * 500_000)
    (tmp_path / "config.json").write_text("{}" * 1000)
    assert size_on_disk_mb(tmp_path) == 2.0 and size_on_disk_mb(None) is None


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os

    from lmopt.io import atomic_directory, write_json

    mask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "a.json", {"x": 1})
        made = atomic_directory(tmp_path / "d", lambda tmp: (tmp / "f").write_text("y"))
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert made.stat().st_mode & 0o777 == 0o755
