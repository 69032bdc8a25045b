"""The base of every step config: typed, unknown keys rejected, versioned, round-trips to YAML.

Errors from pydantic are turned into one line that names the field (and the file, when known).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lmopt.errors import LmoptError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base class for step configs. Subclasses document each field where it is declared."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)

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
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            raise LmoptError(format_validation_error(exc, where)) from None

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise LmoptError(f"{path}: file not found") from None
        except yaml.YAMLError as exc:
            raise LmoptError(f"{path}: invalid YAML: {exc}") from None
        return cls.parse(data, where=str(path))


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One line per problem: `where: field.path: message`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {loc}: {msg}")
    return "; ".join(parts)
