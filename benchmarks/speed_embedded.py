"""Speed of the embedded model in fp32 and bf16, side by side in one process (ratios are what to trust).

Run: .venv/bin/python benchmarks/speed_embedded.py [--new-tokens 32] [--repeats 3]
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

from lmopt.evaluate.speed import benchmark_speed
from lmopt.hardware import apply_threads, measure_bandwidth
from lmopt.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = apply_threads()
    loaded = load_model("smollm2-135m-instruct", dtype="float32")
    bandwidth = measure_bandwidth()
    rows = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        loaded.model.to(dtype)
        rows[name] = benchmark_speed(loaded.model, loaded.tokenizer, new_tokens=args.new_tokens,
                                     repeats=args.repeats, path=loaded.path, bandwidth_gbs=bandwidth)
    keys = ["prefill_tokens_per_s", "decode_tokens_per_s_bs1", "decode_tokens_per_s_bs8",
            "time_to_first_token_s",
            "decode_roofline_tokens_per_s", "roofline_fraction_bs1", "peak_rss_mb"]
    print(f"{'measure':32s} {'fp32':>10s} {'bf16':>10s} {'bf16/fp32':>10s}")
    for key in keys:
        a, b = rows["fp32"][key], rows["bf16"][key]
        print(f"{key:32s} {a:10.2f} {b:10.2f} {b / a:10.2f}")
    print(json.dumps({"threads": threads, "bandwidth_gbs": bandwidth, **rows}))


if __name__ == "__main__":
    main()
