"""Every field of every step's config is settable from a recipe and from the command line, alike.

For each CLI verb and each of its methods, every leaf field gets a valid non-default value; the config
the recipe parser builds from `{field: value}` must equal the one the command line builds from
`--set field=value` and, where the field has a flag, from the flag. Commands are run through the real
typer app with the step itself replaced by a recorder (running GPTQ per field would take hours).
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from typer.testing import CliRunner

from lmopt.cli import app
from lmopt.cli import steps as cli_steps
from lmopt.configs import is_literal, leaf_fields, parse_config, strip_optional, union_members
from lmopt.step import get_step

RUNNER = CliRunner()


def candidates(annotation: Any, default: Any) -> list[Any]:
    """Values to try for a field, most likely valid first."""
    annotation = strip_optional(annotation)
    if typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType):
        return [c for member in typing.get_args(annotation) for c in candidates(member, default)]
    if annotation is bool:
        return [not default] if default is not None else [True]
    if annotation is int:
        return [default + 1, default * 2, 1, 2, 32] if isinstance(default, int) else [2, 1, 8]
    if annotation is float:
        return [default / 2, default + 0.1, 0.25] if isinstance(default, float) and default else [0.25, 0.5, 1.0]
    if is_literal(annotation):
        return [a for a in typing.get_args(annotation) if a != default]
    if annotation is str:
        return ["2:4", "custom-value", "pydoc"]
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if is_literal(item):
            return [[a] for a in typing.get_args(item) if [a] != default]
        return [[3, 5]] if item is int else [["q_proj", "down_proj"]]
    if typing.get_origin(annotation) is tuple:
        return [[2, 3], [0.8, 0.9]]
    return []


def default_of(config: Any, path: str) -> Any:
    value = config
    for key in path.split("."):
        value = getattr(value, key, None) if value is not None else None
    return value


def nest(path: str, value: Any) -> dict[str, Any]:
    for key in reversed(path.split(".")):
        value = {key: value}
    return value


def method_of(verb: cli_steps.Verb, cls: Any) -> str | None:
    """The union tag of `cls` (None for a one-class config such as TrainConfig, whose `method` is a field)."""
    return cls.model_fields["method"].default if len(union_members(verb.config)) > 1 else None


def base_fields(verb: cli_steps.Verb, method: str | None) -> dict[str, Any]:
    """Fields every case carries: the method, and what other fields need (a student, eval_every)."""
    base: dict[str, Any] = {"method": method} if method else {}
    if verb.step == "distill":
        base["student_layers"] = 1
    if verb.step in ("finetune", "distill"):
        base["eval_every"] = 5  # early_stopping_patience needs it
    if verb.step == "clean":
        base["engine"] = "ray"  # `address` (a Ray cluster to join) needs it
    if verb.step == "prune" and method == "structured":
        base["recover"] = {"distill": {"eval_every": 5}}
    return base


def field_cases(verb: cli_steps.Verb) -> list[tuple[str | None, str, Any]]:
    """(method, field path, a valid non-default value) for every settable leaf of every method."""
    cases = []
    for cls in union_members(verb.config):
        method = method_of(verb, cls)
        base = base_fields(verb, method)
        default = parse_config(verb.config, base)
        for leaf in leaf_fields(cls):
            if leaf.path in ("version", "student_layers", "eval_every", "recover.distill.eval_every") or (
                    leaf.path == "method" and method):
                continue
            for value in candidates(leaf.annotation, default_of(default, leaf.path)):
                try:
                    parsed = parse_config(verb.config, merge(base, nest(leaf.path, value)))
                except Exception:
                    continue
                if parsed != default:
                    cases.append((method, leaf.path, value))
                    break
    return cases


def cli_args(verb: cli_steps.Verb, method: str | None, testing: str = "") -> list[str]:
    """The command up to the field under test; `--set` of the base fields (except `testing`, which the
    flag under test sets: `--set` would win over it)."""
    head = ["data", verb.name, "in.jsonl"] if verb.input == "dataset" else [verb.name]
    if verb.input == "model":
        head.append("some-model")
    if verb.input == "teacher":
        head += ["--teacher", "some-model"]
    if verb.output != "none":
        head += ["--output", "out"]
    for key, value in flatten(base_fields(verb, method)):
        if key != testing:
            head += ["--set", f"{key}={value}"]
    return head


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    captured: dict[str, Any] = {}
    monkeypatch.setattr(cli_steps, "run_verb", lambda verb, inputs, config, common: captured.update(config))
    result = RUNNER.invoke(app, args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return captured


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in data.items():
        items += flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]
    return items


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)  # JSON is YAML


@pytest.mark.parametrize("verb", cli_steps.VERBS, ids=lambda v: v.name)
def test_verb_config_is_the_steps_config(verb):
    assert get_step(verb.step).config is verb.config


@pytest.mark.parametrize("verb", cli_steps.VERBS, ids=lambda v: v.name)
def test_every_field_from_recipe_and_cli(verb, monkeypatch):
    cases = field_cases(verb)
    skipped = {"version", "student_layers", "eval_every", "recover.distill.eval_every"}
    leaves = {(method_of(verb, cls), leaf.path) for cls in union_members(verb.config)
              for leaf in leaf_fields(cls)
              if leaf.path not in skipped and not (leaf.path == "method" and method_of(verb, cls))}
    # every field gets a case, except ones whose only valid value is the default (w8a8's bits=8, sym=True)
    # and `student`, which excludes the `student_layers` every distill case carries
    missing = leaves - {(m, p) for m, p, _ in cases}
    assert missing <= {("w8a8", "bits"), ("w8a8", "sym"), (None, "student")}, missing
    reserved = (cli_steps.COMMON - ({"output"} if verb.output == "none" else set())) | {cli_steps.INPUTS[verb.input]}
    flags = {opt.field.path: opt for opt in cli_steps.config_options(
        verb.config, verb.aliases, reserved | {f.replace("-", "_") for f in verb.switches})}
    for method, path, value in cases:
        from_recipe = parse_config(verb.config, merge(base_fields(verb, method), nest(path, value)), where="recipe")
        via_set = run_cli(cli_args(verb, method) + ["--set", f"{path}={as_text(value)}"], monkeypatch)
        assert parse_config(verb.config, via_set) == from_recipe, (method, path, value)
        if path in flags:
            opt = flags[path]
            if isinstance(value, bool):
                flag_args = [f"--{opt.flag}" if value else f"--no-{opt.flag}"]
            elif isinstance(value, list) and typing.get_origin(strip_optional(opt.field.annotation)) is list:
                flag_args = [a for v in value for a in (f"--{opt.flag}", str(v))]
            else:
                flag_args = [f"--{opt.flag}", as_text(value)]
            via_flag = run_cli(cli_args(verb, method, testing=path) + flag_args, monkeypatch)
            assert parse_config(verb.config, via_flag) == from_recipe, (method, path, value, flag_args)


def test_config_file_then_flags_then_set(tmp_path, monkeypatch):
    config = tmp_path / "q.yaml"
    config.write_text("method: awq\nbits: 3\ngroup_size: 64\nclip: 0.1\n")
    got = run_cli(["quantize", "m", "-o", "out", "--config", str(config), "--bits", "4", "--set", "bits=8",
                   "--set", "calibration.n_samples=16"], monkeypatch)
    assert got == {"method": "awq", "bits": 8, "group_size": 64, "clip": 0.1, "calibration": {"n_samples": 16}}


def test_pattern_stays_a_string(monkeypatch):
    got = run_cli(["prune", "m", "-o", "out", "--method", "sparsegpt", "--set", "pattern=2:4"], monkeypatch)
    assert got["pattern"] == "2:4"  # YAML 1.1 would read 2:4 as the base-60 number 124
