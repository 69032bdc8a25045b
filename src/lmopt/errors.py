"""User-facing errors: the CLI prints these as one line and exits with status 2 (no traceback)."""

from __future__ import annotations


class LmoptError(Exception):
    """Bad input from the user (unknown model or task, missing file, wrong recipe field...).

    The message must name what was wrong: the file, line or field.
    """


def require(condition: bool, message: str) -> None:
    """Raise `LmoptError(message)` unless `condition` holds."""
    if not condition:
        raise LmoptError(message)


def missing_dependency(package: str, extra: str | None = None) -> LmoptError:
    """The error for an optional dependency that is not installed."""
    hint = f"pip install {package}" if extra is None else f"pip install 'lmopt[{extra}]'"
    return LmoptError(f"this feature needs the optional package '{package}': {hint}")
