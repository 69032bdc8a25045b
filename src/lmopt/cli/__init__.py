"""The `lmopt` command line. Every verb is a one-step recipe or a view on the registry.

Step verbs (eval, bench, quantize, prune, train, distill, data clean/augment) are generated from the
steps' configs (`lmopt.cli.steps`); serve, tune and the views have their own modules. Bad input ends
with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from lmopt.cli import choose, monitoring, optimize, registry, serve, steps, tune, views
from lmopt.errors import LmoptError
from lmopt.monitor import enable_alias_references

# rich_markup_mode=None: help texts are plain (a "[boolq]" example is text, not a Rich style tag)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Make a pretrained language model better and cheaper, every step measured.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Clean, deduplicate, decontaminate and augment datasets.")
app.add_typer(data_app, name="data")


steps.register(app, data_app)
views.register(app, data_app)
serve.register(app)
tune.register(app)
registry.register(app)
monitoring.register(app)
optimize.register(app)
choose.register(app)

def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning LmoptError into one line and exit status 2."""
    try:
        enable_alias_references()
        app(args=argv, standalone_mode=True)
    except LmoptError as exc:
        print(f"lmopt: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lmopt: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
