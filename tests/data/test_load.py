"""Readers: every format, bad rows counted with their line numbers, never a crash."""

from __future__ import annotations

import json

import pytest

from lmopt.data.load import BadRows, detect_format, open_records, read_records
from lmopt.data.write import JsonlWriter, record_row
from lmopt.errors import LmoptError


def test_jsonl_bad_rows_counted_with_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "hello world"}\n{bad json\n{"txt": 1}\n\n{"text": "caf\xe9 \xff"}\n'
                     b'{"text": 5}\n[1, 2]\n{"text": "ok again"}\n')
    stream = open_records(path)
    recs = list(stream)
    assert [(r.line, r.text) for r in recs] == [(1, "hello world"), (8, "ok again")]
    lines = {reason: v for reason, v in stream.bad.lines.items()}
    assert stream.bad.total == 5
    assert sorted(n for v in lines.values() for n in v) == [2, 3, 5, 6, 7]
    assert any("invalid JSON" in r and lines[r] == [2] for r in lines)
    assert any("not UTF-8" in r and lines[r] == [5] for r in lines)
    assert "line 3" in stream.bad.summary()


def test_csv_multiline_field_and_wrong_field_count(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b'id,text\n1,hello\n2,"multi\nline"\n3,a,b\n4,\xff\xfe\n')
    stream = open_records(path)
    recs = list(stream)
    assert [(r.line, r.text, r.row["id"]) for r in recs] == [(2, "hello", "1"), (3, "multi\nline", "2")]
    assert stream.bad.total == 2
    assert sorted(n for v in stream.bad.lines.values() for n in v) == [5, 6]


def test_txt_paragraph_line_file_splits(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("para one\nline two\n\n\npara two\n")
    assert [(r.line, r.text) for r in open_records(path)] == [(1, "para one\nline two"), (5, "para two")]
    assert [r.line for r in open_records(path, split="line")] == [1, 2, 5]
    assert len(list(open_records(path, split="file"))) == 1


def test_json_array_alpaca_fields_and_gzip(tmp_path):
    import gzip

    rows = [{"instruction": "Add.", "input": "", "output": "2"}, {"instruction": "Say hi", "output": "hi"}]
    path = tmp_path / "a.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(rows, fh)
    assert detect_format(path) == "json"
    recs = list(open_records(path))
    assert [r.text for r in recs] == ["Add.\n\n2", "Say hi\n\nhi"]
    assert recs[0].fields == ("instruction", "input", "output")


def test_parquet_and_saved_hf_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["a b c", "d e f"], "n": [1, 2]}), tmp_path / "a.parquet")
    assert [(r.line, r.text) for r in open_records(tmp_path / "a.parquet")] == [(1, "a b c"), (2, "d e f")]
    datasets.Dataset.from_dict({"text": ["x y", "z"]}).save_to_disk(str(tmp_path / "ds"))
    assert [r.text for r in open_records(tmp_path / "ds")] == ["x y", "z"]


def test_explicit_field_missing_and_errors(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"q": "a", "a": "b"}\n{"q": "c"}\n')
    bad = BadRows()
    recs = list(read_records(path, text_field=["q", "a"], bad=bad))
    assert [r.text for r in recs] == ["a\n\nb"] and bad.lines == {"has no text field 'a'": [2]}
    with pytest.warns(UserWarning, match="line 2"):
        list(read_records(path, text_field=["q", "a"]))
    with pytest.raises(LmoptError, match="file not found"):
        open_records(tmp_path / "missing.jsonl")
    with pytest.raises(LmoptError, match="unknown format"):
        open_records(path, format="xml")


def test_writer_is_atomic_and_restores_fields(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "Hi there", "input": "", "output": "Hello", "id": 7}\n')
    rec = next(iter(open_records(path)))
    rec.text = "Hi <EMAIL>\n\nHello"
    out = tmp_path / "out.jsonl"
    with JsonlWriter(out) as w:
        w.write(record_row(rec))
    expected = {"instruction": "Hi <EMAIL>", "input": "", "output": "Hello", "id": 7}
    assert json.loads(out.read_text()) == expected
    with pytest.raises(RuntimeError), JsonlWriter(out) as w:
        w.write({"text": "partial"})
        raise RuntimeError
    assert "partial" not in out.read_text()
