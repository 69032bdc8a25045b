"""The CLI: real runs on a tiny model, JSON shape, and one-line errors with exit status 2."""

import json
import os
import subprocess
import sys

import pytest

from lmopt.hardware import detect_hardware
from lmopt.native import status as native_status


def lmopt(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lmopt", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_eval_writes_the_documented_json(tiny_dir, tmp_path):
    out = tmp_path / "r.json"
    res = lmopt("eval", tiny_dir, "--task", "pydoc", "--limit", "2", "--seq-len", "32", "--dtype", "float32",
                "--json", out, "--registry", f"sqlite:///{tmp_path / 'r.db'}")
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    (step,) = data["steps"]
    assert step["step"] == "evaluate" and step["config"]["tasks"] == ["pydoc"]
    figures = data["evaluation"][str(tiny_dir)]["tasks"]["pydoc"]
    assert figures == step["metrics"]["pydoc"]
    assert set(figures) >= {"perplexity", "tokens", "seq_len"} and figures["seq_len"] == 32
    runs = lmopt("runs", "--registry", f"sqlite:///{tmp_path / 'r.db'}")
    assert runs.returncode == 0 and "pydoc" in runs.stdout


@pytest.mark.parametrize("args, message", [
    (["eval", "/no/such/model"], "no such model"),
    (["eval", "{tiny}", "--task", "nosuchtask"], "unknown task 'nosuchtask'"),
    (["run", "/no/recipe.yaml"], "recipe file not found"),
    (["eval", "{tiny}", "--task", "/no/file.jsonl"], "file not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tiny_dir):
    res = lmopt(*[a.format(tiny=tiny_dir) for a in args])
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0


def test_hw_reports_bandwidth(tmp_path):
    out = tmp_path / "hw.json"
    res = lmopt("hw", "--json", out)
    assert res.returncode == 0, res.stderr
    info = json.loads(out.read_text())
    facts = detect_hardware().to_dict()  # the same detection, run in this process
    del facts["bandwidth_gbs"]
    assert {key: info[key] for key in facts} == facts
    assert info["bandwidth_gbs"] > 0  # a measurement: no reference value on a shared machine
    assert info["native_kernels"] == native_status()  # whether lmopt's C kernels run here, and why not
    shown = " ".join(res.stdout.split())
    assert f"memory_gb │ {info['memory_gb']:g} │" in shown  # as measured: 23.5, not 23.5000


def test_the_cli_starts_without_torch():
    """`lmopt --help` and config validation import no torch, transformers, optuna or matplotlib."""
    code = ("import sys, lmopt.cli; heavy = [m for m in ('torch', 'transformers', 'optuna', 'matplotlib') "
            "if m in sys.modules]; print(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
