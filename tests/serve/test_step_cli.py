"""The serve-bench recipe step (shipped recipe on the tiny model) and the CLI verbs."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lmopt.cli import app, main
from lmopt.errors import LmoptError
from lmopt.pipeline import Recipe, load_recipe_file, run_recipe
from lmopt.serve.bench import LoadConfig, make_workload, percentile, run_load
from lmopt.serve.config import EngineConfig, ServerConfig


def test_shipped_recipe_runs_on_tiny(tmp_path, tiny_dir) -> None:
    path = Path(str(resources.files("lmopt") / "recipes" / "serve-bench.yaml"))
    load_recipe_file(path)  # validates the step config
    raw = yaml.safe_load(path.read_text())
    cfg = raw["steps"][0]["serve-bench"]
    cfg.update(concurrency=[1, 3], requests=4, prompt_len=[4, 20], output_len=[2, 6])
    cfg["engine"].update(threads=1)
    raw.update(model=str(tiny_dir), dtype="float32", workdir=str(tmp_path / "work"))
    summary = run_recipe(Recipe.parse(raw), tmp_path, log=lambda m: None)
    metrics = summary["steps"][0]["metrics"]
    for level in ("c1", "c3"):
        assert metrics["engine"][level]["errors"] == 0 and metrics["engine"][level]["requests"] == 4
        assert metrics["engine"][level]["output_tokens"] == metrics["generate"]["output_tokens"]
    assert summary["steps"][0]["model"] is None  # measuring leaves the model unchanged


def test_bench_serve_cli_against_a_live_server(tmp_path, tiny) -> None:
    from lmopt.serve.api import create_app
    from lmopt.serve.async_engine import AsyncEngine
    from lmopt.serve.engine import Engine
    from lmopt.serve.server import BackgroundServer

    engine = AsyncEngine(Engine(tiny, EngineConfig(max_batch=4, max_model_len=256, kv_cache_mb=8, threads=1)))
    config = ServerConfig(port=0, api_key="k")
    with BackgroundServer(create_app(engine, config, "tiny"), config) as srv:
        out = tmp_path / "bench.json"
        args = ["bench-serve", srv.url, "-c", "3", "-n", "6", "--prompt-len", "8:40", "--output-len", "4",
                "--rate", "50", "--api-key", "k", "--json", str(out)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        import json

        summary = json.loads(out.read_text())
        assert summary["errors"] == 0 and summary["output_tokens"] == 6 * 4
        assert summary["ttft_p50_ms"] <= summary["latency_p50_ms"] <= summary["latency_p99_ms"]
        with pytest.raises(LmoptError, match="401"):  # no API key
            run_load(LoadConfig(url=srv.url, requests=2, output_len=2, prompt_len=4))
        unauthorized = run_load(LoadConfig(url=srv.url, requests=2, output_len=2, prompt_len=4, model="tiny"))
        assert unauthorized["errors"] == 2 and "401" in unauthorized["first_error"]


def test_workload_lengths_arrivals_and_percentiles(tiny) -> None:
    config = LoadConfig(url="x", requests=200, prompt_len="10:30", output_len=[5, 9], rate=4.0, seed=1)
    jobs = make_workload(config, tiny.tokenizer)
    assert all(10 <= len(j.prompt) <= 30 and 5 <= j.max_tokens <= 9 for j in jobs)
    gaps = sorted(b.arrival_s - a.arrival_s for a, b in zip(jobs, jobs[1:], strict=False))
    assert gaps[0] >= 0 and jobs[0].arrival_s >= 0  # arrivals in order
    # Poisson arrivals: gaps are exponential with mean 1/rate. Kolmogorov-Smirnov by hand against that
    # CDF; 1.63 / sqrt(n) is the 1% critical value.
    n = len(gaps)
    ks = max(max((i + 1) / n - cdf, cdf - i / n) for i, g in enumerate(gaps)
             for cdf in [1 - math.exp(-4.0 * g)])
    assert ks < 1.63 / math.sqrt(n) and abs(sum(gaps) / n - 0.25) < 0.06
    assert make_workload(config, tiny.tokenizer) == jobs  # seeded
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5 and percentile([], 50) is None


@pytest.mark.parametrize("args, message", [
    (["serve", "tiny-none", "--engine", "vllm"], "--engine vllm needs vLLM installed"),
    (["serve", "x", "--max-batch", "0"], "lmopt serve: max_batch: Input should be greater than or equal to 1"),
    (["serve", "x", "--engine", "tgi"], "--engine: unknown engine 'tgi'"),
    (["serve", "x", "--traffic", "--engine", "vllm"], "--traffic records what lmopt's engine serves"),
])
def test_serve_cli_errors_are_one_line_and_exit_2(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)  # the entry point, which turns LmoptError into one line and exit status 2
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_vllm_command_mirrors_the_lmopt_settings() -> None:
    from lmopt.serve.server import vllm_command

    cmd = vllm_command("/m", EngineConfig(max_batch=8, max_model_len=1024),
                       ServerConfig(port=9000, api_key="s", model_name="smol"), dtype="bfloat16")
    text = " ".join(cmd)
    for part in ("--max-num-seqs 8", "--max-model-len 1024", "--port 9000", "--api-key s",
                 "--served-model-name smol", "--dtype bfloat16", "--host 127.0.0.1"):
        assert part in text
