"""Search spaces: YAML shorthands, validation errors that name the file and field, dotted fields."""

import optuna
import pytest

from lmopt.errors import LmoptError
from lmopt.tune.space import SearchSpace, apply_params, get_dotted
from lmopt.tune.toy import ToyConfig

SPACE = """\
optim.lr: {type: log-float, low: 1.0e-4, high: 1.0}
optim.weight_decay: {type: float, low: 0.0, high: 0.1, step: 0.05}
hidden: {type: int, low: 4, high: 64, step: 4}
batch_size: [8, 16, 32]
"""


def test_yaml_shorthands_become_optuna_distributions(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    space = SearchSpace.from_yaml(path)
    assert space.params["optim.lr"].log and space.params["optim.lr"].type == "float"
    assert space.params["batch_size"].choices == [8, 16, 32]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        values = space.sample(trial)
        study.tell(trial, 0.0)
        assert 1e-4 <= values["optim.lr"] <= 1.0
        assert values["optim.weight_decay"] in (0.0, 0.05, 0.1)
        assert values["hidden"] % 4 == 0 and 4 <= values["hidden"] <= 64
        assert values["batch_size"] in (8, 16, 32)
    dists = study.trials[0].distributions
    assert isinstance(dists["optim.lr"], optuna.distributions.FloatDistribution) and dists["optim.lr"].log
    assert isinstance(dists["hidden"], optuna.distributions.IntDistribution) and dists["hidden"].step == 4
    assert isinstance(dists["batch_size"], optuna.distributions.CategoricalDistribution)
    # the same dict survives the JSON round trip workers use
    assert SearchSpace.from_dict(space.to_dict()) == space


@pytest.mark.parametrize("body, message", [
    ("lr: {type: float, low: 1.0}", "lr: Value error, a float parameter needs 'low' and 'high'"),
    ("lr: {type: float, low: 2, high: 1}", "low (2.0) is above high (1.0)"),
    ("lr: {type: log-float, low: 0, high: 1}", "log scale needs low > 0"),
    ("lr: {type: gaussian, low: 0, high: 1}", "params.lr.type"),
    ("lr: {type: float, low: 0, high: 1, scale: 2}", "params.lr.scale: unknown field"),
    ("[1, 2]", "a search space is a non-empty map"),
])
def test_bad_space_names_file_and_field(tmp_path, body, message):
    path = tmp_path / "space.yaml"
    path.write_text(body)
    with pytest.raises(LmoptError) as err:
        SearchSpace.from_yaml(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_check_against_the_tuned_config_names_the_field():
    space = SearchSpace.from_dict({"optim.lr": {"type": "float", "low": 0.1, "high": 1}, "hiden": [4, 8]})
    with pytest.raises(LmoptError, match="hiden=4: hiden: unknown field"):
        space.check(ToyConfig, {})
    space = SearchSpace.from_dict({"optim.lr": {"type": "float", "low": 0.0, "high": 1}})
    with pytest.raises(LmoptError, match=r"optim.lr=0.0: optim.lr: Input should be greater than 0"):
        space.check(ToyConfig, {})
    SearchSpace.from_dict({"optim.lr": {"type": "float", "low": 0.1, "high": 1}}).check(ToyConfig, {})


def test_dotted_fields_set_nested_values_without_touching_the_base():
    base = {"optim": {"lr": 0.1}, "steps": 5}
    out = apply_params(base, {"optim.weight_decay": 0.01, "hidden": 8, "a.b.c": 1})
    assert out == {"optim": {"lr": 0.1, "weight_decay": 0.01}, "steps": 5, "hidden": 8, "a": {"b": {"c": 1}}}
    assert base == {"optim": {"lr": 0.1}, "steps": 5}
    assert get_dotted(out, "a.b.c") == 1 and get_dotted(out, "a.x") is None
    with pytest.raises(LmoptError, match="'steps' is not a group of fields"):
        apply_params(base, {"steps.x": 1})
    space = SearchSpace.from_dict({"optim.lr": {"type": "float", "low": 0.01, "high": 1}, "hidden": [4, 16]})
    assert space.values_in({"optim": {"lr": 0.1}, "hidden": 8}) == {"optim.lr": 0.1}
