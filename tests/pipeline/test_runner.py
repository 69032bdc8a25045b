"""Recipes: steps validated up front, cached by input+config hash, resumed; registry records runs."""

import pytest
import yaml

from lmopt.data import pydoc_text
from lmopt.errors import LmoptError
from lmopt.evaluate import perplexity
from lmopt.models import content_hash, load_model
from lmopt.monitor import Registry
from lmopt.pipeline import Recipe, load_recipe_file, run_recipe
from lmopt.step import STEP_TABLE, NullRecorder, Step, get_step


def write_recipe(path, model, **extra):
    recipe = {"name": "t", "model": str(model), "dtype": "float32", "workdir": str(path.parent / "work"),
              "steps": [{"evaluate": {"tasks": ["pydoc"], "limit": 2, "seq_len": 32}}], **extra}
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_runs_then_resumes_from_cache(tmp_path, tiny_dir):
    path = write_recipe(tmp_path / "r.yaml", tiny_dir)
    recipe, base = load_recipe_file(path)
    logs = []
    first = run_recipe(recipe, base, log=logs.append)
    second = run_recipe(recipe, base, log=logs.append)
    # The step's figure is the library call's on the same model, text, window and limit.
    tiny = load_model(tiny_dir, dtype="float32")
    direct = perplexity(tiny.model, tiny.tokenizer, pydoc_text("eval"), seq_len=32, limit=2)
    assert first["steps"][0]["metrics"]["pydoc"]["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-6)
    assert second["steps"][0] == first["steps"][0]
    assert logs[-1].endswith("cached")


def test_config_change_invalidates_cache(tmp_path, tiny_dir):
    a = run_recipe(Recipe.parse(yaml.safe_load(write_recipe(tmp_path / "a.yaml", tiny_dir).read_text())),
                   tmp_path, log=lambda m: None)
    recipe = yaml.safe_load((tmp_path / "a.yaml").read_text())
    recipe["steps"][0]["evaluate"]["limit"] = 3
    b = run_recipe(Recipe.parse(recipe), tmp_path, log=lambda m: None)
    assert a["steps"][0]["key"] != b["steps"][0]["key"]
    assert b["steps"][0]["metrics"]["pydoc"]["windows"] == 3


def test_wrong_fields_are_named(tmp_path, tiny_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": str(tiny_dir), "steps": [{"evaluate": {"taks": ["pydoc"]}}]}))
    with pytest.raises(LmoptError, match=r"bad.yaml: steps.0.evaluate: taks: unknown field"):
        load_recipe_file(bad)
    bad.write_text(yaml.safe_dump({"model": "x", "stepz": []}))
    with pytest.raises(LmoptError, match="stepz: unknown field"):
        load_recipe_file(bad)
    bad.write_text(yaml.safe_dump({"model": "x", "steps": [{"nosuchstep": {}}]}))
    with pytest.raises(LmoptError, match="unknown step 'nosuchstep'"):
        load_recipe_file(bad)


def test_recipe_evaluations_and_registry(tmp_path, tiny_dir):
    registry = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    recipe = Recipe.parse({"model": str(tiny_dir), "dtype": "float32", "workdir": str(tmp_path / "w"),
                           "evaluate": {"tasks": ["pydoc"], "limit": 1, "seq_len": 16}})
    summary = run_recipe(recipe, tmp_path, registry=registry, log=lambda m: None)
    assert summary["evaluation"][str(tiny_dir)]["tasks"]["pydoc"]["windows"] == 1
    rows = registry.query(kind="evaluate")
    assert len(rows) == 1 and rows[0]["task"] == "pydoc" and rows[0]["model_hash"] == content_hash(tiny_dir)
    assert rows[0]["metrics"]["windows"] == 1


def test_evaluate_block_is_evaluate_steps_around_the_others(tmp_path, tiny_dir):
    recipe = Recipe.parse({"model": str(tiny_dir), "steps": [{"bench": {"new_tokens": 2}}],
                           "evaluate": {"tasks": ["pydoc"], "limit": 1, "baseline": True}})
    assert [name for name, _ in recipe.step_list()] == ["evaluate", "bench", "evaluate"]
    assert recipe.step_list()[0][1] == {"tasks": ["pydoc"], "limit": 1, "seq_len": 2048}


class CountingRecorder(NullRecorder):
    def __init__(self):
        self.rows = []

    def record(self, kind, model, metrics, **fields):
        self.rows.append((kind, model, fields.get("task")))
        return len(self.rows)


def test_the_runner_records_each_step_once_and_cached_steps_not_again(tmp_path, tiny_dir):
    recorder = CountingRecorder()
    recipe = Recipe.parse({"model": str(tiny_dir), "dtype": "float32", "workdir": str(tmp_path / "w"),
                           "steps": [{"quantize": {"method": "rtn", "bits": 8}},
                                     {"evaluate": {"tasks": ["pydoc"], "limit": 1, "seq_len": 16}}]})
    run_recipe(recipe, tmp_path, registry=recorder, log=lambda m: None)
    assert [kind for kind, _, _ in recorder.rows] == ["quantize", "evaluate"]
    run_recipe(recipe, tmp_path, registry=recorder, log=lambda m: None)
    assert len(recorder.rows) == 2  # both cached: nothing measured, nothing recorded again


def test_every_step_in_the_table_is_declared_under_its_name():
    for name in STEP_TABLE:
        step = get_step(name)
        assert isinstance(step, Step) and step.name == name and step.summary


def test_unknown_step_names_the_known_ones():
    with pytest.raises(LmoptError, match="unknown step 'nope' .*quantize"):
        get_step("nope")


def test_models_the_steps_save_are_registered_with_lineage(tmp_path, tiny_dir):
    from lmopt.models.card import content_hash
    from lmopt.monitor import get_model

    registry = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    recipe = Recipe.parse({"model": str(tiny_dir), "workdir": str(tmp_path / "w"),
                           "steps": [{"quantize": {"method": "rtn", "bits": 8}}]})
    summary = run_recipe(recipe, tmp_path, registry=registry, log=lambda m: None)
    record = get_model(content_hash(summary["output"]), registry)
    assert record.step == "quantize" and record.parent_hash == content_hash(tiny_dir)
    assert record.figures["size_on_disk_mb"] == summary["steps"][0]["metrics"]["size_on_disk_mb"]
