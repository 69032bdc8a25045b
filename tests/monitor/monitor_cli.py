"""`cli`: the monitoring commands run in-process, as tests of drift and improve call them."""

from __future__ import annotations

from lmopt.errors import LmoptError


def cli(args: list[str]) -> tuple[int, str]:
    """Run `lmopt ...` as `lmopt.cli.main` does: (exit status, output); an LmoptError is status 2."""
    import typer
    from typer.testing import CliRunner

    from lmopt.cli.monitoring import register

    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, args)
    if isinstance(result.exception, LmoptError):
        return 2, str(result.exception)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output
