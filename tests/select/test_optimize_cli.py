"""`lmopt optimize` through the CLI entry point: a short run, and bad input as one line with exit status 2."""

import json

import pytest
import torch
import yaml

from lmopt.cli import app, main
from lmopt.cli.optimize import register

if not any(command.name == "optimize" for command in app.registered_commands):
    register(app)  # until cli/__init__.py registers it

TINY = {"limit": 2, "seq_len": 64, "calibration_samples": 4, "prefill_len": 16, "new_tokens": 4, "repeats": 1}


def lmopt(capsys, *args) -> tuple[int, str, str]:
    threads = torch.get_num_threads()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def settings(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"cheap": TINY, "full": TINY, "space": {
        "dtypes": ["float32"], "threads": [1], "quantize": ["rtn"], "bits": [8], "prune": ["none"]}}))
    return path


def test_a_short_search_prints_the_front_and_writes_json(capsys, tiny_dir, tmp_path, settings):
    code, out, err = lmopt(capsys, "optimize", tiny_dir, "--objective", "pydoc:perplexity",
                           "--constraint", "ppl_ratio<=1.1, size_mb<=0.3", "--constraint", "peak_mb<=100000",
                           "--budget-min", 10, "--trials", 1, "--no-isolate", "--config", settings,
                           "--output", tmp_path / "out", "--json", tmp_path / "result.json")
    assert code == 0, err
    assert "Pareto front" in out and "best: trial 0" in out and "meets every constraint" in out
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["any_feasible"] and result["best_model"] == str(tmp_path / "out" / "best")
    saved = json.loads((tmp_path / "out" / "front.json").read_text())
    assert saved["constraints"] == ["ppl_ratio<=1.1", "size_mb<=0.3", "peak_mb<=100000"]


@pytest.mark.parametrize(("args", "message"), [
    (["--constraint", "decode_tok_s>>40"], "lmopt optimize: constraints: constraint 'decode_tok_s>>40': "
                                           "operator '>>' (use >= or <=)"),
    (["--constraint", "speed>=40"], "constraint 'speed>=40': unknown metric 'speed'"),
    (["--objective", "boolq:f1"], "objective 'boolq:f1': task 'boolq' has no metric 'f1' (it has: acc, acc_norm)"),
    (["--constraint", "size_mb<=100, size_mb>=200"], "constraints 'size_mb>=200' and 'size_mb<=100' cannot both hold"),
    (["--budget-min", "0.0001"], "budget of 0.0001 min is too small for one trial"),
])
def test_bad_input_is_one_line_and_exit_status_2(capsys, tiny_dir, tmp_path, settings, args, message):
    code, _, err = lmopt(capsys, "optimize", tiny_dir, "--objective", "pydoc:perplexity", "--no-isolate",
                         "--config", settings, "--output", tmp_path / "out", *args)
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
