"""The `quantize` and `prune` steps: what the quantized model's card records, and calibration files
named relative to the recipe's folder."""

from __future__ import annotations

import pytest

from lmopt.compress.calibration_data import MIX_PARTS, calibration_set, is_file_source
from lmopt.compress.prune.step import prune_step
from lmopt.compress.quantize import rotate
from lmopt.compress.quantize.config import QuantizeStepConfig, RotateConfig
from lmopt.compress.quantize.rotate_step import rotate_step
from lmopt.compress.quantize.step import quantize_step
from lmopt.configs import parse_config
from lmopt.data.text import pydoc_text
from lmopt.errors import LmoptError
from lmopt.models import load_model
from lmopt.models.card import ModelCard
from lmopt.pipeline import load_recipe_file, run_recipe
from lmopt.step import StepContext

SMALL = {"n_samples": 16, "seq_len": 32}


def _quantize(model, output, **fields):
    config = parse_config(QuantizeStepConfig, {"group_size": 32, **fields}, "quantize")
    result = quantize_step(StepContext(model=model, data=None, output=output), config)
    return result, ModelCard.read(result.model).format_info["quantization"]


def test_gptq_card_lists_safeguard_choices_and_calibration_parts(tiny, tiny_dir, tmp_path):
    result, info = _quantize(tiny_dir, tmp_path / "q", calibration=SMALL)
    # every group of Linears in both layers has its choice, with both held-out errors
    assert set(info["safeguard"]) == {"0", "1"}
    for groups in info["safeguard"].values():
        assert set(groups) == {"qkv", "o", "gate_up", "down"}
        assert all(c["kept"] in ("gptq", "rtn") and c[c["kept"]] <= min(c["gptq"], c["rtn"]) for c in groups.values())
    kept = [c["kept"] for groups in info["safeguard"].values() for c in groups.values()]
    assert info["safeguard_kept"] == result.metrics["safeguard_kept"] == {k: kept.count(k) for k in set(kept)}
    calibration = info["calibration"]
    assert (calibration["source"], calibration["samples"], calibration["seq_len"], calibration["heldout_samples"]) \
        == ("mix", 16, 32, 2)
    # the parts are the mix's shares as calibration_set draws them (16 + 2 held-out windows)
    assert calibration["parts"] == calibration_set(tiny.tokenizer, "mix", 18, 32).parts
    assert sum(calibration["parts"].values()) == 18 and set(calibration["parts"]) <= set(MIX_PARTS)
    assert info["rotation"] is None and info["lm_head"].startswith("rtn int8")


def test_rtn_card_has_no_calibration(tiny_dir, tmp_path):
    _, info = _quantize(tiny_dir, tmp_path / "rtn", method="rtn", bits=8, group_size=0)
    assert info["calibration"] is None and info["safeguard"] == {} and info["rotation"] is None


def test_card_records_the_rotation(tiny, tiny_dir, tmp_path):
    described = rotate.describe(tiny.model.config.hidden_size)
    _, info = _quantize(tiny_dir, tmp_path / "rq", method="rotate+gptq", calibration=SMALL)
    assert info["rotation"]["hidden"] == described and info["rotation"]["seed"] == 0
    # a `rotate` step before a plain GPTQ: the rotation is read from the parent's card
    rotated = rotate_step(StepContext(model=tiny_dir, data=None, output=tmp_path / "r"), RotateConfig(seed=3))
    _, info = _quantize(rotated.model, tmp_path / "rq2", calibration=SMALL)
    assert info["rotation"]["hidden"] == described and info["rotation"]["seed"] == 3


def test_named_sources_are_not_files():
    assert not any(is_file_source(s) for s in ("mix", "pydoc", "pydoc-train", "wikitext2", "wikitext"))
    assert is_file_source("calib.txt") and is_file_source("data/chat.jsonl")


def test_recipe_reads_a_relative_calibration_file_from_its_folder(tiny_dir, tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "calib.txt").write_text(pydoc_text("train")[:20000])
    (folder / "q.yaml").write_text(
        f"name: q\nmodel: {tiny_dir}\nworkdir: steps\nsteps:\n"
        "  - quantize: {method: gptq, group_size: 32, calibration: {source: data/calib.txt, n_samples: 8, "
        "seq_len: 32}}\n")
    monkeypatch.chdir(tmp_path)  # elsewhere: the path is not read from the working directory
    recipe, base_dir = load_recipe_file(folder / "q.yaml")
    summary = run_recipe(recipe, base_dir, log=lambda *a: None)
    card = load_model(summary["output"]).card
    calibration = card.format_info["quantization"]["calibration"]
    used = str(folder.resolve() / "data" / "calib.txt")
    assert calibration["source"] == used and calibration["parts"] == {used: 9}
    assert card.config["calibration"]["source"] == "data/calib.txt"  # the config as the recipe gave it


@pytest.mark.parametrize("step, fields", [
    (quantize_step, {"method": "gptq"}),
    (prune_step, {"method": "wanda"}),
])
def test_missing_calibration_file_is_one_line_naming_it(tiny_dir, tmp_path, step, fields):
    from lmopt.compress.prune.config import PruneStepConfig

    config_type = QuantizeStepConfig if step is quantize_step else PruneStepConfig
    config = parse_config(config_type, {**fields, "calibration": {"source": "no/such.txt"}}, "step")
    ctx = StepContext(model=tiny_dir, data=None, output=tmp_path / "out", base_dir=tmp_path / "recipes")
    with pytest.raises(LmoptError) as err:
        step(ctx, config)
    message = str(err.value)
    assert str(tmp_path / "recipes" / "no" / "such.txt") in message and "\n" not in message


def test_prune_step_reads_a_relative_calibration_file(tiny_dir, tmp_path):
    from lmopt.compress.prune.config import PruneStepConfig

    (tmp_path / "calib.txt").write_text(pydoc_text("train")[:20000])
    config = parse_config(PruneStepConfig, {"method": "wanda", "calibration": {"source": "calib.txt", **SMALL}},
                          "prune")
    result = prune_step(StepContext(model=tiny_dir, data=None, output=tmp_path / "p", base_dir=tmp_path), config)
    card = ModelCard.read(result.model)
    assert card.config["calibration"]["source"] == str(tmp_path / "calib.txt")
