"""The model registry: models by content hash with their lineage and figures, and named aliases.

A model is registered once per content hash (`lmopt.models.card.content_hash`), with its lineage read
from its card (parent, parent hash, step, config, data hashes) and the figures measured on it.
An alias (`production`, `candidate`, any name) points at one registered model; `promote` moves it,
`rollback` moves it back to the target it had before the last promotion, and every move is kept
(who, when, from which hash to which). `@name` is accepted wherever a model is: `resolve_alias`
turns it into the model's directory, and `enable_alias_references()` plugs that into
`lmopt.models.load_model`.

Model references here are: `@alias`, a hash (or a unique prefix of at least 6 characters) of a
registered model, or anything `load_model` accepts that is a local directory (registered on the fly).
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.models.card import ModelCard, content_hash
from lmopt.models.load import register_reference_resolver, resolve
from lmopt.monitor.registry import Registry

ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
HASH_RE = re.compile(r"^[0-9a-f]{6,64}$")
MAX_PARENT_DEPTH = 32


@dataclass
class ModelRecord:
    """One registered model."""

    hash: str
    name: str | None
    path: str | None
    registered: float
    updated: float
    parent: str | None
    parent_hash: str | None
    step: str | None
    format: str | None
    lineage: dict[str, Any] = field(default_factory=dict)
    """The card's lineage fields: parent, parent_hash, step, config, format_info, data hashes."""
    figures: dict[str, Any] = field(default_factory=dict)
    """Figures measured on the model: the card's metrics merged with those given at registration."""
    aliases: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AliasEvent:
    """One move of an alias: `promote` or `rollback`, from `previous_hash` to `model_hash`."""

    id: int
    time: float
    alias: str
    action: str
    model_hash: str | None
    previous_hash: str | None
    user: str | None
    reason: str | None


def open_registry(registry: Registry | str | None = None) -> Registry:
    """A `Registry` from an instance, a SQLAlchemy URL or None (the default URL)."""
    return registry if isinstance(registry, Registry) else Registry(registry)


def current_user() -> str:
    """Who made a change: `$LMOPT_USER`, else the login name."""
    try:
        return os.environ.get("LMOPT_USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def alias_name(alias: str) -> str:
    """`@production` or `production` -> `production`; a clear error for names that cannot be aliases."""
    name = alias.removeprefix("@")
    if not ALIAS_RE.match(name) or HASH_RE.match(name):
        raise LmoptError(f"'{alias}': not a valid alias name (letters, digits, '_', '.', '-'; "
                         "not a hex string, which would read as a model hash)")
    return name


def lineage_of(card: ModelCard) -> dict[str, Any]:
    """What the card says about where the model came from (data hashes: any card field naming data)."""
    extras = {k: v for k, v in (card.model_extra or {}).items() if "data" in k}
    return {"name": card.name, "parent": card.parent, "parent_hash": card.parent_hash, "step": card.step,
            "config": card.config, "format": card.format, "format_info": card.format_info,
            "created": card.created, "data": extras}


def register_model(ref: str | Path, registry: Registry | str | None = None, *, name: str | None = None,
                   figures: dict[str, Any] | None = None, with_parents: bool = True) -> ModelRecord:
    """Register (or refresh) the model at `ref` and return its record.

    `figures` are merged into those already stored. With `with_parents`, a parent named in the card
    that is a local model directory is registered too, so lineage can be walked.
    """
    reg = open_registry(registry)
    where = resolve(ref)
    if isinstance(where, str):
        raise LmoptError(f"{ref}: only local models can be registered (save or download it first)")
    card = ModelCard.read(where)
    digest = content_hash(where)
    known = reg.model_rows(digest)
    stored = known[0]["figures"] if known else {}
    new = {k: v for k, v in {**card.metrics, **(figures or {})}.items() if stored.get(k, object()) != v}
    reg.upsert_model({
        "hash": digest, "name": name or (known[0]["name"] if known else None) or card.name or Path(where).name,
        "path": str(Path(where).resolve()), "parent": card.parent, "parent_hash": card.parent_hash,
        "step": card.step, "format": card.format, "lineage": lineage_of(card), "figures": new,
    })
    if with_parents:
        _register_parents(card, reg)
    return get_model(digest, reg)


def _register_parents(card: ModelCard, reg: Registry) -> None:
    for _ in range(MAX_PARENT_DEPTH):
        parent = _local_parent(card.parent)
        if parent is None:
            return
        digest = content_hash(parent)
        if reg.model_rows(digest):
            return  # already registered, and so are its own registered parents
        card = ModelCard.read(parent)
        reg.upsert_model({"hash": digest, "name": card.name or parent.name, "path": str(parent.resolve()),
                          "parent": card.parent, "parent_hash": card.parent_hash, "step": card.step,
                          "format": card.format, "lineage": lineage_of(card), "figures": card.metrics})


def _local_parent(ref: str | None) -> Path | None:
    """The card's parent as a local model directory (a path, or a name such as the embedded model's), else None."""
    if not ref or ref.startswith("@"):
        return None
    try:
        where = resolve(ref)
    except LmoptError:
        return None  # moved or deleted since: the lineage stops here
    return where if isinstance(where, Path) and (where / "config.json").exists() else None


def _record(row: dict[str, Any], aliases: dict[str, str]) -> ModelRecord:
    return ModelRecord(**row, aliases=sorted(a for a, h in aliases.items() if h == row["hash"]))


def get_model(ref: str | Path, registry: Registry | str | None = None, *, register: bool = False) -> ModelRecord:
    """The record of `@alias`, a registered hash (or unique prefix), or a local model directory.

    A directory that is not registered yet is registered when `register`, else an error.
    """
    reg = open_registry(registry)
    text = str(ref)
    if text.startswith("@"):
        text = alias_target(text, reg)
    if HASH_RE.match(text) and not Path(text).exists():
        rows = reg.model_rows(text)
        if len(rows) > 1:
            raise LmoptError(f"'{text}': ambiguous hash prefix ({len(rows)} models); give more characters")
        if rows:
            return _record(rows[0], aliases(reg))
    where = resolve(text)
    if isinstance(where, str):
        raise LmoptError(f"'{ref}': no registered model with that hash and no local model directory")
    rows = reg.model_rows(content_hash(where))
    if rows:
        return _record(rows[0], aliases(reg))
    if register:
        return register_model(where, reg)
    raise LmoptError(f"{where}: not registered (run `lmopt models register {where}`)")


def list_models(registry: Registry | str | None = None) -> list[ModelRecord]:
    """Every registered model, newest first."""
    reg = open_registry(registry)
    current = aliases(reg)
    return [_record(row, current) for row in reg.model_rows()]


def alias_history(alias: str | None = None, registry: Registry | str | None = None) -> list[AliasEvent]:
    """Moves of one alias (or all), oldest first."""
    reg = open_registry(registry)
    return [AliasEvent(**e) for e in reg.alias_events_of(alias_name(alias) if alias else None)]


def _targets(events: list[AliasEvent]) -> list[str]:
    """The alias's stack of targets after replaying its events: promote pushes, rollback pops."""
    stack: list[str] = []
    for event in events:
        if event.action == "promote":
            stack.append(event.model_hash)
        elif event.action == "rollback" and stack:
            stack.pop()
    return stack


def aliases(registry: Registry | str | None = None) -> dict[str, str]:
    """Every alias with a target -> that target's hash."""
    reg = open_registry(registry)
    by_alias: dict[str, list[AliasEvent]] = {}
    for event in alias_history(None, reg):
        by_alias.setdefault(event.alias, []).append(event)
    return {a: stack[-1] for a, events in sorted(by_alias.items()) if (stack := _targets(events))}


def alias_target(alias: str, registry: Registry | str | None = None) -> str:
    """The hash `@alias` points at; a clear error naming the known aliases when it points nowhere."""
    reg = open_registry(registry)
    name = alias_name(alias)
    current = aliases(reg)
    if name not in current:
        known = ", ".join(f"@{a}" for a in current) or "none yet"
        raise LmoptError(f"unknown model alias '@{name}' (known: {known}; set one with `lmopt models promote`)")
    return current[name]


def promote(model: str | Path, alias: str = "production", registry: Registry | str | None = None, *,
            user: str | None = None, reason: str | None = None) -> AliasEvent:
    """Point `alias` at `model` (registering a local directory first) and record who did it."""
    reg = open_registry(registry)
    name = alias_name(alias)
    record = get_model(model, reg, register=True)
    previous = aliases(reg).get(name)
    reg.add_alias_event(name, "promote", record.hash, previous, user or current_user(), reason)
    return alias_history(name, reg)[-1]


def rollback(alias: str = "production", registry: Registry | str | None = None, *,
             user: str | None = None, reason: str | None = None) -> AliasEvent:
    """Move `alias` back to the target it had before its latest promotion (not undone yet)."""
    reg = open_registry(registry)
    name = alias_name(alias)
    stack = _targets(alias_history(name, reg))
    if not stack:
        raise LmoptError(f"unknown model alias '@{name}': nothing to roll back")
    if len(stack) < 2:
        raise LmoptError(f"'@{name}' has no earlier target to roll back to (it was promoted once)")
    reg.add_alias_event(name, "rollback", stack[-2], stack[-1], user or current_user(), reason)
    return alias_history(name, reg)[-1]


def resolve_alias(ref: str, registry_url: str | None = None) -> str:
    """`@alias` -> the directory of the model it points at; any other reference is returned unchanged.

    The directory must still hold the promoted content (same hash): an alias never silently serves a
    model that was overwritten after promotion.
    """
    if not str(ref).startswith("@"):
        return str(ref)
    reg = open_registry(registry_url)
    digest = alias_target(ref, reg)
    rows = reg.model_rows(digest)
    path = Path(rows[0]["path"]) if rows and rows[0]["path"] else None
    if path is None or not (path / "config.json").exists():
        raise LmoptError(f"'{ref}' points at model {digest}, whose directory {path} no longer exists")
    now = content_hash(path)
    if now != digest:
        raise LmoptError(f"'{ref}' points at model {digest}, but {path} now holds {now} (changed after "
                         "promotion); promote the intended model again")
    return str(path)


def enable_alias_references(registry_url: str | None = None) -> None:
    """Make `load_model("@alias")` (and every command taking a model) resolve through this registry."""
    register_reference_resolver("@", lambda ref: resolve_alias(ref, registry_url))
