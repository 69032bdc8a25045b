"""Shards of the Ray engine read exactly what the local reader reads: same records, lines and bad rows.

No Ray needed: jsonl files under the task-counting size are planned in this process.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from lmopt.data import ray_read
from lmopt.data.load import Record, open_records
from lmopt.data.ray_read import count_line_breaks, plan_shards, shard_events


def _local_events(path, text_field=None):
    """(line, text or bad reason) in the order the local reader meets them (bad rows by line)."""
    stream = open_records(path, text_field=text_field)
    recs = [(r.line, r.text, r.fields) for r in stream]
    bad = sorted((line, reason) for reason, lines in stream.bad.lines.items() for line in lines)
    return recs, bad


def _shard_events(path, workers=2, text_field=None):
    shards = plan_shards(path, text_field, workers)
    recs, bad = [], []
    for shard in shards:
        for line, value in shard_events(shard, text_field):
            if isinstance(value, Record):
                recs.append((line, value.text, value.fields))
            else:
                bad.append((line, value))
    return shards, recs, sorted(bad)


def messy_jsonl(path, docs):
    """Rows with every line ending text mode knows, blank lines, bad JSON, bytes that are not UTF-8,
    and rows without the text field, long enough to be cut into several shards."""
    out = bytearray()
    for i, doc in enumerate(docs * 6):
        row = json.dumps({"text": f"{i} {doc}", "id": i}).encode()
        out += row + [b"\n", b"\r\n", b"\r"][i % 3]
        if i % 17 == 0:
            out += b"\n  \n"
        if i % 23 == 0:
            out += b"{not json\r\n"
        if i % 29 == 0:
            out += b'{"text": "caf\xe9"}\n'
        if i % 31 == 0:
            out += b'{"body": "no text"}\n'
    path.write_bytes(bytes(out))
    return path


def test_jsonl_byte_range_shards_read_like_the_whole_file(tmp_path, docs):
    path = messy_jsonl(tmp_path / "messy.jsonl", docs)
    shards, recs, bad = _shard_events(path)
    assert len(shards) > 4  # the file really was cut
    assert [s.first_line for s in shards] == sorted({s.first_line for s in shards})
    local_recs, local_bad = _local_events(path)
    assert recs == local_recs and bad == local_bad
    assert {reason for _, reason in bad} >= {"is not UTF-8", "has no text field 'text'"}
    assert any(reason.startswith("is invalid JSON") for _, reason in bad)


def test_line_breaks_are_counted_as_text_mode_counts_them(tmp_path):
    path = tmp_path / "breaks.txt"
    data = b"a\r\nb\rc\n\r\n\rd"
    path.write_bytes(data)
    with open(path, encoding="utf-8", newline="") as fh:
        text_mode_lines = len(fh.readlines())
    assert count_line_breaks(str(path), 0, len(data)) == text_mode_lines - 1  # the last line has no break
    # a \r\n split across two reads counts once
    big = tmp_path / "split.txt"
    big.write_bytes(b"x" * ((1 << 24) - 1) + b"\r\n" + b"y\n")
    assert count_line_breaks(str(big), 0, big.stat().st_size) == 2


def test_text_field_guess_reaches_later_shards(tmp_path, docs, monkeypatch):
    monkeypatch.setattr(ray_read, "MIN_SHARD_BYTES", 1024)
    path = tmp_path / "content.jsonl"
    rows = [{"other": 1}] * 3 + [{"content": d, "id": i} for i, d in enumerate(docs)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    shards, recs, bad = _shard_events(path)
    assert len(shards) > 2 and shards[0].fields is None and shards[-1].fields == ("content",)
    assert (recs, bad) == _local_events(path)
    assert {f for _, _, f in recs} == {("content",)}


def test_parquet_row_groups_are_shards(tmp_path, docs):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"abstract": docs, "id": list(range(len(docs)))}), path, row_group_size=7)
    shards, recs, bad = _shard_events(path)
    assert len(shards) == -(-len(docs) // 7) and shards[1].first_line == 8
    assert (recs, bad) == _local_events(path)


def test_other_formats_are_one_shard(tmp_path, docs):
    path = tmp_path / "docs.csv"
    path.write_text("text,id\n" + "".join(f'"{d}",{i}\n' for i, d in enumerate(docs)))
    shards, recs, bad = _shard_events(path)
    assert len(shards) == 1 and (recs, bad) == _local_events(path)
