"""Command-line options generated from a step's config: one flag per field, defaults only in the config.

Every top-level scalar or list field of the config becomes `--field-name` (a bool `--x/--no-x`); a verb
adds aliases for nested fields it uses often (`--n-samples` -> `calibration.n_samples`). Any field,
nested or not, can be given with `--set key.sub=value`, and a whole map with `--config FILE.yaml`.
Precedence: config file, then flags, then `--set`. Flags default to unset, so the config's own
default applies when a flag is not given.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml

from lmopt.configs import LeafField, is_literal, leaf_fields, read_yaml_map, set_path, strip_optional
from lmopt.errors import LmoptError

SCALARS = (int, float, str)


@dataclass(frozen=True)
class FieldOption:
    """One generated option: the parameter name typer sees, its flag, and the field it sets."""

    param: str
    flag: str
    field: LeafField


def option_type(annotation: Any) -> Any | None:
    """The type typer parses a field's flag as, or None when the field only takes `--set`."""
    annotation = strip_optional(annotation)
    if is_literal(annotation):
        return str
    if annotation in SCALARS or annotation is bool:
        return annotation
    if typing.get_origin(annotation) is tuple:
        return str  # "32:256" or "[0.9, 0.95]", read by `field_value`
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (str,)
        item = str if is_literal(item) else item
        return list[item] if item in SCALARS else None
    return None


def field_help(field: LeafField, methods: int) -> str:
    text = field.description or field.path
    annotation = strip_optional(field.annotation)
    if is_literal(annotation):
        text += f" [{' | '.join(str(a) for a in typing.get_args(annotation))}]"
    if field.methods and len(field.methods) < methods:
        text += f" (method {', '.join(field.methods)})"
    return text


def config_options(config_type: Any, aliases: dict[str, str], reserved: set[str],
                   short: dict[str, str] | None = None) -> list[FieldOption]:
    """Options for every top-level field with a flag type, plus `aliases` (flag name -> field path)."""
    leaves = {leaf.path: leaf for leaf in leaf_fields(config_type)}
    short = short or {}
    options = []
    top = sorted((path for path in leaves if "." not in path), key=lambda p: p != "method")  # method first
    names = [(path.replace("_", "-"), path) for path in top]
    names += list(aliases.items())
    for flag_name, path in names:
        if path not in leaves:
            raise ValueError(f"alias --{flag_name}: no field '{path}' in the config")
        param = flag_name.replace("-", "_")
        if param in reserved or path == "version" or option_type(leaves[path].annotation) is None:
            continue
        options.append(FieldOption(param, flag_name, leaves[path]))
    return options


def as_parameters(options: list[FieldOption], methods: int, short: dict[str, str]) -> list[inspect.Parameter]:
    params = []
    for opt in options:
        kind = option_type(opt.field.annotation)
        decls = [f"--{opt.flag}/--no-{opt.flag}"] if kind is bool else [f"--{opt.flag}"]
        decls += [short[opt.flag]] if opt.flag in short else []
        info = typer.Option(None, *decls, help=field_help(opt.field, methods), show_default=False)
        params.append(inspect.Parameter(opt.param, inspect.Parameter.KEYWORD_ONLY, default=info,
                                        annotation=kind | None))
    return params


def parse_set(items: list[str], config_type: Any) -> dict[str, Any]:
    """`--set a.b=v` items as a nested map; values parsed by the field's type (YAML for non-strings)."""
    leaves = {leaf.path: leaf for leaf in leaf_fields(config_type)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise LmoptError(f"--set {item!r}: expected KEY=VALUE (KEY may be dotted: calibration.n_samples)")
        set_path(out, key, field_value(raw, leaves.get(key)))
    return out


def field_value(raw: str, leaf: LeafField | None) -> Any:
    """A string from the command line as the field's type wants it (YAML for numbers, lists, bools)."""
    annotation = strip_optional(leaf.annotation) if leaf else None
    if typing.get_origin(annotation) is tuple and ":" in raw:
        return raw  # a range "lo:hi", parsed by the config's own validator
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and str in typing.get_args(annotation):
        value = yaml.safe_load(raw) if raw.startswith("[") else raw  # `str | list[str]`: a list or the text
        return value
    if annotation is str or (annotation is not None and is_literal(annotation)
                             and all(isinstance(a, str) for a in typing.get_args(annotation))):
        return raw  # "2:4" must stay a string (YAML 1.1 reads it as the base-60 number 124)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if typing.get_origin(annotation) is list and not isinstance(value, list):
        value = [v.strip() for v in raw.split(",") if v.strip()]
    return value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested maps merged key by key; other values replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_cli(values: dict[str, Any], options: list[FieldOption], config_file: Path | None,
                    sets: list[str], config_type: Any, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The step config map: file < flags (and switches in `fixed`) < --set. Unset flags are left out."""
    data = read_yaml_map(config_file) if config_file else {}
    flags: dict[str, Any] = {}
    for key, value in (fixed or {}).items():
        set_path(flags, key, value)
    for opt in options:
        value = values.get(opt.param)
        if value is None or value == []:
            continue
        if isinstance(value, list) and option_type(opt.field.annotation) == list[str]:
            value = [part for v in value for part in str(v).split(",") if part]
        elif typing.get_origin(strip_optional(opt.field.annotation)) is tuple:
            value = field_value(value, opt.field)
        set_path(flags, opt.field.path, value)
    return merge(merge(data, flags), parse_set(sets, config_type))


def build_command(name: str, doc: str, params: list[inspect.Parameter],
                  body: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
    """A function typer can register, with `params` as its signature, calling `body(kwargs)`."""

    def command(**kwargs: Any) -> None:
        body(kwargs)

    command.__name__ = name.replace("-", "_") + "_cmd"
    command.__doc__ = doc
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command

