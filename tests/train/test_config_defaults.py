"""Method-dependent training defaults: LoRA's own learning rate, an explicit `lr` always wins."""

from __future__ import annotations

import pytest

from lmopt.configs import parse_config
from lmopt.step import get_step
from lmopt.train.config import DistillConfig, DistillStepConfig, FinetuneStepConfig, TrainConfig


def test_lr_default_depends_on_method():
    assert TrainConfig().lr == 5e-5
    assert TrainConfig(method="lora").lr == 1e-3
    assert FinetuneStepConfig(method="lora").lr == 1e-3
    assert DistillConfig().lr == DistillConfig.DEFAULT_LR["full"]
    assert DistillStepConfig(student_layers=15, method="lora").lr == 1e-3


@pytest.mark.parametrize("cls", [TrainConfig, DistillConfig])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_explicit_lr_wins(cls, method):
    assert cls(method=method, lr=3e-5).lr == 3e-5
    assert cls.parse({"method": method, "lr": 0.02}).lr == 0.02
    assert cls.parse({"method": method, "lr": None}).lr == cls.DEFAULT_LR[method]  # null = the default


def test_resolved_lr_round_trips_and_rejects_bad_values(tmp_path):
    config = TrainConfig(method="lora")
    assert TrainConfig.parse(config.to_dict()) == config
    (tmp_path / "c.yaml").write_text("method: lora\n")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml").lr == 1e-3
    with pytest.raises(Exception, match="lr"):
        parse_config(TrainConfig, {"lr": 0})


def test_recipe_step_gets_the_lora_rate():
    config = get_step("finetune").parse({"method": "lora"}, where="r.yaml: steps.0.finetune")
    assert config.lr == 1e-3
