"""Speed of every quantized variant against bf16 and llama.cpp, side by side in one run (issue 13).

Variants of the embedded model, each quantized with lmopt's defaults, saved and loaded back the way
`lmopt bench` loads them (`load_model`, bf16 activations, kernels chosen by measurement):
- bf16 and fp32: the dense model;
- int8: `lmopt quantize --method rtn --bits 8` defaults (per channel);
- w4-g32: RTN W4 g32 asymmetric, the GGUF's own Q4_1 grid (same weights as llama.cpp's file);
- w4-g128: RTN W4 g128 (the 4-bit default group);
- w8a8: `--method w8a8` defaults (int8 weights and activations, oneDNN), 8 calibration samples.
Per variant: prefill (one forward over 512 tokens, median of 3; what `lmopt bench` reports: as loaded,
dense paths de-quantizing per call, and for quantized variants again with the dense copies the serving
engine keeps, `+copies`), `generate`
decode at batch 1 (`lmopt bench`'s convention), and batch-1 decode through the lmopt serving engine
(first to last token of a 48-token greedy answer, best of 3).
llama.cpp (llama-cpp-python, when installed): the embedded Q4_1 GGUF itself, same threads, batch-1
decode (first to last streamed token, greedy) and 512-token prefill. Rounds are interleaved (each round
measures every variant once) so background load falls on all of them alike; best of the rounds.
ONNX Runtime (`--onnx DIR`, a directory written by `lmopt export smollm2-135m-instruct --format onnx`):
the float32 graph with its KV cache, same threads, batch-1 greedy decode (token to token, numpy KV fed
back as `OrtModel.generate` does) and 512-token prefill (issue 16's side-by-side figure).
The CPU label, ISA flags, thread count and load average come from this machine at run time.

    .venv/bin/python benchmarks/speed_sidebyside.py [--rounds 3] [--variants bf16,int8,w4-g32] [--onnx DIR]
Prints a table (ratios against bf16 and llama.cpp of this run), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LMOPT_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "smollm2-135m-instruct"
VARIANTS = ("bf16", "fp32", "int8", "w4-g32", "w4-g128", "w8a8")
PROMPT = "The Python standard library is"


def quant_config(variant: str) -> Any:
    from lmopt.compress.config import CalibrationConfig
    from lmopt.compress.quantize import RTNConfig, W8A8Config

    if variant == "int8":
        return RTNConfig(bits=8)
    if variant == "w8a8":
        return W8A8Config(calibration=CalibrationConfig(n_samples=8))
    return RTNConfig(bits=4, group_size=int(variant.split("-g")[1]))


def build(variant: str, root: Path) -> Any:
    """The variant, saved by lmopt and loaded back as `lmopt bench` does."""
    from lmopt.compress.quantize import quantize, save_quantized
    from lmopt.models import load_model

    if variant in ("bf16", "fp32"):
        return load_model(MODEL, dtype="bfloat16" if variant == "bf16" else "float32")
    loaded = load_model(MODEL, dtype="float32")
    quantize(loaded.model, quant_config(variant), tokenizer=loaded.tokenizer)
    path = save_quantized(loaded.model, loaded.tokenizer, root / variant)
    return load_model(str(path), dtype="bfloat16")


def prefill_rate(model: Any, ids: list[int]) -> float:
    import torch

    x = torch.tensor([ids])
    with torch.inference_mode():
        model(input_ids=x)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            model(input_ids=x)
            times.append(time.perf_counter() - start)
    return len(ids) / statistics.median(times)


def generate_rate(model: Any, ids: list[int], new_tokens: int) -> float:
    """`lmopt bench`'s convention: (N - 1) / (t(generate N) - t(generate 1))."""
    import torch

    x = torch.tensor([ids])

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    run(2)
    return (new_tokens - 1) / (run(new_tokens) - run(1))


def engine_rate(engine: Any, ids: list[int], new_tokens: int) -> float:
    from lmopt.serve.sampling import SamplingParams

    stamps: list[float] = []
    engine.add_request(ids, SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True),
                       lambda out: stamps.append(time.perf_counter()))
    while engine.step():
        pass
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


class LlamaCpp:
    """llama.cpp through llama-cpp-python on the embedded GGUF: decode and prefill rates."""

    def __init__(self, threads: int) -> None:
        from llama_cpp import Llama

        from lmopt.models.gguf import embedded_gguf_path

        self.path = embedded_gguf_path()
        self.llm = Llama(model_path=str(self.path), n_threads=threads, n_threads_batch=threads, n_ctx=1024,
                         n_batch=512, verbose=False)

    def decode(self, ids: list[int], new_tokens: int) -> float:
        stamps = []
        self.llm.reset()
        for _ in self.llm.create_completion(ids, max_tokens=new_tokens, temperature=0.0, stream=True):
            stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def prefill(self, ids: list[int]) -> float:
        times = []
        for _ in range(3):
            self.llm.reset()
            start = time.perf_counter()
            self.llm.eval(ids)
            times.append(time.perf_counter() - start)
        return len(ids) / statistics.median(times)


class OnnxRuntime:
    """An `lmopt export --format onnx` directory on ONNX Runtime's CPU provider: decode and prefill."""

    def __init__(self, path: Path, threads: int) -> None:
        from lmopt.export.onnx_export import OrtModel

        self.model = OrtModel(path, threads)

    def decode(self, ids: list[int], new_tokens: int) -> float:
        import numpy as np

        logits, past = self.model.step(np.array([ids]), self.model.empty_past())
        stamps = [time.perf_counter()]  # the first token exists once the prompt is read
        for _ in range(new_tokens - 1):
            logits, past = self.model.step(np.array([[int(logits[0, -1].argmax())]]), past)
            stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def prefill(self, ids: list[int]) -> float:
        import numpy as np

        times = []
        for _ in range(3):
            start = time.perf_counter()
            self.model.step(np.array([ids]), self.model.empty_past())
            times.append(time.perf_counter() - start)
        return len(ids) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--onnx", type=Path, default=None, help="an `lmopt export --format onnx` directory")
    args = parser.parse_args()
    from lmopt.compress.quantize.runtime import drop_dense_weights, keep_dense_weights
    from lmopt.hardware import apply_threads, detect_hardware
    from lmopt.serve.config import EngineConfig
    from lmopt.serve.engine import Engine

    threads = apply_threads()
    hw = detect_hardware()
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        models = {v: build(v, Path(tmp)) for v in variants}
    tok = models[variants[0]].tokenizer
    short = (tok(PROMPT, add_special_tokens=False)["input_ids"] * 8)[:32]
    long = (tok(PROMPT + " " + "lorem ipsum " * 400, add_special_tokens=False)["input_ids"])[:512]
    engines = {v: Engine(m, EngineConfig(max_batch=1, max_model_len=256, kv_cache_mb=64, threads=threads))
               for v, m in models.items()}
    peers: dict[str, Any] = {} if args.no_llama_cpp else {"llama.cpp q4_1": LlamaCpp(threads)}
    if args.onnx:
        peers["onnxruntime f32"] = OnnxRuntime(args.onnx, threads)
    best: dict[str, dict[str, float]] = {name: {} for name in [*variants, *peers]}

    def keep(name: str, key: str, value: float) -> None:
        best[name][key] = max(best[name].get(key, 0.0), value)

    for v in variants:  # warm-up: allocations, kernel timing (cached per CPU)
        engine_rate(engines[v], short, 4)
    for _ in range(args.rounds):
        for v, m in models.items():
            # as `lmopt bench` loads it (dense paths de-quantize per call), then with the dense copies
            # the serving engine keeps (the engines above switched them on for the shared model)
            quantized = drop_dense_weights(m.model) > 0
            keep(v, "prefill_tok_s", prefill_rate(m.model, long))
            if quantized:
                keep_dense_weights(m.model)
                keep(v, "prefill_dense_tok_s", prefill_rate(m.model, long))
            keep(v, "generate_tok_s", generate_rate(m.model, short, args.new_tokens))
            keep(v, "engine_tok_s", engine_rate(engines[v], short, args.new_tokens))
        for name, peer in peers.items():
            keep(name, "prefill_tok_s", peer.prefill(long))
            keep(name, "engine_tok_s", peer.decode(short, args.new_tokens))
    base, ref = best.get("bf16", {}), best.get("llama.cpp q4_1", {})
    print(f"{hw.cpu} ({', '.join(hw.isa)}), {threads} threads, load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':16s} {'prefill':>9s} {'x bf16':>7s} {'+copies':>9s} {'x bf16':>7s} {'generate':>9s} "
          f"{'x bf16':>7s} {'engine':>8s} {'x bf16':>7s} {'x llama.cpp':>11s}")
    rows = []
    base = {**base, "prefill_dense_tok_s": base.get("prefill_tok_s")}  # against bf16's one prefill
    for name, row in best.items():
        ratios = {f"{k}_vs_bf16": round(row[k] / base[k], 3) for k in row if base.get(k)}
        if ref.get("engine_tok_s") and "engine_tok_s" in row:
            ratios["engine_vs_llama_cpp"] = round(row["engine_tok_s"] / ref["engine_tok_s"], 3)
        rows.append({"variant": name, **{k: round(x, 1) for k, x in row.items()}, **ratios})
        cells = [f"{row.get(k, float('nan')):9.1f} {ratios.get(k + '_vs_bf16', float('nan')):7.2f}"
                 for k in ("prefill_tok_s", "prefill_dense_tok_s", "generate_tok_s")]
        print(f"{name:16s} {' '.join(cells)} {row.get('engine_tok_s', float('nan')):8.1f} "
              f"{ratios.get('engine_tok_s_vs_bf16', float('nan')):7.2f} "
              f"{ratios.get('engine_vs_llama_cpp', float('nan')):11.2f}")
    plans = {v: _plan_summary(m.model) for v, m in models.items() if v not in ("bf16", "fp32")}
    print(json.dumps({"benchmark": "speed_sidebyside", "cpu": hw.cpu, "isa": hw.isa, "threads": threads,
                      "date": time.strftime("%Y-%m-%d"), "loadavg": os.getloadavg(), "rows": rows,
                      "kernels": plans}))


def _plan_summary(model: Any) -> list[dict[str, Any]]:
    from lmopt.compress.quantize.autotune import kernel_plan

    return kernel_plan(model)


if __name__ == "__main__":
    main()
