"""What lmopt's C kernels' int8 activations cost in quality: perplexity through each kernel path.

The `q4a8`/`q8a8` kernels (lmopt/native/qa8.c) round activations to int8 per block of 32 before
multiplying, as llama.cpp does; torch's `int4`/`int8` kernels and the dense paths keep bf16
activations. This runs the same quantized model (the embedded SmolLM2-135M-Instruct, RTN with lmopt's
defaults, bf16 activations) with every quantized layer forced onto one path at every row count:
- `dense`: de-quantized bf16 weights (the reference for the kernels' rounding);
- `torch`: torch's int4 kernel for 4-bit layers, its int8 kernel for the 8-bit lm_head;
- `c`: q4a8 for 4-bit layers, q8a8 for the 8-bit lm_head (what the serving engine's batch-1 decode
  runs where the autotuner picks them).
Perplexity: WikiText-2 raw test (`lmopt.evaluate.perplexity`), the first `--windows` windows of
`--seq-len` tokens (the issue's protocol: 4 x 1024).

    .venv/bin/python benchmarks/kernel_numerics.py [--variants w4-g32,w4-g128,int8] [--windows 4]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("LMOPT_QUIET", "1")


def force_path(model, path: str) -> None:
    """Every QuantLinear computes with `path` at any row count."""
    from lmopt.compress.quantize.apply import quant_layers

    for layer in quant_layers(model).values():
        if path == "dense":
            layer.prepare("dequant")
        else:
            backend = {("torch", True): "int4", ("torch", False): "int8",
                       ("c", True): "q4a8", ("c", False): "q8a8"}[(path, layer.bits <= 4)]
            layer.prepare(backend, dense_rows=1 << 40)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="w4-g32,w4-g128,int8")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    import torch

    from lmopt.compress.quantize import RTNConfig, quantize
    from lmopt.data import wikitext2_text
    from lmopt.evaluate.perplexity import perplexity
    from lmopt.hardware import apply_threads, detect_hardware
    from lmopt.models import load_model

    threads = apply_threads()
    text = wikitext2_text(args.data_dir)
    rows = []
    for variant in args.variants.split(","):
        loaded = load_model("smollm2-135m-instruct", dtype="bfloat16")
        config = RTNConfig(bits=8) if variant == "int8" else RTNConfig(bits=4, group_size=int(variant.split("-g")[1]))
        quantize(loaded.model, config)
        row = {"variant": variant}
        for path in ("dense", "torch", "c"):
            force_path(loaded.model, path)
            start = time.perf_counter()
            with torch.inference_mode():
                ppl = perplexity(loaded.model, loaded.tokenizer, text, seq_len=args.seq_len, limit=args.windows)
            row[path] = round(ppl["perplexity"], 4)
            row[f"{path}_s"] = round(time.perf_counter() - start, 1)
        row["c_vs_dense"] = round(row["c"] / row["dense"], 4)
        rows.append(row)
        print(f"{variant:8s} dense {row['dense']:.3f}  torch {row['torch']:.3f}  c {row['c']:.3f}  "
              f"(c / dense {row['c_vs_dense']:.4f})", flush=True)
    hw = detect_hardware()
    print(json.dumps({"benchmark": "kernel_numerics", "cpu": hw.cpu, "threads": threads,
                      "date": time.strftime("%Y-%m-%d"), "loadavg": os.getloadavg(),
                      "windows": args.windows, "seq_len": args.seq_len, "rows": rows}))


if __name__ == "__main__":
    main()
