"""The finetune/distill recipe steps, the shipped recipes (on the tiny model) and the CLI verbs."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from lmopt.models import content_hash
from lmopt.pipeline import Recipe, load_recipe_file, run_recipe
from lmopt.step import get_step

RECIPES = ["finetune-lora-pubmed.yaml", "finetune-chat-alpaca.yaml", "distill-half-depth.yaml"]
SMALL = {
    "max_steps": 2,
    "max_minutes": None,
    "seq_len": 32,
    "batch_size": 2,
    "eval_every": 1,
    "save_every": 1,
    "max_val_batches": 1,
}


def _recipe_path(name: str) -> Path:
    return Path(str(resources.files("lmopt") / "recipes" / name))


def _text(tmp_path):
    from lmopt.data.text import pydoc_text

    path = tmp_path / "corpus.txt"
    path.write_text(pydoc_text("train")[:8_000])
    return path


def _chat(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": f"Count to {i}", "input": "", "output": " ".join(map(str, range(i)))}
                for i in range(2, 22)
            ]
        )
    )
    return path


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_run_on_tiny(tmp_path, tiny_dir, name):
    recipe, _ = load_recipe_file(_recipe_path(name))  # validates every step config
    raw = yaml.safe_load(_recipe_path(name).read_text())
    ((step_name, cfg),) = raw["steps"][0].items()
    data = _chat(tmp_path) if cfg.get("format") == "chat" else _text(tmp_path)
    cfg.update(SMALL, data=str(data))
    if step_name == "distill":
        cfg["student_layers"] = 1
    raw.update(model=str(tiny_dir), workdir=str(tmp_path / "work"), evaluate=None)
    summary = run_recipe(Recipe.parse(raw), tmp_path, log=lambda m: None)
    record = summary["steps"][0]
    out = Path(record["model"])
    assert (out / "config.json").exists() and (out / "lmopt.json").exists()
    card = json.loads((out / "lmopt.json").read_text())
    assert card["step"] == step_name and card["parent_hash"] == content_hash(tiny_dir)
    assert record["metrics"]["steps"] == 2 and not list((tmp_path / "work").glob("*.run"))
    if step_name == "distill":
        assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1


def test_step_configs_reject_bad_fields():
    from lmopt.errors import LmoptError

    with pytest.raises(LmoptError, match="lr"):
        get_step("finetune").parse({"lr": -1}, where="r.yaml: steps.0.finetune")
    with pytest.raises(LmoptError, match="unknown field"):
        get_step("finetune").parse({"learning_rate": 1e-4}, where="r.yaml")
    with pytest.raises(LmoptError, match="exactly one of student and student_layers"):
        get_step("distill").parse({}, where="r.yaml")


def _cli(args: list[str]) -> int:
    from lmopt.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_train_and_distill(tmp_path, tiny_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMOPT_HOME", str(tmp_path / "home"))
    data = _text(tmp_path)
    assert (
        _cli(
            [
                "train",
                str(tiny_dir),
                "--data",
                str(data),
                "--lora",
                "--max-steps",
                "2",
                "--seq-len",
                "32",
                "--batch-size",
                "2",
                "--output",
                "ft",
                "--json",
                "ft.json",
            ]
        )
        == 0
    )
    assert (tmp_path / "ft" / "config.json").exists()
    ft_metrics = json.loads((tmp_path / "ft.json").read_text())["steps"][0]["metrics"]
    assert ft_metrics["method"] == "lora"
    assert ft_metrics["peak_rss_mb"] > 0 and ft_metrics["peak_rss_mb"] >= ft_metrics["peak_memory_mb"]
    assert ft_metrics["gradient_checkpointing"] is False  # a tiny model fits the default budget
    assert json.loads((tmp_path / "ft" / "lmopt.json").read_text())["config"]["lr"] == 1e-3
    assert (
        _cli(
            [
                "distill",
                "--teacher",
                str(tiny_dir),
                "--student-layers",
                "1",
                "--data",
                str(data),
                "--max-steps",
                "1",
                "--seq-len",
                "32",
                "--output",
                "st",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "st" / "config.json").read_text())["num_hidden_layers"] == 1
    capsys.readouterr()
    assert _cli(["train", str(tiny_dir), "--data", str(tmp_path / "nope.txt"), "--output", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.txt" in err and "\n" not in err and "Traceback" not in err  # one line naming the file
