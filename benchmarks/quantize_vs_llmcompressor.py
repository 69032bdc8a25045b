"""lmopt's GPTQ against llm-compressor's GPTQ: same model, bits, group size and calibration tokens.

Three stages, two Python environments (llm-compressor pins transformers and compressed-tensors versions
other than lmopt's, so it lives in its own venv):

    .venv/bin/python benchmarks/quantize_vs_llmcompressor.py prepare --work DIR
    LLMC/bin/python  benchmarks/quantize_vs_llmcompressor.py llmc --work DIR [--group 64]  # llm-compressor's venv
    .venv/bin/python benchmarks/quantize_vs_llmcompressor.py evaluate --work DIR [--group 64] [--windows 4 32]

`prepare` saves the embedded SmolLM2-135M-Instruct in float32 (`DIR/fp32`) and the calibration windows
lmopt's GPTQ fits on with its defaults (`DIR/windows.pt`: the `mix`, 128 x 512 tokens, the 16 held-out
safeguard windows removed). `llmc` runs llm-compressor's `oneshot` with `GPTQModifier` (its defaults
apart from the quantization: int4 weights in groups of `--group`, asymmetric and symmetric; lm_head
ignored) on exactly those windows and saves each result's Linear weights (de-quantized values; the
script checks that every row holds at most 16 levels per group's worth of columns: quantized, though
not a proof of the group layout). The group is 64, not lmopt's default 128: SmolLM2's 576-wide inputs
are not a multiple of 128, which lmopt handles with a shorter last group and llm-compressor refuses.
`evaluate` quantizes with lmopt's GPTQ at the same bits, group, symmetry
and lm_head (unquantized), once with its defaults (the safeguard draws its 16 held-out windows beside the
same 128) and once on the same 128 windows with the safeguard off, adds RTN and fp32, and measures every
model with `lmopt.evaluate.perplexity` on the three domains of `quantize_rotation.py` (the first
`--windows` windows of 1,024 tokens, for each count given; `--configs` picks the lmopt variants).
Prints tables and a JSON line with the CPU and load average.
Goal (issue 13): lmopt's GPTQ at most the perplexity of llm-compressor's GPTQ.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

SYMMETRY = {"asym": False, "sym": True}


def prepare(work: Path) -> None:
    import torch

    from lmopt.compress.calibration_data import calibration_set
    from lmopt.compress.quantize.safeguard import holdout_count, split_windows
    from lmopt.models import load_model
    from lmopt.settings import default_data_dir

    loaded = load_model("smollm2-135m-instruct", dtype="float32")
    loaded.model.save_pretrained(work / "fp32")
    loaded.tokenizer.save_pretrained(work / "fp32")
    # the windows lmopt's default GPTQ fits on: 128 + 16 drawn, the 16 held out for the safeguard
    drawn = calibration_set(loaded.tokenizer, "mix", 128 + holdout_count(128), 512, 0, default_data_dir())
    fit, _ = split_windows(drawn.windows, holdout_count(128))
    torch.save(fit.clone(), work / "windows.pt")
    print(f"saved {work / 'fp32'} and {tuple(fit.shape)} windows ({drawn.parts})")


def levels_ok(weight, group: int) -> bool:  # noqa: ANN001
    """Sampled rows hold at most 16 distinct values per `group` columns (quantized to 4 bits, in any
    column order; a sanity check, not a proof of the group layout)."""
    rows, cols = weight.shape
    groups = -(-cols // group)
    return all(len(weight[r].unique()) <= 16 * groups for r in range(0, rows, max(1, rows // 64)))


def run_llmc(work: Path, group: int) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    windows = torch.load(work / "windows.pt")
    data = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()})
    for name, symmetric in SYMMETRY.items():
        model = AutoModelForCausalLM.from_pretrained(work / "fp32", dtype=torch.float32)
        scheme = {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": symmetric,
                                                     "strategy": "group", "group_size": group}}
        started = time.time()
        oneshot(model=model, dataset=data, recipe=GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"]),
                num_calibration_samples=windows.shape[0], max_seq_length=windows.shape[1])
        seconds = time.time() - started
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()
                   if k.endswith("_proj.weight")}
        bad = [k for k, v in weights.items() if not levels_ok(v.float(), group)]
        if bad:
            raise SystemExit(f"{name}: not on a 4-bit grid: {bad[:3]}")
        save_file(weights, str(work / f"llmc-{name}-g{group}.safetensors"))
        (work / f"llmc-{name}-g{group}.json").write_text(json.dumps({"seconds": round(seconds, 1),
                                                                     "tensors": len(weights)}))
        print(f"{name} g{group}: {len(weights)} tensors on a 4-bit grid, {seconds:.0f} s (oneshot, set-up included)")


CONFIGS = ("defaults", "no-safeguard", "rtn")


def evaluate(work: Path, windows: list[int], group: int, configs: tuple[str, ...] = CONFIGS) -> None:
    import copy

    import torch
    from quantize_rotation import domain_texts
    from safetensors.torch import load_file

    from lmopt.compress.quantize import quantize
    from lmopt.compress.quantize.config import GPTQConfig, RTNConfig
    from lmopt.evaluate.perplexity import perplexity
    from lmopt.hardware import detect_hardware
    from lmopt.models import load_model
    from lmopt.settings import default_data_dir

    load_before = os.getloadavg()
    loaded = load_model(str(work / "fp32"), dtype="float32")
    texts = domain_texts(default_data_dir())
    fit = torch.load(work / "windows.pt")
    rows = []

    def measure(label: str, model, extra: dict) -> None:  # noqa: ANN001
        for n in windows:  # a domain with fewer windows of 1,024 tokens is measured on all it has
            ppl = {d: perplexity(model, loaded.tokenizer, t, 1024, n)["perplexity"] for d, t in texts.items()}
            rows.append({"model": label, "windows": n, **{d: round(p, 3) for d, p in ppl.items()}, **extra})
            print(label, rows[-1], flush=True)

    measure("fp32", loaded.model, {})
    for name, sym in SYMMETRY.items():
        model = copy.deepcopy(loaded.model)
        weights = load_file(str(work / f"llmc-{name}-g{group}.safetensors"))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or len(weights) != sum(k.endswith("_proj.weight") for k in model.state_dict()):
            raise SystemExit(f"llm-compressor weights do not match the model: unexpected {unexpected[:3]}")
        measure(f"llm-compressor GPTQ ({name})", model, {})
        for key, label, config, given in (
                ("defaults", "lmopt GPTQ defaults",
                 GPTQConfig(bits=4, group_size=group, sym=sym, lm_head_bits=None), None),
                ("no-safeguard", "lmopt GPTQ same 128 windows, no safeguard",
                 GPTQConfig(bits=4, group_size=group, sym=sym, lm_head_bits=None, safeguard=False), fit),
                ("rtn", "lmopt RTN", RTNConfig(bits=4, group_size=group, sym=sym, lm_head_bits=None), None)):
            if key not in configs:
                continue
            model = copy.deepcopy(loaded.model)
            quantize(model, config, windows=given, tokenizer=loaded.tokenizer)
            measure(f"{label} ({name})", model, {})
    for n in windows:
        header = " | ".join(texts)
        print(f"\nfirst {n} windows of 1,024 tokens\n| model | {header} |\n|---|" + "---|" * len(texts))
        table = [row for row in rows if row["windows"] == n]
        for row in table:
            cells = " | ".join(f"{row[d]:.2f} (x{row[d] / table[0][d]:.3f})" for d in texts)
            print(f"| {row['model']} | {cells} |")
    print(json.dumps({"rows": rows, "cpu": detect_hardware().cpu, "threads": torch.get_num_threads(),
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "windows": windows,
                      "group": group, "configs": list(configs)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["prepare", "llmc", "evaluate"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--windows", type=int, nargs="+", default=[4],
                        help="evaluate on the first N windows of each domain, for each N given")
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS),
                        help="which lmopt variants `evaluate` quantizes and measures (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("LMOPT_QUIET", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    {"prepare": lambda: prepare(args.work), "llmc": lambda: run_llmc(args.work, args.group),
     "evaluate": lambda: evaluate(args.work, args.windows, args.group, tuple(args.configs))}[args.stage]()


if __name__ == "__main__":
    main()
