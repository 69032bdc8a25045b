"""The evaluation tasks read from the HF Hub datasets, for machines without a local data dir (online only).

Hub rows are mapped to the row layout of the local (MosaicML) files, so `tasks.py` formats both alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError

# name -> (dataset id, config, split)
HUB_SOURCES: dict[str, tuple[str, str | None, str]] = {
    "piqa": ("ybisk/piqa", None, "validation"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "boolq": ("google/boolq", None, "validation"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation"),
    "openbookqa": ("allenai/openbookqa", "main", "test"),
    "copa": ("aps/super_glue", "copa", "validation"),
    "lambada": ("EleutherAI/lambada_openai", "default", "test"),
}


def _to_local_row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """Map a hub row to the local (MosaicML) row format that tasks.py formats."""
    if name == "piqa":
        return {"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": r["label"]}
    if name.startswith("arc"):
        labels = r["choices"]["label"]
        return {"query": "Question: " + r["question"], "choices": r["choices"]["text"],
                "gold": labels.index(r["answerKey"])}
    if name == "boolq":
        return {"query": f"{r['passage']}\nQuestion: {r['question']}?", "gold": int(r["answer"])}
    if name == "winogrande":
        i = r["sentence"].index("_")
        return {"context_options": [r["sentence"][:i] + r["option1"], r["sentence"][:i] + r["option2"]],
                "continuation": r["sentence"][i + 1:].strip(), "gold": int(r["answer"]) - 1}
    if name == "openbookqa":
        return {"query": r["question_stem"], "choices": r["choices"]["text"],
                "gold": r["choices"]["label"].index(r["answerKey"])}
    if name == "copa":
        connector = {"cause": "because", "effect": "therefore"}[r["question"]]
        return {"query": r["premise"].strip()[:-1] + f" {connector}", "choices": [r["choice1"], r["choice2"]],
                "gold": r["label"]}
    if name == "lambada":
        context, _, word = r["text"].rpartition(" ")
        return {"context": context, "continuation": word}
    raise KeyError(name)


def hub_rows(name: str, data_dir: Path | None) -> list[dict[str, Any]]:
    """Rows of task `name` from its HF dataset, in the local file layout; a clear error offline."""
    dataset_id, config, split = HUB_SOURCES[name]
    try:
        from datasets import load_dataset  # lazy: ~1 s to import, needed only without local files

        rows = load_dataset(dataset_id, config, split=split)
    except Exception as exc:
        raise LmoptError(f"task '{name}': no local files under the data dir ({data_dir}) and the HF "
                         f"dataset {dataset_id} could not be fetched ({type(exc).__name__})") from None
    return [_to_local_row(name, r) for r in rows]
