"""Reading training rows: every accepted shape, format detection, errors naming file and line."""

from __future__ import annotations

import json

import pytest

from lmopt.errors import LmoptError
from lmopt.train.data import read_records, split_records, to_messages


def test_txt_documents_split_on_blank_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first doc\nstill first\n\n\nsecond doc\n\n")
    assert read_records(path) == ("text", ["first doc\nstill first", "second doc"])


def test_jsonl_text_and_chat_shapes(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert read_records(path) == ("text", ["a", "b"])
    dolly = tmp_path / "d.jsonl"
    dolly.write_text(json.dumps({"prompt": "Q?", "response": "A."}) + "\n")
    kind, rows = read_records(dolly)
    assert kind == "chat" and rows == [
        [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    ]


def test_alpaca_json_array_joins_instruction_and_input(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "Sort", "input": "b, a", "output": "a, b"},
                {"instruction": "Say hi", "input": "", "output": "hi"},
            ]
        )
    )
    kind, rows = read_records(path)
    assert kind == "chat"
    assert rows[0][0]["content"] == "Sort\n\nb, a" and rows[1][0]["content"] == "Say hi"
    assert rows[0][1] == {"role": "assistant", "content": "a, b"}


def test_messages_rows_and_in_memory_lists():
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    assert read_records([{"messages": msgs}]) == ("chat", [msgs])
    assert read_records(["x", "y"]) == ("text", ["x", "y"])
    assert read_records(["x"], format="text") == ("text", ["x"])


def test_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q"}\n')
    with pytest.raises(LmoptError, match=r"bad.jsonl:2: chat row needs"):
        read_records(path)
    path.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(LmoptError, match=r"bad.jsonl:2: row is invalid JSON"):
        read_records(path)
    with pytest.raises(LmoptError, match="cannot tell the format"):
        read_records([{"foo": 1}])
    with pytest.raises(LmoptError, match="no assistant message"):
        to_messages({"messages": [{"role": "user", "content": "u"}]})
    with pytest.raises(LmoptError, match="messages.0: needs a role"):
        to_messages({"messages": [{"role": "robot", "content": "u"}]})
    with pytest.raises(LmoptError, match="file not found"):
        read_records(tmp_path / "missing.txt")


def test_file_errors_name_every_bad_line(tmp_path):
    """Files go through lmopt.data.load's reader: all bad lines are named, not just the first."""
    from lmopt.data.text import file_text

    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{broken\n{"text": "caf\xe9"}\n{"body": "x"}\n{also broken\n')
    with pytest.raises(LmoptError, match=r"bad.jsonl:2: row is invalid JSON") as err:
        read_records(path)
    assert "3 bad rows in all" in str(err.value) and "line 2, 5" in str(err.value)
    with pytest.raises(LmoptError, match=r"bad.jsonl:2: row is invalid JSON") as err:
        file_text(path)
    assert "4 bad rows in all" in str(err.value) and "has no 'text' field (line 4)" in str(err.value)
    path.write_text('{"text": 5}\n{"text": "a\u2028b"}\n', encoding="utf-8")  # a raw U+2028 inside a string
    assert file_text(path) == "5\n\na\u2028b"
    array = tmp_path / "a.json"
    array.write_bytes(b'[{"text": "ok", "meta": "\xff"}]')
    with pytest.raises(LmoptError, match=r"a.json:1: row is not UTF-8"):
        read_records(array)
    array.write_text('"a string, not rows"')
    with pytest.raises(LmoptError, match="expected a JSON array of rows"):
        read_records(array)


def test_split_is_fixed_by_seed_and_disjoint():
    records = [f"d{i}" for i in range(40)]
    train, val = split_records(records, 0.1, seed=3)
    assert len(val) == 4 and set(train).isdisjoint(val) and len(train) + len(val) == 40
    assert split_records(records, 0.1, seed=3) == (train, val)
    assert split_records(records, 0.1, seed=4)[1] != val
    assert split_records(["a", "b"], 0.01, seed=0)[1] != []  # at least one held out
