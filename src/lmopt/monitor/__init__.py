"""Monitoring: the run registry, the model registry with aliases, and regression gates.

Importing this package lets `load_model("@alias")` resolve aliases through the default registry
(`enable_alias_references`); call that function again with a URL to use another registry.
"""

from lmopt.monitor.lineage import ModelDiff, diff_models, lineage
from lmopt.monitor.models import (
    AliasEvent,
    ModelRecord,
    alias_history,
    alias_target,
    aliases,
    enable_alias_references,
    get_model,
    list_models,
    promote,
    register_model,
    resolve_alias,
    rollback,
)
from lmopt.monitor.registry import NullRegistry, Registry, default_url, machine_summary

enable_alias_references()

__all__ = [
    "AliasEvent", "ModelDiff", "ModelRecord", "NullRegistry", "Registry", "alias_history", "alias_target",
    "aliases", "default_url", "diff_models", "enable_alias_references", "get_model", "lineage",
    "list_models", "machine_summary", "promote", "register_model", "resolve_alias", "rollback",
]
