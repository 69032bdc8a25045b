"""Tuning the real training steps: the shipped recipes on the tiny model, and one integration run."""

import json
from pathlib import Path

import optuna
import pytest

from lmopt.pipeline import Recipe, run_recipe
from lmopt.tune import SearchSpace, TuneConfig, tune

RECIPES = Path(__file__).resolve().parents[2] / "src" / "lmopt" / "recipes"
SMALL = {"seq_len": 32, "max_steps": 4, "eval_every": 2, "max_val_batches": None, "val_fraction": 0.2}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from lmopt.data.text import pydoc_text

    docs = [d for d in pydoc_text("train").split("\n\n") if len(d) > 200][:40]
    path = tmp_path_factory.mktemp("data") / "docs.txt"
    path.write_text("\n\n".join(docs))
    return path


def shrunk(name, **updates):
    return Recipe.parse({**Recipe.from_yaml(RECIPES / name).to_dict(), **updates})


def validation_loss(model_dir, data, config):
    """Token-weighted validation CE of a saved model, recomputed with a plain loop (the reference)."""
    import torch

    from lmopt.models import load_model
    from lmopt.train.finetune import prepare_data
    from lmopt.train.losses import ce_sum

    loaded = load_model(model_dir, dtype="float32")
    nll = count = 0
    with torch.no_grad():
        for ex in prepare_data(str(data), loaded.tokenizer, config).val:
            ids = torch.tensor([ex["input_ids"]])
            n, c = ce_sum(loaded.model(input_ids=ids).logits, torch.tensor([ex["labels"]]))
            nll, count = nll + n, count + c
    return nll / count


def test_shipped_recipe_tunes_lora_and_keeps_the_best_model(tmp_path, tiny_dir, text_file):
    from lmopt.train.config import TrainConfig

    recipe = shrunk("tune-lora-pubmed.yaml", model=str(tiny_dir))
    base = {**recipe.steps[0]["finetune"], **SMALL, "data": str(text_file)}
    recipe.steps = [{"finetune": base}]
    config = TuneConfig(n_trials=3, startup_trials=1, output=str(tmp_path / "out"), plots=False)
    result = tune(recipe, RECIPES / "tune-lora-pubmed-space.yaml", config, log=lambda m: None)
    assert sum(result.counts.values()) == 3 and result.counts.get("complete", 0) >= 1
    space = SearchSpace.from_yaml(RECIPES / "tune-lora-pubmed-space.yaml")
    assert set(result.best_params) == set(space.params)
    card = json.loads((result.best_model / "lmopt.json").read_text())
    assert card["parent"] == str(tiny_dir) and card["step"] == "finetune"
    assert card["tune"]["trial"] == result.best_trial and card["config"]["lr"] == result.best_params["lr"]
    # the kept model is the best trial's model: its validation loss, recomputed, is the trial's value
    fields = {k: v for k, v in result.best_config.items() if k not in ("data", "val_data")}
    recomputed = validation_loss(result.best_model, text_file, TrainConfig(**fields))
    assert recomputed == pytest.approx(result.best_values[0], rel=1e-4)


def test_shipped_step_recipe_runs(tmp_path, tiny_dir, text_file):
    recipe = shrunk("tune-lora-pubmed-step.yaml", model=str(tiny_dir), data=str(text_file),
                    workdir=str(tmp_path / "work"), evaluate={"tasks": ["pydoc"], "limit": 1, "seq_len": 32})
    step = recipe.steps[0]["tune"]
    step.update(n_trials=2, timeout=None, output=str(tmp_path / "study"), plots=False,
                space=str(RECIPES / step["space"]), base={**step["base"], **SMALL, "max_steps": 2})
    summary = run_recipe(recipe, tmp_path, log=lambda m: None)
    metrics = summary["steps"][0]["metrics"]
    assert sum(metrics["counts"].values()) == 2
    card = json.loads((Path(summary["output"]) / "lmopt.json").read_text())
    assert card["tune"]["trial"] == metrics["best_trial"]
    # the recipe's evaluation is of the kept model: the library's perplexity on it, recomputed
    from lmopt.data.text import pydoc_text
    from lmopt.evaluate import perplexity
    from lmopt.models import load_model

    kept = load_model(summary["output"], dtype="float32")
    direct = perplexity(kept.model, kept.tokenizer, pydoc_text("eval"), seq_len=32, limit=1)["perplexity"]
    assert summary["evaluation"][summary["output"]]["tasks"]["pydoc"]["perplexity"] == pytest.approx(direct, rel=1e-5)


@pytest.mark.integration
def test_tune_lora_on_the_embedded_model(tmp_path, data_dir):
    abstracts = (data_dir / "pubmedqa" / "pubmedqa_abstracts.txt").read_text().split("\n\n")[:24]
    data = tmp_path / "pubmed.txt"
    data.write_text("\n\n".join(abstracts))
    recipe = shrunk("tune-lora-pubmed.yaml")
    base = {**recipe.steps[0]["finetune"], "data": str(data), "seq_len": 64, "batch_size": 2, "max_steps": 2,
            "eval_every": 1, "eval_before": True, "max_val_batches": 2, "val_fraction": 0.1}
    recipe.steps = [{"finetune": base}]
    space = {"lr": {"type": "log-float", "low": 3e-4, "high": 3e-3}, "lora_r": [4, 8]}
    config = TuneConfig(n_trials=2, pruner="none", output=str(tmp_path / "out"), plots=False)
    result = tune(recipe, space, config, log=lambda m: None)
    assert result.counts == {"complete": 2}
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    for trial in study.trials:  # each trial's validation loss is the best of its run, never above the start
        reports = dict(trial.user_attrs["reports"])  # step -> eval_loss, step 0 from eval_before
        assert trial.value == pytest.approx(min(reports.values())) and trial.value <= reports[0]
    card = json.loads((result.best_model / "lmopt.json").read_text())
    assert card["tune"]["value"] == result.best_values[0]
    assert card["metrics"]["finetune"]["best_eval_loss"] <= card["metrics"]["finetune"]["first_eval_loss"]


def test_distill_is_tunable(tmp_path, tiny_dir, text_file):
    recipe = Recipe.parse({"model": str(tiny_dir), "steps": [{"distill": {
        "data": str(text_file), "student_layers": 1, **SMALL, "max_steps": 2}}]})
    space = {"temperature": {"type": "float", "low": 1.0, "high": 4.0}, "alpha": [0.0, 0.5]}
    config = TuneConfig(n_trials=2, pruner="none", output=str(tmp_path / "out"), plots=False)
    result = tune(recipe, space, config, log=lambda m: None)
    assert result.counts == {"complete": 2}
    card = json.loads((result.best_model / "lmopt.json").read_text())
    assert card["step"] == "distill" and card["config"]["temperature"] == result.best_params["temperature"]
    assert json.loads((result.best_model / "config.json").read_text())["num_hidden_layers"] == 1


def test_same_config_same_result_whatever_ran_before(tmp_path, tiny_dir, text_file):
    """Trials are reproducible: the LoRA init must not depend on the global RNG state left behind."""
    import torch

    from lmopt.train.config import FinetuneStepConfig
    from lmopt.tune.config import TuneJob
    from lmopt.tune.targets import get_target

    job = TuneJob(target="finetune", space={"lr": [1e-3]}, model=str(tiny_dir), data=str(text_file),
                  tune=TuneConfig(output=str(tmp_path)))
    config = FinetuneStepConfig(method="lora", format="text", **{**SMALL, "max_steps": 2})
    losses = []
    for _ in range(2):
        torch.rand(1000)  # whatever an earlier trial left in the global RNG
        outcome = get_target("finetune").run(job, config, lambda step, metrics: False)
        losses.append(outcome.metrics["eval_loss"])
    assert losses[0] == losses[1]
