"""`lmopt plan` and `lmopt select` through the CLI entry point: JSON out, one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def lmopt(*args):
    return subprocess.run([sys.executable, "-m", "lmopt", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def test_plan_writes_every_format(tiny_dir, tmp_path):
    out = tmp_path / "plan.json"
    res = lmopt("plan", tiny_dir, "--hardware", "a100-80gb", "--context", "1024", "--batch", "4", "--json", out)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert [r["format"] for r in data["rows"]] == ["fp32", "bf16", "int8", "int4"]
    assert data["context"] == 1024 and data["batch"] == 4 and data["recommended"] == "bf16"
    assert data["target"]["source"].startswith("NVIDIA A100") and "recommended format: bf16" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["plan", "{tiny}", "--hardware", "z80"], "unknown hardware 'z80' (choose this, h100-sxm"),
    (["select", "--candidate", "{tiny}", "--data", "{data}", "--constraints", "accuracy>=1.2"],
     "constraint 'accuracy>=1.2' can never hold"),
    (["select", "--candidate", "{tiny}:probe", "--data", "{data}"], "way 'probe' does not apply to a decoder"),
    (["select", "--task-type", "generate", "--candidate", "{tiny}", "--data", "{data}"],
     "a generate row needs 'prompt'+'response'"),
    (["select", "--candidate", "{tiny}", "--data", "/no/rows.jsonl"], "/no/rows.jsonl: data file not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tiny_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(6)))
    res = lmopt(*[a.format(tiny=tiny_dir, data=data) for a in args])
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0


def test_select_runs_from_the_command_line(tiny_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"item {i} is {'good' if i % 2 else 'bad'}",
                                        "label": "good" if i % 2 else "bad"}) + "\n" for i in range(12)))
    out = tmp_path / "select.json"
    res = lmopt("select", "--task-type", "classify", "--candidate", tiny_dir, "--data", data, "--train-rows", "6",
                "--latency-items", "2", "--threads", "1", "--constraints", "latency_p50_ms<=100000", "--json", out)
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert result["recommended"] == f"{tiny_dir}:zero-shot" and result["rows"][0]["eval_items"] == 6
