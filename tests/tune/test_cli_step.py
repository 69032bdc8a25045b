"""`lmopt tune` on a recipe, and the `tune` recipe step (cached and resumable like any step)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from lmopt.pipeline import Recipe, run_recipe

TOY_RECIPE = {"name": "toy", "steps": [{"toy-regression": {"steps": 20, "eval_every": 5}}]}
TOY_SPACE = {"optim.lr": {"type": "log-float", "low": 1e-3, "high": 0.3}, "hidden": [4, 8]}


def lmopt(*args):
    return subprocess.run([sys.executable, "-m", "lmopt", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "LMOPT_QUIET": "1"}, timeout=300)


def test_cli_tunes_a_recipe_and_writes_json(tmp_path):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(TOY_RECIPE))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TOY_SPACE))
    res = lmopt("tune", tmp_path / "recipe.yaml", "--space", tmp_path / "space.yaml", "--trials", 3,
                "--pruner", "none", "--sampler", "random", "--output", tmp_path / "out",
                "--json", tmp_path / "r.json")
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["counts"] == {"complete": 3} and data["best_model"] == str(tmp_path / "out" / "best")
    assert "best eval_loss" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("hiddn: [4, 8]\n")
    res = lmopt("tune", tmp_path / "recipe.yaml", "--space", bad, "--trials", 3)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{bad}: hiddn=4: hiddn: unknown field" in res.stderr
    res = lmopt("tune", tmp_path / "recipe.yaml", "--space", bad, "--pruner", "sometimes")
    assert res.returncode == 2 and "lmopt tune: pruner" in res.stderr


def test_tune_step_in_a_recipe_continues_with_the_best_model(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TOY_SPACE))
    tune = {"step": "toy-regression", "base": {"steps": 20, "eval_every": 5}, "space": "space.yaml",
            "n_trials": 3, "pruner": "none", "plots": False, "output": "study"}
    recipe = Recipe.parse({"name": "r", "workdir": str(tmp_path / "work"), "steps": [{"tune": tune}]})
    logs = []
    first = run_recipe(recipe, tmp_path, log=logs.append)
    step = first["steps"][0]
    assert step["metrics"]["counts"] == {"complete": 3}
    kept = json.loads((tmp_path / "study" / "best" / "lmopt.json").read_text())["tune"]
    assert step["metrics"]["best_trial"] == kept["trial"]
    # the recipe goes on with a copy of the best model
    assert json.loads((Path(first["output"]) / "lmopt.json").read_text())["tune"] == kept
    second = run_recipe(recipe, tmp_path, log=logs.append)
    assert logs[-1].endswith("cached") and second["output"] == first["output"]
