"""Evaluation task items: users' mc files, the shipped files, and the hub fallback read alike."""

import json

import datasets
import pytest

from lmopt.data.tasks import load_task
from lmopt.errors import LmoptError


def test_user_task_file_and_its_errors(tmp_path):
    good = tmp_path / "task.jsonl"
    good.write_text("\n".join(json.dumps({"query": f"2+{i}=", "choices": [str(2 + i), "0"], "gold": 0})
                              for i in range(3)))
    items = load_task(f"mc:{good}")
    assert len(items) == 3 and items[0].requests[0] == ("2+0=", " 2")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "choices": ["x"], "gold": 0}\n{"query": "b", "choices": []}\n')
    with pytest.raises(LmoptError, match=r"bad.jsonl:2"):
        load_task(f"mc:{bad}")
    with pytest.raises(LmoptError, match="unknown task"):
        load_task("nosuchtask")


@pytest.mark.parametrize("name", ["piqa", "arc_easy", "arc_challenge", "boolq", "winogrande", "openbookqa",
                                  "copa", "lambada"])
def test_shipped_tasks_parse(name, data_dir):
    items = load_task(name, data_dir, limit=5)
    assert len(items) == 5
    for item in items:
        assert 0 <= item.gold < len(item.requests)
        assert all(cont.startswith(" ") for _, cont in item.requests)


def _arc_hub_row(row: dict) -> dict:
    """The HF `allenai/ai2_arc` form of a local (MosaicML) ARC row."""
    labels = [chr(ord("A") + i) for i in range(len(row["choices"]))]
    return {"question": row["query"].removeprefix("Question: "),
            "choices": {"text": row["choices"], "label": labels}, "answerKey": labels[row["gold"]]}


def test_hub_rows_give_the_same_items_as_the_local_files(data_dir, tmp_path, monkeypatch):
    local_arc = [json.loads(line) for line in (data_dir / "arc_easy" / "arc_easy.jsonl").open()][:20]
    local_piqa = [json.loads(line) for line in (data_dir / "piqa" / "valid.jsonl").open()][:20]
    labels = (data_dir / "piqa" / "valid-labels.lst").read_text().split()[:20]
    hub = {"allenai/ai2_arc": [_arc_hub_row(r) for r in local_arc],
           "ybisk/piqa": [{**r, "label": int(g)} for r, g in zip(local_piqa, labels, strict=True)]}
    monkeypatch.setattr(datasets, "load_dataset", lambda dataset_id, config, split: hub[dataset_id])
    empty = tmp_path / "no-data"
    empty.mkdir()
    for name in ("arc_easy", "piqa"):
        assert load_task(name, empty) == load_task(name, data_dir, limit=20)


def test_hub_fallback_offline_is_one_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(LmoptError, match="boolq.*no local files.*could not be fetched"):
        load_task("boolq", tmp_path)
