"""Every `lmopt ...` command shown in README.md and docs/*.md names a real command, and every step verb
among them parses into a valid config (run with the step replaced by a recorder)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from lmopt.cli import app
from lmopt.cli import steps as cli_steps
from lmopt.configs import parse_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for each `lmopt ...` line of the shell blocks, continuation lines joined."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", doc.read_text(), flags=re.S):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith("lmopt "):
                    found.append((f"{doc.name}: {line[:60]}", shlex.split(line)[1:]))
    return found


COMMANDS = documented_commands()
VERBS = {verb.name: verb for verb in cli_steps.VERBS}


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_documented_command_parses(argv, monkeypatch):
    command = typer.main.get_command(app)
    ctx = click.Context(command)
    words = list(argv)
    sub = command
    while isinstance(sub, click.Group) and words and not words[0].startswith("-"):
        name = words.pop(0)
        assert name in sub.list_commands(ctx), f"no command '{name}'"
        sub = sub.get_command(ctx, name)
    verb = VERBS.get(argv[1] if argv[0] == "data" else argv[0])
    if verb is None:
        return  # not a step verb: running it would serve, tune or measure for real
    captured = {}
    monkeypatch.setattr(cli_steps, "run_verb",
                        lambda verb, inputs, config, common: captured.update(config=config))
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    parse_config(verb.config, captured["config"], where=" ".join(argv))
