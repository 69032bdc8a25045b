"""ONNX export against transformers: the same greedy outputs on 20 prompts? (issue 16) And ONNX Runtime's
batch-1 decode speed (`ort_decode_tokens_per_second`, for a side-by-side speed run).

The model is exported with `lmopt export --format onnx` (torch.onnx dynamo exporter, KV cache, float32);
then each of the 20 fixed prompts of `lmopt.export.parity.PROMPTS` (no special tokens added) is continued
greedily for `--new-tokens` tokens by ONNX Runtime's loop with the cache (`OrtModel.generate`) and by
transformers' `generate(do_sample=False)` on the source model, and the two token lists are compared.

    flock -s /tmp/lmopt-cpu.lock .venv/bin/python benchmarks/export_onnx.py [--model REF] [--out DIR]
    flock -x /tmp/lmopt-cpu.lock .venv/bin/python benchmarks/export_onnx.py --reuse --speed   # tokens/s
Prints one line per prompt and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def ort_decode_tokens_per_second(path: str | Path, prompt_ids: list[int], new_tokens: int = 64,
                                 threads: int | None = None, warmup: int = 4) -> dict[str, Any]:
    """Batch-1 greedy decode speed of an `lmopt export --format onnx` directory on ONNX Runtime (CPU).

    Prefill `prompt_ids` once, decode `warmup` tokens untimed, then time `new_tokens` single-token steps
    (no stop at EOS; each step feeds the previous step's present KV back as numpy arrays, as
    `OrtModel.generate` does). Returns tokens/s and the prefill time.
    """
    from lmopt.export.onnx_export import OrtModel

    model = OrtModel(Path(path), threads)
    started = time.perf_counter()
    logits, past = model.step(np.array([prompt_ids]), model.empty_past())
    prefill_s = time.perf_counter() - started
    for _ in range(warmup):
        logits, past = model.step(np.array([[int(logits[0, -1].argmax())]]), past)
    started = time.perf_counter()
    for _ in range(new_tokens):
        logits, past = model.step(np.array([[int(logits[0, -1].argmax())]]), past)
    seconds = time.perf_counter() - started
    return {"decode_tokens_per_s": round(new_tokens / seconds, 2), "prefill_s": round(prefill_s, 3),
            "prompt_tokens": len(prompt_ids), "new_tokens": new_tokens, "threads": threads}


def greedy_comparison(path: Path, loaded: Any, prompts: list[str], new_tokens: int) -> list[dict[str, Any]]:
    """ONNX Runtime's greedy continuation of each prompt against transformers' `generate`."""
    from lmopt.export.onnx_export import OrtModel, hf_generate

    ort_model = OrtModel(path)
    tokenizer, eos = loaded.tokenizer, loaded.tokenizer.eos_token_id
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = ort_model.generate(ids, new_tokens, eos)
        b = hf_generate(loaded.model, ids, new_tokens, eos)
        diverge = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                       None if len(a) == len(b) else min(len(a), len(b)))
        row = {"prompt": prompt, "same": a == b, "tokens": len(b), "first_difference": diverge}
        if a != b:
            row.update(onnx=tokenizer.decode(a), transformers=tokenizer.decode(b))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path("/tmp/lmopt-export-onnx/model-onnx"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="use the ONNX directory already at --out")
    parser.add_argument("--speed", action="store_true", help="measure decode tokens/s only (run under flock -x)")
    args = parser.parse_args()

    from lmopt.export import ExportConfig, export
    from lmopt.export.config import ParityConfig
    from lmopt.export.parity import PROMPTS
    from lmopt.hardware import detect_hardware
    from lmopt.models import load_model

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"benchmark": "export_onnx", "model": args.model, "cpu": detect_hardware().cpu}
    loaded = load_model(args.model, dtype="float32")
    if not (args.reuse and (args.out / "model.onnx").exists()):
        started = time.perf_counter()
        result = export(loaded, ExportConfig(format="onnx", output=str(args.out), force=True,
                                             parity=ParityConfig(prompts=0)))
        report.update(export_seconds=round(time.perf_counter() - started, 1), size_mb=result.size_mb,
                      exporter=result.details.get("exporter"), parity=result.parity)
    if args.speed:
        ids = loaded.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
        report["speed"] = ort_decode_tokens_per_second(args.out, ids, 64, args.threads)
    else:
        rows = greedy_comparison(args.out, loaded, PROMPTS[: args.prompts], args.new_tokens)
        report.update(prompts=len(rows), identical=sum(r["same"] for r in rows), new_tokens=args.new_tokens,
                      differing=[r for r in rows if not r["same"]])
    report["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
