"""The shipped clean-* recipes (on small data, the tiny model), the recipe steps and `lmopt data` verbs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lmopt.cli import app
from lmopt.pipeline import run_recipe
from lmopt.pipeline.recipe import Recipe

RECIPES = Path(__file__).resolve().parents[2] / "src" / "lmopt" / "recipes"


def _recipe(name: str, **overrides) -> Recipe:
    raw = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    raw.update(overrides)
    return Recipe.parse(raw)


@pytest.fixture
def corpus(tmp_path, docs) -> Path:
    path = tmp_path / "corpus.jsonl"
    rows = docs[:12] + [docs[0], docs[1].upper(), "mail me at a.b@example.com " + docs[12]]
    path.write_text("\n".join(json.dumps({"text": t}) for t in rows) + "\n{broken\n")
    return path


def test_clean_pubmed_recipe(corpus, tmp_path, data_dir):
    recipe = _recipe("clean-pubmed", data=str(corpus), workdir=str(tmp_path / "steps"),
                     data_dir=str(data_dir))
    recipe.steps[0]["clean"]["quality"]["min_words"] = 20
    recipe.steps[0]["clean"].update(decontaminate=["copa"], workers=1)
    summary = run_recipe(recipe, tmp_path, log=lambda *a: None)
    metrics = summary["steps"][0]["metrics"]
    assert metrics["rows_in"] == 15 and metrics["bad_rows"] == 1
    assert metrics["removed"] == {"exact_duplicate": 2} and metrics["pii"] == {"email": 1}
    out = Path(summary["steps"][0]["data"])
    assert len(out.read_text().splitlines()) == 13
    assert (out.parent / "report" / "report.md").exists()


def test_clean_finetune_recipe_feeds_training(corpus, tmp_path, tiny_dir):
    recipe = _recipe("clean-finetune-pubmed", data=str(corpus), model=str(tiny_dir), evaluate=None,
                     workdir=str(tmp_path / "steps"))
    recipe.steps[0]["clean"].update(decontaminate=[], quality={"min_words": 20}, workers=1)
    recipe.steps[1]["finetune"].update(max_steps=2, seq_len=32, batch_size=2, eval_every=None,
                                       save_every=None, max_minutes=None, mixed_precision="no",
                                       max_val_batches=1, warmup_steps=0)
    summary = run_recipe(recipe, tmp_path, log=lambda *a: None)
    assert summary["steps"][0]["metrics"]["rows_out"] == 13
    trained = summary["steps"][1]["metrics"]
    assert trained["train_records"] + trained["val_records"] == 13  # the cleaned rows, not the raw 15
    card = json.loads((Path(summary["steps"][1]["model"]) / "lmopt.json").read_text())
    assert card["step"] == "finetune" and trained["steps"] == 2


def test_clean_augment_instruct_recipe(tmp_path):
    rows = [{"instruction": f"Explain the idea number {i} of the lecture in plain words.", "input": "",
             "output": f"Idea {i} says that practice makes the work easier over time."} for i in range(5)]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows + rows[:1]))
    recipe = _recipe("clean-augment-instruct", data=str(path), workdir=str(tmp_path / "steps"))
    recipe.steps[0]["clean"].update(decontaminate=[], workers=1)
    summary = run_recipe(recipe, tmp_path, log=lambda *a: None)
    assert summary["steps"][0]["metrics"]["rows_out"] == 5
    out = [json.loads(line) for line in Path(summary["steps"][1]["data"]).read_text().splitlines()]
    made = summary["steps"][1]["metrics"]
    # swap, delete and insert once per row: each copy is kept (made) or dropped as a near copy
    assert sum(made["made"].values()) + sum(made["dropped"].values()) == 5 * 3
    assert sum(r["augmentation"] == "original" for r in out) == 5
    assert len(out) == 5 + sum(made["made"].values()) > 5
    new = [r for r in out if r["augmentation"] != "original"]
    assert all(r["output"].startswith("Idea") and "source_line" in r for r in new)


def test_cli_clean_stats_augment(corpus, tmp_path, docs):
    runner = CliRunner()
    evals = tmp_path / "eval.txt"
    evals.write_text(docs[3])
    out = tmp_path / "clean.jsonl"
    res = runner.invoke(app, ["data", "clean", str(corpus), "-o", str(out), "--pii", "--min-words", "20",
                              "--workers", "1", "--dedup", "exact", "--decontaminate", f"{evals},pydoc"])
    assert res.exit_code == 0, res.output
    assert "exact_duplicate" in res.output and "1 bad rows" in res.output
    assert len(out.read_text().splitlines()) == 12 and "decontaminate" in res.output
    res = runner.invoke(app, ["data", "clean", str(corpus), "-o", str(out), "--pii", "--min-words", "20",
                              "--workers", "1", "--dedup", "exact", "--keep-removed"])
    assert len(out.read_text().splitlines()) == 13
    removed = [json.loads(line) for line in (tmp_path / "clean.removed.jsonl").read_text().splitlines()]
    assert {row["reason"] for row in removed} >= {"exact_duplicate"}  # each removed row with its reason
    assert (tmp_path / "clean.jsonl.report" / "report.json").exists()
    res = runner.invoke(app, ["data", "stats", str(corpus)])
    assert res.exit_code == 0 and '"exact_duplicate_rows": 2' in res.output and '"email": 1' in res.output
    aug = tmp_path / "aug.jsonl"
    res = runner.invoke(app, ["data", "augment", str(out), "-o", str(aug), "-m", "swap", "--per-row", "1"])
    assert res.exit_code == 0, res.output
    assert len(aug.read_text().splitlines()) == 26


def test_cli_bad_input_is_one_line_error(tmp_path, capsys):
    from lmopt.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["data", "clean", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "missing.jsonl" in err and "\n" not in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("dedup: {mode: fuzzy}\n")
    (tmp_path / "in.txt").write_text("hello")
    with pytest.raises(SystemExit) as exc:
        main(["data", "clean", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.jsonl"),
              "--config", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "dedup.mode: Input should be" in err and "\n" not in err  # one line naming the field
