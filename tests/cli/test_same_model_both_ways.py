"""The documented best W4 setting and a structured prune give identical weights from a recipe and from
the command line (each run in its own step cache, so both really compute)."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from lmopt.cli import app
from lmopt.pipeline import load_recipe_file, run_recipe

CASES = {
    # docs/quantize.md: AWQ scales with GPTQ rounding (here on the tiny model's width: group 32)
    "best-w4": ({"quantize": {"method": "awq", "rounding": "gptq", "bits": 4, "group_size": 32,
                              "calibration": {"n_samples": 4, "seq_len": 32}}},
                ["quantize", "--method", "awq", "--rounding", "gptq", "--bits", "4", "--group-size", "32",
                 "--n-samples", "4", "--calib-seq-len", "32"]),
    "structured": ({"prune": {"method": "structured", "mlp": 0.25, "layers": 1,
                              "calibration": {"n_samples": 4, "seq_len": 32}}},
                   ["prune", "--method", "structured", "--mlp", "0.25", "--layers", "1",
                    "--set", "calibration.n_samples=4", "--set", "calibration.seq_len=32"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_recipe_and_cli_give_the_same_weights(case, tiny_dir, tmp_path):
    step, argv = CASES[case]
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({"model": str(tiny_dir), "workdir": str(tmp_path / "work-recipe"),
                                           "output": str(tmp_path / "from-recipe"), "steps": [step]}))
    recipe, base = load_recipe_file(recipe_file)
    run_recipe(recipe, base, log=lambda m: None)
    result = CliRunner().invoke(app, [argv[0], str(tiny_dir), *argv[1:], "--output", str(tmp_path / "from-cli"),
                                      "--workdir", str(tmp_path / "work-cli")])
    assert result.exit_code == 0, result.output
    # Every tensor identical, value for value. (Files are compared by value, not bytes: a zero can come
    # out of a reduction as +0.0 in one run and -0.0 in another, which is the same weight.)
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("from-recipe", "from-cli"))
    assert set(a) == set(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
