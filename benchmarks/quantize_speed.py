"""Speed of quantized models vs fp32 and bf16, measured side by side in one process.

Run: flock /tmp/lmopt-speed.lock python benchmarks/quantize_speed.py DIR [DIR ...] [--cache-dense DIR]
(DIRs saved by quantize_quality.py --out). Each quantized model loads through `load_model` in bf16
with the `auto` backend (int4 / int8 / oneDNN w8a8 kernels). Figures from
`lmopt.evaluate.benchmark_speed` (HF `generate`): prefill of 512 tokens, greedy decode at batch 1 and 8
(32-token prompts); plus batch-1 decode through the lmopt serving engine (the runtime without
`generate`'s per-token overhead). Ratios are against bf16 measured in the same run. Prints a table and a
final JSON line.
"""

from __future__ import annotations

import argparse
import json


def measure(model, tokenizer, path, args) -> dict:
    from lmopt.evaluate.speed import benchmark_speed

    row = benchmark_speed(model, tokenizer, prefill_len=512, prompt_len=32, new_tokens=args.new_tokens,
                          batch_sizes=(1, 8), repeats=args.repeats, path=path)
    row["engine_decode_tokens_per_s_bs1"] = engine_decode(model, tokenizer, args.new_tokens)
    return row


def engine_decode(model, tokenizer, new_tokens: int, rounds: int = 3) -> float:
    """Batch-1 decode tokens/s of the lmopt serving engine (the runtime, without HF generate's
    per-token overhead): best of `rounds`, first to last token of one greedy request."""
    import time

    from lmopt.serve.config import EngineConfig
    from lmopt.serve.engine import Engine
    from lmopt.serve.sampling import SamplingParams

    engine = Engine((model, tokenizer), EngineConfig(max_batch=1, max_model_len=256, kv_cache_mb=64))
    prompt = tokenizer("The history of the Roman empire is long and")["input_ids"]
    rates = []
    for _ in range(rounds):
        stamps: list[float] = []
        engine.add_request(prompt, SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True),
                           lambda out, stamps=stamps: stamps.append(time.perf_counter()))
        while engine.step():
            pass
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return round(max(rates), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*")
    parser.add_argument("--cache-dense", nargs="*", default=[], help="also run these with cache_dense")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from lmopt.compress.quantize import prepare_runtime
    from lmopt.hardware import apply_threads
    from lmopt.models import load_model

    apply_threads()
    rows = {}
    for dtype in ("float32", "bfloat16"):
        base = load_model("smollm2-135m-instruct", dtype=dtype)
        rows[dtype] = measure(base.model, base.tokenizer, base.path, args)
        del base
    runs = [(m, False) for m in args.models] + [(m, True) for m in args.cache_dense]
    for path, cache in runs:
        loaded = load_model(path, dtype="bfloat16")
        used = prepare_runtime(loaded.model, "auto", cache_dense=cache)
        row = measure(loaded.model, loaded.tokenizer, loaded.path, args)
        row["backends"] = used
        rows[path.rstrip("/").split("/")[-1] + (" +cache_dense" if cache else "")] = row
        del loaded
    bf16 = rows["bfloat16"]
    keys = ["prefill_tokens_per_s", "decode_tokens_per_s_bs1", "decode_tokens_per_s_bs8",
            "engine_decode_tokens_per_s_bs1"]
    print(f"{'model':28s} {'prefill':>8s} {'bs1':>7s} {'bs8':>7s} {'eng1':>7s}  ratios vs bf16"
          f"{'size MB':>14s}")
    for name, row in rows.items():
        for key in keys:
            row[key.replace("tokens_per_s", "x_bf16")] = round(row[key] / bf16[key], 2)
        ratios = " ".join(f"{row[k.replace('tokens_per_s', 'x_bf16')]:.2f}" for k in keys)
        speeds = " ".join(f"{row[k]:7.1f}" for k in keys)
        print(f"{name:28s} {speeds}  {ratios:20s} {row['size_on_disk_mb']}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
