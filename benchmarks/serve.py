"""Serving benchmark: the lmopt engine behind its OpenAI API vs `generate`, on the embedded model.

Parts (all by default):
- decode:   batch-1 decode tokens/s of the engine and of `generate` for fp32, bf16, int8 and int4 (RTN g32,
            i.e. the GGUF's own Q4_1 grid) against the memory-bandwidth roofline and against llama.cpp on
            the same GGUF measured in the same rounds (llama-cpp-python, when installed; else no ratio).
- load:     output tokens/s, TTFT and latency at concurrency 1/4/16/32 (server in a child process, the load
            generator here, closed loop) against the same prompts served one at a time with `generate`.
- variants: fp32, bf16, int8 and int4 side by side at concurrency 16, same prompts.

Run (speed measurements hold the shared lock):
    flock /tmp/lmopt-speed.lock .venv/bin/python benchmarks/serve.py --json /tmp/serve.json
Prints tables and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import time
from typing import Any

os.environ.setdefault("LMOPT_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = os.environ.get("LMOPT_BENCH_MODEL", "smollm2-135m-instruct")  # override: smoke tests
VARIANTS = ("fp32", "bf16", "int8", "int4")
THREADS = int(os.environ.get("LMOPT_BENCH_THREADS", "2"))  # set by --threads (children inherit it)
STEP_TOKENS = int(os.environ.get("LMOPT_BENCH_STEP_TOKENS", "1024"))  # set by --max-step-tokens


def build(variant: str) -> Any:
    """The embedded model as fp32, bf16, or RTN-quantized (bf16 activations) with the int8/int4 kernels."""
    from lmopt.models import load_model

    loaded = load_model(MODEL, dtype="float32" if variant == "fp32" else "bfloat16")
    if variant in ("int8", "int4"):
        from lmopt.compress.quantize import RTNConfig, prepare_runtime, quantize

        # int4 g32 asymmetric is the GGUF's Q4_1 grid (the weights already sit on it); the tied lm_head
        # gets int8 per channel (the GGUF keeps it in Q8_0).
        config = RTNConfig(bits=4, group_size=32) if variant == "int4" else RTNConfig(bits=8, group_size=0)
        quantize(loaded.model, config)
        prepare_runtime(loaded.model)
    return loaded


def engine_config(max_batch: int = 32) -> Any:
    from lmopt.serve.config import EngineConfig

    return EngineConfig(max_batch=max_batch, max_model_len=512, kv_cache_mb=1024, max_step_tokens=STEP_TOKENS,
                        prefill_chunk=min(STEP_TOKENS, 512), threads=THREADS)


# ---- decode at batch 1 ----
def engine_decode_rate(engine: Any, prompt: list[int], new_tokens: int) -> float:
    """Tokens/s between the first and the last token of one request (prefill excluded)."""
    from lmopt.serve.sampling import SamplingParams

    stamps: list[float] = []
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    engine.add_request(prompt, params, lambda out: stamps.append(time.perf_counter()))
    while engine.step():
        pass
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def generate_decode_rate(model: Any, prompt: list[int], new_tokens: int) -> float:
    """benchmark_speed's convention: (N - 1) / (t(generate N) - t(generate 1))."""
    import torch

    ids = torch.tensor([prompt])

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    run(2)
    return (new_tokens - 1) / (run(new_tokens) - run(1))


def decode_part(variants: list[str], bandwidth: float, new_tokens: int = 48) -> list[dict[str, Any]]:
    from lmopt.hardware import decode_roofline, weight_bytes_per_token
    from lmopt.serve.engine import Engine

    rows, llama, llama_rate = [], _llama_cpp(), 0.0
    for variant in variants:
        loaded = build(variant)
        prompt = loaded.tokenizer("The Python standard library is", add_special_tokens=False)["input_ids"]
        prompt = (prompt * 8)[:32]
        engine = Engine(loaded, engine_config(4))
        engine_decode_rate(engine, prompt, 8)  # warm-up
        # Interleaved and best-of-3: the machine is shared, so both see the same background load.
        eng, gen = 0.0, 0.0
        for _ in range(3):
            eng = max(eng, engine_decode_rate(engine, prompt, new_tokens))
            gen = max(gen, generate_decode_rate(loaded.model, prompt, new_tokens))
            if llama is not None:  # the peer in the same rounds, never a figure from another day
                llama_rate = max(llama_rate, llama.decode(prompt, new_tokens))
        roof = decode_roofline(loaded.model, bandwidth)
        rows.append({"variant": variant, "engine_tok_s": round(eng, 1), "generate_tok_s": round(gen, 1),
                     "weight_mb": round(weight_bytes_per_token(loaded.model) / 1e6, 1),
                     "roofline_tok_s": round(roof, 1), "engine_share_of_roofline": round(eng / roof, 3)})
        print(rows[-1], flush=True)
    for row in rows:  # against the best llama.cpp rate of the whole run
        row["llama_cpp_tok_s"] = round(llama_rate, 1) if llama else None
        row["engine_vs_llama_cpp"] = round(row["engine_tok_s"] / llama_rate, 3) if llama else None
    return rows


def _llama_cpp() -> Any:
    """llama.cpp on the embedded GGUF (speed_sidebyside.LlamaCpp), or None when not installed."""
    try:
        from speed_sidebyside import LlamaCpp  # this directory: `python benchmarks/serve.py` puts it on the path

        return LlamaCpp(THREADS)
    except (ImportError, OSError, ValueError):  # not installed, or no GGUF to load
        return None


# ---- load tests against a live server ----
def _serve_child(variant: str, port: int, max_batch: int) -> None:
    from lmopt.serve.api import create_app
    from lmopt.serve.async_engine import AsyncEngine
    from lmopt.serve.config import ServerConfig
    from lmopt.serve.engine import Engine
    from lmopt.serve.server import _uvicorn_server

    config = ServerConfig(port=port, max_tokens=512)
    app = create_app(AsyncEngine(Engine(build(variant), engine_config(max_batch))), config, MODEL)
    _uvicorn_server(app, config).run()


class ChildServer:
    """`lmopt serve` for one variant in a child process (so the load generator does not share its GIL)."""

    def __init__(self, variant: str, max_batch: int = 32) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = mp.get_context("spawn").Process(target=_serve_child, args=(variant, self.port, max_batch))

    def __enter__(self) -> ChildServer:
        import httpx

        self.proc.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.proc.is_alive():
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("the server did not come up")

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        self.proc.join(60)


def workload(requests: int, tokenizer: Any) -> list[Any]:
    from lmopt.serve.bench import LoadConfig, make_workload

    config = LoadConfig(url="-", requests=requests, prompt_len=(32, 256), output_len=(16, 64), seed=0)
    return make_workload(config, tokenizer)


def load_part(variant: str, levels: list[int], requests: int, baseline: bool,
              rate: float | None = None) -> dict[str, Any]:
    from lmopt.serve.bench import LoadConfig, generate_baseline, run_load

    loaded = build(variant)
    jobs = workload(requests, loaded.tokenizer)
    result: dict[str, Any] = {"variant": variant, "levels": {}}
    with ChildServer(variant) as srv:
        run_load(LoadConfig(url=srv.url, concurrency=2, requests=2), jobs=jobs[:2])  # warm-up
        for c in levels:
            row = run_load(LoadConfig(url=srv.url, concurrency=c, requests=requests), jobs=jobs)
            result["levels"][c] = row
            print({"variant": variant, **row}, flush=True)
    if rate:  # open loop: Poisson arrivals at `rate` requests/s, at most 16 in flight
        with ChildServer(variant) as srv:
            run_load(LoadConfig(url=srv.url, concurrency=2, requests=2), jobs=jobs[:2])  # warm-up
            config = LoadConfig(url=srv.url, concurrency=16, requests=requests, rate=rate,
                                prompt_len=(32, 256), output_len=(16, 64), seed=0)
            row = run_load(config, tokenizer=loaded.tokenizer)  # the same prompts, now with arrival times
            result["levels"][f"16@{rate}/s"] = row
            print({"variant": variant, **row}, flush=True)
    if baseline:
        from lmopt.hardware import apply_threads

        apply_threads(THREADS)
        result["generate"] = generate_baseline(loaded.model, loaded.tokenizer, jobs)
        print(result["generate"], flush=True)
        base = result["generate"]["output_tokens_per_s"]
        for row in result["levels"].values():
            row["speedup_vs_generate"] = round(row["output_tokens_per_s"] / base, 2)
    return result


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    global THREADS, STEP_TOKENS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="decode,load,variants")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1.5, help="Poisson arrivals/s of the open-loop run")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--max-step-tokens", type=int, default=STEP_TOKENS,
                        help="engine token budget per iteration (prefill chunk: min(this, 512))")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    parts, variants = args.parts.split(","), args.variants.split(",")
    THREADS, STEP_TOKENS = args.threads, args.max_step_tokens
    os.environ["LMOPT_BENCH_THREADS"] = str(args.threads)  # the server children read these
    os.environ["LMOPT_BENCH_STEP_TOKENS"] = str(args.max_step_tokens)
    from lmopt.hardware import apply_threads, detect_hardware, measure_bandwidth

    apply_threads(THREADS)
    hw = detect_hardware()  # the label comes from the machine the run is on
    machine = f"{hw.physical_cores}-core {hw.cpu} ({', '.join(hw.isa)}), {hw.memory_gb:.0f} GB"
    out: dict[str, Any] = {"machine": machine, "threads": THREADS, "date": time.strftime("%Y-%m-%d"),
                           "max_step_tokens": STEP_TOKENS,
                           "load_average_start": os.getloadavg()[0],
                           "bandwidth_gbs": round(measure_bandwidth(), 2)}
    if "decode" in parts:
        out["decode"] = decode_part(variants, out["bandwidth_gbs"])
        print(table(out["decode"], list(out["decode"][0])))
    if "load" in parts:
        levels = [int(c) for c in args.concurrency.split(",")]
        out["load"] = load_part("bf16", levels, args.requests, baseline=True, rate=args.rate)
        # "16@R/s": Poisson arrivals at R requests/s, at most 16 in flight
        rows = [{"engine": f"lmopt c={c}", **r} for c, r in out["load"]["levels"].items()]
        rows.append({"engine": "generate, one at a time", **out["load"]["generate"]})
        print(table(rows, ["engine", "output_tokens_per_s", "speedup_vs_generate", "ttft_p50_ms",
                           "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms", "tpot_p50_ms"]))
    if "variants" in parts:
        out["variants"] = [load_part(v, [16], args.requests, baseline=False) for v in variants]
        rows = [{"variant": r["variant"], **r["levels"][16]} for r in out["variants"]]
        print(table(rows, ["variant", "output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "latency_p50_ms",
                           "latency_p99_ms", "tpot_p50_ms"]))
    out["load_average_end"] = os.getloadavg()[0]
    if args.json:
        from lmopt.io import write_json

        write_json(args.json, out)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
