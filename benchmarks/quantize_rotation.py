"""Quality of W4 g128 quantization with default settings on three domains: fp32, RTN, GPTQ, rotate+GPTQ.

Run:  nice python benchmarks/quantize_rotation.py [--windows 4] [--seq-len 1024] [--methods ...]
      (methods: fp32 and any quantize method, e.g. rtn,gptq,awq,rotate+gptq; awq+gptq: AWQ with
      GPTQ rounding; awq-norefit: AWQ without its scale refit)
      (--smoke: the tiny random model, 8 calibration windows of 64 tokens, 1 window per domain)
Every method runs with its config defaults (calibration: the `mix`, 128 x 512 tokens plus 16 held-out
windows for the safeguard), on the embedded SmolLM2-135M-Instruct in fp32, one after another in this
process. Perplexity protocol: `lmopt.evaluate.perplexity` (non-overlapping windows, the first
`--windows` of `--seq-len` tokens) on three evaluation texts the calibration never sees:
- wikitext2: the raw WikiText-2 test split (`wikitext-2-raw/wiki.test.raw`);
- pubmed: PubMedQA abstracts 901-1000 of `pubmedqa/pubmedqa_abstracts.txt` (the held-out split);
- pydoc: the last 20% of Python's documentation (`lmopt.data.pydoc_text("eval")`).
Prints a table (perplexity and ratio to fp32 per domain), and a final JSON line with the rows, the
CPU model, torch threads and the load average before and after.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

METHODS = ("fp32", "rtn", "gptq", "rotate+gptq")
# a method name in VARIANTS -> (method, config fields)
VARIANTS = {"awq+gptq": ("awq", {"rounding": "gptq"}), "awq-norefit": ("awq", {"refit_scales": False})}


def domain_texts(data_dir: Path) -> dict[str, str]:
    from lmopt.compress.calibration_data import PUBMED_CALIBRATION_ABSTRACTS
    from lmopt.data import pydoc_text, wikitext2_text

    abstracts = [a.strip() for a in (data_dir / "pubmedqa" / "pubmedqa_abstracts.txt").read_text().split("\n\n")]
    held_out = [a for a in abstracts if a][PUBMED_CALIBRATION_ABSTRACTS:]
    return {"wikitext2": wikitext2_text(data_dir), "pubmed": "\n\n".join(held_out), "pydoc": pydoc_text("eval")}


def quantized(loaded, method: str, args) -> tuple[object, dict]:  # noqa: ANN001
    from lmopt.compress.quantize import quantize
    from lmopt.compress.quantize.config import METHOD_CONFIGS

    model = copy.deepcopy(loaded.model)
    if method == "fp32":
        return model, {}
    name, extra = VARIANTS.get(method, (method, {}))
    config = METHOD_CONFIGS[name](bits=4, group_size=128, **extra)
    calibration = getattr(config, "calibration", None)
    if calibration is not None:
        update = {"data_dir": str(args.data_dir)}
        if args.smoke:
            update.update(n_samples=8, seq_len=64)
        config = config.model_copy(update={"calibration": calibration.model_copy(update=update)})
    started = time.time()
    report = quantize(model, config, tokenizer=loaded.tokenizer)
    return model, {"quantize_seconds": round(time.time() - started, 1), "safeguard_kept": report["safeguard_kept"],
                   "calibration_parts": report.get("calibration_parts"), "lm_head": report["lm_head"],
                   "rotation": report.get("rotation", {}).get("hidden")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("LMOPT_QUIET", "1")
    import torch

    from lmopt.evaluate.perplexity import perplexity
    from lmopt.hardware import apply_threads, detect_hardware
    from lmopt.models import load_model, tiny_llama
    from lmopt.settings import default_data_dir

    apply_threads(args.threads)
    args.data_dir = args.data_dir or default_data_dir()
    if args.data_dir is None:
        raise SystemExit("needs the shared data dir (--data-dir or LMOPT_DATA_DIR)")
    load_before = os.getloadavg()
    loaded = tiny_llama() if args.smoke else load_model("smollm2-135m-instruct", dtype="float32")
    windows, seq_len = (1, 64) if args.smoke else (args.windows, args.seq_len)
    texts = domain_texts(args.data_dir)
    rows = []
    for method in args.methods.split(","):
        model, row = quantized(loaded, method, args)
        row = {"method": method, "bits": 32 if method == "fp32" else 4, "group_size": 0 if method == "fp32" else 128,
               **row}
        with torch.no_grad():
            for domain, text in texts.items():
                ppl = perplexity(model, loaded.tokenizer, text, seq_len, windows)["perplexity"]
                row[f"{domain}_ppl"] = round(ppl, 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["method"] == "fp32"), None)
    print(f"\n| method | {' | '.join(texts)} |\n|---|" + "---|" * len(texts))
    for row in rows:
        cells = [f"{row[f'{d}_ppl']:.2f}" + (f" (x{row[f'{d}_ppl'] / base[f'{d}_ppl']:.3f})" if base else "")
                 for d in texts]
        print(f"| {row['method']} | {' | '.join(cells)} |")
    print(json.dumps({"benchmark": "quantize_rotation", "model": "tiny" if args.smoke else "smollm2-135m-instruct",
                      "cpu": detect_hardware().cpu, "threads": torch.get_num_threads(), "windows": windows,
                      "seq_len": seq_len, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                      "rows": rows}))


if __name__ == "__main__":
    main()
