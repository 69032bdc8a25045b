"""The base of every step config: typed, unknown keys rejected, versioned, round-trips to YAML.

Also the two things built on it that every stage shares:
- `method_union(...)`: a step whose config is `method` plus that method's own typed config, chosen by
  pydantic from the `method` field (a discriminated union), so no field list is ever copied;
- `leaf_fields(...)` / `set_path(...)`: the walk over a config's fields that the CLI generates its
  options from and that `--set key.sub=value` writes into.
Errors from pydantic are turned into one line that names the field (and the file, when known).
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, TypeAdapter, ValidationError, create_model

from lmopt.errors import LmoptError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base class for step configs. Subclasses document each field where it is declared (the attribute
    docstring under a field becomes its description, shown by `--help`)."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True,
                              use_attribute_docstrings=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """A stable hash of the config's content (used for step caching)."""
        blob = json.dumps({"type": type(self).__name__, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def parse(cls: type[C], data: dict[str, Any] | None, where: str = "config") -> C:
        """Validate `data`, raising LmoptError naming `where` and the bad field."""
        return parse_config(cls, data, where)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        return cls.parse(read_yaml_map(path), where=str(path))


def read_yaml_map(path: str | Path) -> dict[str, Any]:
    """A YAML file holding one map (a config or a recipe); clear errors for anything else."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise LmoptError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LmoptError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmoptError(f"{path}: expected a map of fields, found {type(data).__name__}")
    return data


def parse_config(config_type: Any, data: dict[str, Any] | None, where: str = "config") -> Any:
    """Validate `data` against a Config class or a `method_union` type; errors name `where` + field."""
    if data is not None and not isinstance(data, dict):
        raise LmoptError(f"{where}: expected a map of fields, found {type(data).__name__}")
    try:
        if isinstance(config_type, type) and issubclass(config_type, BaseModel):
            return config_type.model_validate(data or {})
        return _adapter(config_type).validate_python(data or {})
    except ValidationError as exc:
        raise LmoptError(format_validation_error(exc, where, _tags(config_type))) from None


_ADAPTERS: dict[int, TypeAdapter] = {}


def _adapter(config_type: Any) -> TypeAdapter:
    key = id(config_type)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = TypeAdapter(config_type)
    return _ADAPTERS[key]


def format_validation_error(exc: ValidationError, where: str, tags: set[str] = frozenset()) -> str:
    """One line per problem: `where: field.path: message` (a union's method tag is left out of the path)."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        method = loc.pop(0) if loc and loc[0] in tags else None
        path = ".".join(loc) or "(root)"
        if err["type"] == "extra_forbidden":
            msg = f"unknown field (not a field of method '{method}')" if method else "unknown field"
        elif err["type"] == "union_tag_invalid":
            path, msg = "method", f"unknown method {err['input'].get('method')!r} (choose {', '.join(sorted(tags))})"
        else:
            msg = err["msg"]
        parts.append(f"{where}: {path}: {msg}")
    return "; ".join(dict.fromkeys(parts))


# --- a step config chosen by its `method` field ---------------------------------------------------


def method_union(methods: list[type[Config]], default: str, extra: type[Config] | None = None) -> Any:
    """`Annotated[Union[...], discriminator]` over method configs that each declare `method: Literal[...]`.

    `default` is the method used when a recipe leaves `method` out. `extra` holds step-level fields
    shared by every method (e.g. where to write); each method config is extended with them, so a recipe
    writes one flat map: `{method: awq, rounding: gptq, export_hf: true}`.
    """
    members = []
    for cls in methods:
        name = _method_name(cls)
        step_cls = cls if extra is None else create_model(cls.__name__, __base__=(cls, extra),
                                                          __module__=cls.__module__, __doc__=cls.__doc__)
        members.append(Annotated[step_cls, Tag(name)])

    def pick(value: Any) -> str:
        if isinstance(value, dict):
            return value.get("method", default)
        return getattr(value, "method", default)

    union = Annotated[Union[tuple(members)], Discriminator(pick)]  # noqa: UP007 (runtime-built union)
    return union


def _method_name(cls: type[Config]) -> str:
    annotation = cls.model_fields["method"].annotation
    (name,) = typing.get_args(annotation)
    return name


def union_members(config_type: Any) -> list[type[Config]]:
    """The Config classes a step config can be: one class, or each member of a `method_union`."""
    if isinstance(config_type, type):
        return [config_type]
    union = typing.get_args(config_type)[0]
    return [typing.get_args(member)[0] for member in typing.get_args(union)]


def _tags(config_type: Any) -> set[str]:
    if isinstance(config_type, type):
        return set()
    return {_method_name(cls) for cls in union_members(config_type)}


# --- walking fields (CLI generation, --set) -------------------------------------------------------


@dataclass(frozen=True)
class LeafField:
    """A settable field reached from a step config: `path` like `calibration.n_samples`."""

    path: str
    annotation: Any
    """The field's type with `None` removed (int, float, str, bool, Literal[...], list[...])."""
    description: str
    methods: tuple[str, ...]
    """Methods whose config has this field (empty for a single-class config)."""


def leaf_fields(config_type: Any) -> list[LeafField]:
    """Every scalar or list field of a config (nested Config fields walked), over all methods of a union."""
    found: dict[str, LeafField] = {}
    for cls in union_members(config_type):
        tag = (_method_name(cls),) if "method" in cls.model_fields and not isinstance(config_type, type) else ()
        for leaf in _walk(cls, ""):
            old = found.get(leaf.path)
            methods = (old.methods if old else ()) + tag
            found[leaf.path] = LeafField(leaf.path, (old or leaf).annotation, (old or leaf).description, methods)
    if "method" in found and not isinstance(config_type, type):  # every method, not the first's Literal
        names = tuple(_method_name(cls) for cls in union_members(config_type))
        found["method"] = LeafField("method", Literal[names], "Which method; the others' fields are rejected.",
                                    ())
    return list(found.values())


def _walk(cls: type[BaseModel], prefix: str) -> list[LeafField]:
    leaves = []
    for name, info in cls.model_fields.items():
        annotation = strip_optional(info.annotation)
        path = prefix + name
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.extend(_walk(annotation, path + "."))
        else:
            leaves.append(LeafField(path, annotation, " ".join((info.description or "").split()), ()))
    return leaves


def strip_optional(annotation: Any) -> Any:
    """`int | None` -> `int`; other annotations unchanged."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def is_literal(annotation: Any) -> bool:
    return typing.get_origin(annotation) is Literal


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """`set_path(d, "calibration.n_samples", 64)` sets d["calibration"]["n_samples"], making maps on the way."""
    *parents, last = path.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise LmoptError(f"{path}: '{key}' is not a group of fields")
        node = child
    node[last] = value
