"""`prune()` on whole models, the `prune` step and its shipped recipes, and `lmopt prune` on the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lmopt.compress.prune import (
    MagnitudeConfig,
    PruneStepConfig,
    SparseGPTConfig,
    StructuredConfig,
    WandaConfig,
    prune,
)
from lmopt.compress.prune.math import sparsegpt_prune_weight
from lmopt.configs import parse_config
from lmopt.errors import LmoptError
from lmopt.models import tiny_llama

RECIPES = Path(__file__).resolve().parents[2] / "src" / "lmopt" / "recipes"


def ids(n=4, seq=32):
    return torch.randint(3, 500, (n, seq), generator=torch.Generator().manual_seed(0))


def decoder_linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}


@pytest.mark.parametrize("config", [
    MagnitudeConfig(sparsity=0.5), WandaConfig(sparsity=0.5), SparseGPTConfig(sparsity=0.5),
    WandaConfig(pattern="2:4"), SparseGPTConfig(pattern="4:8"), MagnitudeConfig(pattern="2:4"),
])
def test_every_decoder_linear_gets_the_sparsity(config):
    t = tiny_llama()
    embed = t.model.get_input_embeddings().weight.clone()
    report = prune(t, config, calibration=ids())
    assert report["sparsity"] == pytest.approx(0.5)
    for name, linear in decoder_linears(t.model).items():
        zeros = linear.weight == 0
        if config.pattern:
            n, m = map(int, config.pattern.split(":"))
            assert ((~zeros).view(linear.out_features, -1, m).sum(-1) <= n).all(), name
        elif config.method == "wanda":  # per output row
            assert (zeros.float().mean(1) == 0.5).all(), name
        else:
            assert zeros.float().mean() == pytest.approx(0.5, abs=0.01), name
    assert torch.equal(t.model.get_input_embeddings().weight, embed)  # embeddings / lm_head untouched


def test_sequential_sparsegpt_uses_each_linears_own_inputs():
    """Layer 0 pruned by prune() equals the math run on the Hessians of its dense inputs."""
    dense, x = tiny_llama(), ids()
    inputs = {}

    def keep(name):
        def hook(_module, args):  # returns None: the input is left unchanged
            inputs[name] = args[0].reshape(-1, args[0].shape[-1])
        return hook

    layer0 = dense.model.model.layers[0]
    names = ("self_attn.q_proj", "mlp.down_proj")
    hooks = [layer0.get_submodule(n).register_forward_pre_hook(keep(n)) for n in names]
    with torch.no_grad():
        dense.model(input_ids=x)
    for h in hooks:
        h.remove()
    pruned = tiny_llama()
    prune(pruned, SparseGPTConfig(sparsity=0.5, skip=["k_proj"]), calibration=x)
    layer = pruned.model.model.layers[0]
    for name, x_in in inputs.items():
        expected, _ = sparsegpt_prune_weight(dense.model.model.layers[0].get_submodule(name).weight,
                                             x_in.t() @ x_in, 0.5)
        torch.testing.assert_close(layer.get_submodule(name).weight, expected, rtol=1e-4, atol=1e-5)
    assert (layer.self_attn.k_proj.weight != 0).all()  # skipped


def test_step_config_names_wrong_fields():
    config = parse_config(PruneStepConfig, {"method": "structured", "mlp": 0.25})
    assert isinstance(config, StructuredConfig) and config.mlp == 0.25
    assert isinstance(parse_config(PruneStepConfig, {}), WandaConfig)  # the default method
    with pytest.raises(LmoptError, match=r"r.yaml: steps.0.prune: mlp: unknown field \(not a field of method 'wanda'"):
        parse_config(PruneStepConfig, {"method": "wanda", "mlp": 0.25}, where="r.yaml: steps.0.prune")
    with pytest.raises(LmoptError, match="pattern"):
        parse_config(PruneStepConfig, {"method": "sparsegpt", "pattern": "4:2"})
    with pytest.raises(LmoptError, match="recover: unknown field"):
        parse_config(PruneStepConfig, {"method": "wanda", "recover": {}})
    with pytest.raises(LmoptError, match="method: unknown method 'snip'"):
        parse_config(PruneStepConfig, {"method": "snip"})
    with pytest.raises(LmoptError, match="calibration"):
        prune(tiny_llama().model, WandaConfig())  # no tokenizer, no windows


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("prune-*.yaml")))
def test_shipped_recipes_run_on_the_tiny_model(name, tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmopt.pipeline import Recipe, run_recipe

    raw = yaml.safe_load((RECIPES / name).read_text())
    raw.update(model=str(tiny_dir), workdir=str(tmp_path / "work"), output=str(tmp_path / "out"),
               evaluate={"tasks": ["pydoc"], "limit": 1, "seq_len": 32, "baseline": True})
    for step in raw["steps"]:
        step["prune"]["calibration"] = {"n_samples": 4, "seq_len": 64}
        if step["prune"].get("layers"):
            step["prune"]["layers"] = 1  # the tiny model has 2
        if step["prune"].get("recover"):
            step["prune"]["recover"]["distill"] = {"max_steps": 2, "seq_len": 32, "batch_size": 2}
    summary = run_recipe(Recipe.parse(raw), tmp_path, log=lambda m: None)
    metrics = next(s["metrics"] for s in summary["steps"] if s["step"] == "prune")
    if raw["steps"][0]["prune"]["method"] == "structured":  # removes weights; the others zero them
        assert metrics["parameters_after"] < metrics["parameters_before"]
    else:
        assert metrics["parameters_after"] == metrics["parameters_before"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert sum(p.numel() for p in model.parameters()) == metrics["parameters_after"]
    assert len(summary["evaluation"]) == 2  # before and after
    if "recover" in raw["steps"][0]["prune"]:
        assert metrics["recovery"]["steps"] == 2 and metrics["recovery"]["teacher"]
    card = json.loads((tmp_path / "out" / "lmopt.json").read_text())
    assert card["step"] == "prune" and card["config"]["method"] == raw["steps"][0]["prune"]["method"]


def lmopt(*args):
    return subprocess.run([sys.executable, "-m", "lmopt", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ}, timeout=300)


def test_cli_prunes_and_saves(tiny_dir, tmp_path):
    out, report = tmp_path / "m", tmp_path / "r.json"
    res = lmopt("prune", tiny_dir, "--method", "sparsegpt", "--pattern", "2:4", "--n-samples", "4",
                "--calib-seq-len", "64", "--output", out, "--json", report)
    assert res.returncode == 0, res.stderr
    assert json.loads(report.read_text())["steps"][0]["metrics"]["sparsity"] == 0.5
    res = lmopt("prune", tiny_dir, "--method", "structured", "--mlp", "0.25", "--layers", "1", "--n-samples", "4",
                "--calib-seq-len", "64", "--output", tmp_path / "s")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "s" / "config.json").read_text())["num_hidden_layers"] == 1


@pytest.mark.parametrize("args, message", [
    (["--method", "structured", "--set", "wings=2"], "wings: unknown field (not a field of method 'structured')"),
    (["--method", "wanda", "--pattern", "3:2"], "pattern"),
    (["--method", "structured", "--heads", "0.5", "--sparsity", "0.5"],
     "sparsity: unknown field (not a field of method 'structured')"),
])
def test_cli_bad_input_is_one_line(args, message, tiny_dir, tmp_path):
    res = lmopt("prune", tiny_dir, *args, "--output", tmp_path / "x")
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0  # one line
