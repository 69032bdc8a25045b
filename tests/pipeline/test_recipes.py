"""Every shipped recipe validates (all step configs parse); the foundation's recipe runs end to end."""

from pathlib import Path

import pytest
import yaml

import lmopt
from lmopt.pipeline import Recipe, load_recipe_file, run_recipe

SHIPPED = sorted((Path(lmopt.__file__).parent / "recipes").glob("*.yaml"))
SPACES = [p for p in SHIPPED if p.stem.endswith("-space")]  # search spaces for `lmopt tune`
SUITES = [p for p in SHIPPED if p.stem.startswith("suite-")]  # benchmark suites for `lmopt check`
IMPROVE = [p for p in SHIPPED if p.stem.startswith("improve-")]  # `lmopt improve --config` maps
RECIPES = [p for p in SHIPPED if p not in SPACES and p not in SUITES and p not in IMPROVE]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_validates(path):
    recipe, _ = load_recipe_file(path)
    assert recipe.steps or recipe.evaluate


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_search_space_validates(path):
    from lmopt.tune.space import SearchSpace

    assert SearchSpace.from_yaml(path).params


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_validates(path):
    from lmopt.monitor.suite import load_suite

    suite = load_suite(path)
    assert suite.tasks or suite.perplexity


@pytest.mark.parametrize("path", IMPROVE, ids=[p.stem for p in IMPROVE])
def test_shipped_improve_config_validates(path):
    from lmopt.monitor.config import ImproveConfig

    assert ImproveConfig.from_yaml(path)


def test_evaluate_embedded_recipe_runs_on_a_tiny_model(tmp_path, tiny_dir):
    data = yaml.safe_load((Path(lmopt.__file__).parent / "recipes" / "evaluate-embedded.yaml").read_text())
    data.update(model=str(tiny_dir), dtype="float32", workdir=str(tmp_path / "w"))
    data["steps"][0]["evaluate"].update(limit=2, seq_len=32)
    data["steps"][1]["bench"].update(new_tokens=3, batch_sizes=[1], repeats=1, measure_bandwidth=False,
                                     prefill_len=16)
    summary = run_recipe(Recipe.parse(data), tmp_path, log=lambda m: None)
    evaluate, bench = (s["metrics"] for s in summary["steps"])
    assert evaluate["pydoc"]["windows"] == 2
    assert bench["speed"]["decode_tokens_per_s_bs1"] > 0


def test_invalid_yaml_is_one_line_with_its_position(tmp_path):
    from lmopt.errors import LmoptError

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nsteps:\n  - quantize: {bits: 4\n")
    with pytest.raises(LmoptError) as info:
        load_recipe_file(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}:4:1: invalid YAML") and "\n" not in message
