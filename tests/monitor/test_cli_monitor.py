"""`lmopt models ...` and `lmopt check` through the real entry point: output and exit codes
(0 pass, 1 regression, 2 bad input as one line)."""

from __future__ import annotations

import json

import pytest
import yaml

import lmopt.cli
import lmopt.models.load
from lmopt.models import content_hash, load_model, save_model, save_tiny_llama

SUITE = {"name": "cli", "dtype": "float32", "resamples": 300,
         "perplexity": [{"source": "pydoc", "windows": 4, "seq_len": 32, "max_increase": 0.05}]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("cli_monitor")
    base = save_tiny_llama(root / "base")
    damaged = load_model(base, dtype="float32")
    with torch.no_grad():
        for p in damaged.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    bad = save_model(damaged.model, damaged.tokenizer, root / "damaged", damaged.card)
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    return base, bad, suite


@pytest.fixture
def lmopt_cli(monkeypatch, tmp_path, capsys):
    """Run `lmopt ARGS` through the real entry point; returns (exit code, stdout, stderr)."""
    # The commands point `@alias` resolution at their registry; put the process-wide table back after.
    monkeypatch.setattr(lmopt.models.load, "REFERENCE_RESOLVERS", dict(lmopt.models.load.REFERENCE_RESOLVERS))
    monkeypatch.setenv("COLUMNS", "300")  # rich tables print whole hashes and paths
    url = f"sqlite:///{tmp_path / 'registry.db'}"

    def run(*args: str) -> tuple[int, str, str]:
        argv = [str(a) for a in args]
        if argv[0] in ("models", "check"):
            argv += ["--registry", url]
        with pytest.raises(SystemExit) as exit_info:
            lmopt.cli.main(argv)
        out, err = capsys.readouterr()
        return exit_info.value.code or 0, out, err

    return run


def test_models_commands(setup, lmopt_cli, tmp_path):
    base, bad, _ = setup
    hb, hd = content_hash(base), content_hash(bad)
    code, out, _ = lmopt_cli("models", "promote", base, "--alias", "production")
    assert code == 0 and f"@production -> {hb} (was unset)" in out
    code, out, _ = lmopt_cli("models", "promote", bad, "--reason", "try it")
    assert code == 0 and f"@production -> {hd} (was {hb})" in out
    code, out, _ = lmopt_cli("models", "list")
    assert code == 0 and "smollm2-135m-instruct" in out and hb in out and "@production" in out
    code, out, _ = lmopt_cli("models", "show", "@production", "--json", tmp_path / "show.json")
    assert code == 0 and json.loads((tmp_path / "show.json").read_text())["model"]["hash"] == hd
    code, out, _ = lmopt_cli("models", "diff", base, "@production", "--json", tmp_path / "diff.json")
    assert code == 0 and json.loads((tmp_path / "diff.json").read_text())["b"]["hash"] == hd
    code, out, _ = lmopt_cli("models", "rollback", "production")
    assert code == 0 and f"@production -> {hb} (rolled back from {hd})" in out
    code, out, _ = lmopt_cli("models", "history", "production")
    assert code == 0 and out.count("promote") == 2 and "rollback" in out and "try it" in out


def test_check_exit_codes(setup, lmopt_cli, tmp_path):
    base, bad, suite = setup
    assert lmopt_cli("models", "promote", base)[0] == 0
    code, out, _ = lmopt_cli("check", base, "--baseline", "@production", "--suite", suite,
                             "--json", tmp_path / "self.json", "--markdown", tmp_path / "self.md")
    assert code == 0 and "PASS" in out and json.loads((tmp_path / "self.json").read_text())["passed"]
    code, out, _ = lmopt_cli("check", bad, "--baseline", "@production", "--suite", suite,
                             "--html", tmp_path / "bad.html")
    assert code == 1 and "FAIL" in out and (tmp_path / "bad.html").exists()


@pytest.mark.parametrize("case, message", [
    ("alias", "unknown model alias '@staging'"),
    ("task", "unknown task 'hellaswag'"),
    ("yaml", "invalid YAML"),
    ("model", "no such model directory"),
])
def test_check_bad_input_is_one_line_exit_2(setup, lmopt_cli, tmp_path, case, message):
    base, _, suite = setup
    baseline, candidate = ("@staging" if case == "alias" else str(base)), str(base)
    if case == "task":
        suite = tmp_path / "s.yaml"
        suite.write_text("tasks: [{task: hellaswag}]\n")
    elif case == "yaml":
        suite = tmp_path / "s.yaml"
        suite.write_text("perplexity: [{source: pydoc\n")
    elif case == "model":
        candidate = str(tmp_path / "nowhere")
    code, out, err = lmopt_cli("check", candidate, "--baseline", baseline, "--suite", suite)
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("lmopt: error: ")
