"""Search spaces: which fields of a step config to tune, and over which range, read from YAML.

A space maps dotted config fields (a field of the tuned step's config, `lora.r` for a nested one) to
a distribution. It lives in a YAML file next to the recipe:

```yaml
lr: {type: float, low: 1.0e-5, high: 3.0e-3, log: true}   # log-uniform
weight_decay: {type: float, low: 0.0, high: 0.1}
lora.r: {type: int, low: 4, high: 32, step: 4}
lora.alpha: {type: categorical, choices: [8, 16, 32]}
batch_size: [2, 4, 8]                                      # a bare list = categorical
```

`type: log-float` / `log-int` are shorthands for `log: true`. `SearchSpace.check(ConfigCls, base)`
validates every field against the tuned config up front, so a misspelt field fails before any trial.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from lmopt.configs import Config, read_yaml_map, set_path
from lmopt.errors import LmoptError


class Param(Config):
    """One dimension of the search space."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    """Lower bound (float/int), inclusive."""
    high: float | None = None
    """Upper bound (float/int), inclusive."""
    log: bool = False
    """Sample on a log scale (learning rates); needs low > 0."""
    step: float | None = None
    """Grid spacing for float/int (int default 1); not allowed with log."""
    choices: list[Any] | None = None
    """Values of a categorical parameter (numbers, strings, booleans, null)."""

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("'step' cannot be combined with log scale")
        return self

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw this parameter from an Optuna trial."""
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def corners(self) -> list[Any]:
        """The extreme values (used to validate the space against the config)."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, int | float) and self.low <= value <= self.high


def _normalize(raw: Any) -> Any:
    """Accept the YAML shorthands: a bare list, `log-float`, `log-int`."""
    if isinstance(raw, list):
        return {"type": "categorical", "choices": raw}
    if isinstance(raw, dict) and str(raw.get("type", "")).startswith("log-"):
        return {**raw, "type": raw["type"].removeprefix("log-"), "log": True}
    return raw


class SearchSpace(Config):
    """Dotted config field -> distribution."""

    params: dict[str, Param] = Field(default_factory=dict)
    source: str | None = None
    """The file the space was read from (named in errors)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "space") -> SearchSpace:
        if not isinstance(data, dict) or not data:
            raise LmoptError(f"{where}: a search space is a non-empty map of field -> distribution")
        source = data.get("source") if set(data) <= {"params", "source"} else None
        body = data["params"] if set(data) <= {"params", "source"} else data
        params = {k: _normalize(v) for k, v in body.items()}
        return cls.parse({"params": params, "source": source or None}, where=where)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        try:
            data = read_yaml_map(path)
        except LmoptError as exc:  # YAML that is not a map: say what a space is (from_dict's message)
            if "expected a map" not in str(exc):
                raise
            data = {}
        space = cls.from_dict(data, where=str(path))
        space.source = str(path)
        return space

    def sample(self, trial: Any) -> dict[str, Any]:
        """Draw every parameter from an Optuna trial: {dotted name: value}."""
        return {name: param.suggest(trial, name) for name, param in self.params.items()}

    def values_in(self, base: dict[str, Any]) -> dict[str, Any]:
        """The base config's own values of the tuned fields, where they lie inside the space."""
        found = {}
        for name, param in self.params.items():
            value = get_dotted(base, name)
            if value is not None and param.contains(value):
                found[name] = value
        return found

    def check(self, config_cls: type[Config], base: dict[str, Any], where: str | None = None) -> None:
        """Raise LmoptError naming the field when a value of the space does not fit the config."""
        where = where or self.source or "space"
        for name, param in self.params.items():
            for value in param.corners():
                config_cls.parse(apply_params(base, {name: value}), where=f"{where}: {name}={value!r}")


def get_dotted(data: dict[str, Any], name: str) -> Any:
    """`data["a"]["b"]` for name "a.b"; None when a level is missing."""
    node: Any = data
    for key in name.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with each dotted field set (missing levels are created)."""
    out = copy.deepcopy(base)
    for name, value in params.items():
        try:
            set_path(out, name, value)
        except LmoptError as exc:
            raise LmoptError(f"space: {exc}") from None
    return out
