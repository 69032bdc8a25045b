"""Lineage walks and model diffs over the model registry.

`lineage(ref)` follows parent hashes from a model back to its oldest registered ancestor.
`diff_models(a, b)` says how two models differ: where their lineages part (the closest common
ancestor), the steps and configs each took since, and their figures side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmopt.monitor.models import MAX_PARENT_DEPTH, ModelRecord, get_model, open_registry
from lmopt.monitor.registry import Registry


def lineage(ref: str | Path, registry: Registry | str | None = None) -> list[ModelRecord]:
    """The model and its registered ancestors, newest first (stops at an unregistered parent)."""
    reg = open_registry(registry)
    chain = [get_model(ref, reg)]
    seen = {chain[0].hash}
    while chain[-1].parent_hash and len(chain) < MAX_PARENT_DEPTH:
        rows = reg.model_rows(chain[-1].parent_hash)
        if not rows or rows[0]["hash"] in seen:
            break
        chain.append(get_model(rows[0]["hash"], reg))
        seen.add(rows[0]["hash"])
    return chain


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf} (lists are leaves), for field-by-field comparison."""
    if not isinstance(value, dict):
        return {prefix: value} if prefix else {}
    flat: dict[str, Any] = {}
    for key, sub in value.items():
        flat.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _changed(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[Any]]:
    """Keys whose values differ -> [value in a, value in b] (None where a key is missing)."""
    fa, fb = flatten(a), flatten(b)
    return {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


@dataclass
class ModelDiff:
    """Two models compared: lineage, the fields that differ, figures side by side."""

    a: dict[str, Any]
    b: dict[str, Any]
    common_ancestor: str | None
    """Hash of the closest registered model both descend from (or are)."""
    a_steps: list[dict[str, Any]] = field(default_factory=list)
    """Steps from the common ancestor to `a` (oldest first): step, config, resulting hash."""
    b_steps: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, list[Any]] = field(default_factory=dict)
    """name/parent/step/format that differ: [a, b]."""
    config: dict[str, list[Any]] = field(default_factory=dict)
    """The producing steps' config keys (flattened) that differ: [a, b]."""
    data: dict[str, list[Any]] = field(default_factory=dict)
    """Data hashes recorded on the cards that differ: [a, b]."""
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Every figure either model has (flattened): {a, b, delta (b - a, when both are numbers)}."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _steps_since(chain: list[ModelRecord], ancestor: str | None) -> list[dict[str, Any]]:
    steps = []
    for record in chain:
        if record.hash == ancestor:
            break
        steps.append({"hash": record.hash, "step": record.step, "config": record.lineage.get("config", {})})
    return steps[::-1]


def _figures(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    fa, fb = flatten(a), flatten(b)
    out = {}
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (va, vb))
        out[key] = {"a": va, "b": vb, "delta": (vb - va) if numbers else None}
    return out


def diff_models(a: str | Path, b: str | Path, registry: Registry | str | None = None) -> ModelDiff:
    """Compare two models (references as `get_model` takes them; local directories get registered)."""
    reg = open_registry(registry)
    for ref in (a, b):
        get_model(ref, reg, register=True)
    chain_a, chain_b = lineage(a, reg), lineage(b, reg)
    hashes_b = {r.hash for r in chain_b}
    ancestor = next((r.hash for r in chain_a if r.hash in hashes_b), None)
    ra, rb = chain_a[0], chain_b[0]
    names = ("name", "parent", "parent_hash", "step", "format")
    return ModelDiff(
        a={"hash": ra.hash, "name": ra.name, "path": ra.path, "aliases": ra.aliases},
        b={"hash": rb.hash, "name": rb.name, "path": rb.path, "aliases": rb.aliases},
        common_ancestor=ancestor,
        a_steps=_steps_since(chain_a, ancestor), b_steps=_steps_since(chain_b, ancestor),
        fields={k: [getattr(ra, k), getattr(rb, k)] for k in names if getattr(ra, k) != getattr(rb, k)},
        config=_changed(ra.lineage.get("config") or {}, rb.lineage.get("config") or {}),
        data=_changed(ra.lineage.get("data") or {}, rb.lineage.get("data") or {}),
        figures=_figures(ra.figures, rb.figures),
    )
