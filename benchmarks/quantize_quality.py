"""Quality, size and cost of quantizing the embedded model: one configuration per run.

Run: python benchmarks/quantize_quality.py --method gptq --bits 4 --group-size 128 --out DIR
     (a driver loops over configurations; each run is its own process so peak RSS is its own)
Perplexity: WikiText-2 raw test, the foundation's protocol (`lmopt.evaluate.perplexity`), seq_len
2048, the first `--windows` windows, fp32 activations with the exact de-quantized weights.
Prints a table row and a final JSON line; saves the packed model to --out for quantize_speed.py.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="gptq", choices=["fp32", "rtn", "gptq", "awq", "w8a8"])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--lm-head-bits", type=int, default=8, help="0 keeps the lm_head in fp32")
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8, help="0: quantize and save only")
    parser.add_argument("--calib", default="pydoc-train",
                        help="calibration source, or wikitext2-heldout: WikiText-2 test tokens after "
                             "the evaluated windows (disjoint; WikiText-2 train is not available offline)")
    parser.add_argument("--clip", type=float, default=None, help="grid clip search (config default if unset)")
    parser.add_argument("--no-act-order", action="store_true")
    parser.add_argument("--rounding", default=None, choices=["rtn", "gptq"], help="AWQ: how weights round")
    parser.add_argument("--damp", type=float, default=None, help="GPTQ dampening (config default if unset)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from lmopt.compress.config import CalibrationConfig
    from lmopt.compress.quantize import quantize, save_quantized
    from lmopt.compress.quantize.config import METHOD_CONFIGS
    from lmopt.data import wikitext2_text
    from lmopt.evaluate.perplexity import perplexity
    from lmopt.hardware import apply_threads, peak_rss_mb
    from lmopt.io import size_on_disk_mb
    from lmopt.models import load_model

    apply_threads()
    loaded = load_model("smollm2-135m-instruct", dtype="float32")
    rss_loaded = peak_rss_mb()
    bits = {"fp32": 32, "w8a8": 8}.get(args.method, args.bits)
    row = {"method": args.method, "bits": bits,
           "group_size": 0 if args.method == "w8a8" else args.group_size,
           "lm_head_bits": args.lm_head_bits or None}
    if args.method != "fp32":
        fields = {"bits": args.bits, "group_size": args.group_size, "lm_head_bits": args.lm_head_bits or None}
        if args.clip is not None:
            fields["clip"] = args.clip
        if args.method == "gptq" and args.no_act_order:
            fields["act_order"] = False
        if args.method == "awq" and args.rounding:
            fields["rounding"] = args.rounding
        if args.method == "gptq" and args.damp is not None:
            fields["damp"] = args.damp
        if args.method == "w8a8":  # fixed grid: 8-bit symmetric per channel
            fields = {"lm_head_bits": fields["lm_head_bits"]}
        config = METHOD_CONFIGS[args.method](**fields)
        row.update(clip=getattr(config, "clip", 0.0), calib=args.calib,
                   rounding=getattr(config, "rounding", None))
        calib = calibration(args, loaded.tokenizer, CalibrationConfig, wikitext2_text)
        windows = None if isinstance(calib, CalibrationConfig) else calib  # held-out WikiText-2 token ids
        if windows is None and "calibration" in type(config).model_fields:
            config = config.model_copy(update={"calibration": calib})
        report = quantize(loaded.model, config, windows, loaded.tokenizer)
        row.update(quantize_seconds=report["seconds"], peak_rss_mb=round(peak_rss_mb(), 1),
                   rss_model_loaded_mb=round(rss_loaded, 1), lm_head=report["lm_head"],
                   calibration_tokens=report.get("calibration_tokens", 0))
        if args.out:
            save_quantized(loaded.model, loaded.tokenizer, args.out)
            row["size_on_disk_mb"] = size_on_disk_mb(args.out)
    else:
        row["size_on_disk_mb"] = size_on_disk_mb(loaded.path)
    if args.windows == 0:  # only quantize and save (for quantize_speed.py)
        print(json.dumps(row))
        return
    started = time.time()
    with torch.no_grad():
        ppl = perplexity(loaded.model, loaded.tokenizer, wikitext2_text(args.data_dir), seq_len=2048,
                         limit=args.windows)
    row.update(wikitext2_ppl=round(ppl["perplexity"], 4), windows=ppl["windows"], tokens=ppl["tokens"],
               eval_seconds=round(time.time() - started, 1))
    print(" | ".join(f"{k}={v}" for k, v in row.items()))
    print(json.dumps(row))


def calibration(args, tokenizer, config_cls, wikitext2_text):  # noqa: ANN001, ANN201
    """A CalibrationConfig, or for wikitext2-heldout a (n_samples, seq_len) tensor of windows cut
    from the WikiText-2 test tokens after the first `--windows` x 2048 that are evaluated."""
    if args.calib != "wikitext2-heldout":
        return config_cls(source=args.calib, n_samples=args.n_samples, seq_len=args.seq_len)
    import torch

    ids = tokenizer(wikitext2_text(args.data_dir), add_special_tokens=False)["input_ids"]
    tail = torch.tensor(ids[max(args.windows, 8) * 2048:])
    stride = tail.numel() // args.n_samples
    assert stride >= args.seq_len, "not enough held-out WikiText-2 tokens"
    return torch.stack([tail[i * stride:i * stride + args.seq_len] for i in range(args.n_samples)])


if __name__ == "__main__":
    main()
