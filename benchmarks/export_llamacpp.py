"""GGUF exports measured in llama.cpp itself: is lmopt's GPTQ/AWQ-calibrated q4_1 better than llama.cpp's
own round-to-nearest q4_1 of the same model at the same file size? (issue 16)

The model: the embedded SmolLM2-135M-Instruct after the PubMed LoRA domain adaptation, merged (its weights
are no longer on the q4_1 grid the embedded model came from), made by
    python benchmarks/train_lora_defaults.py --keep /tmp/lmopt-lora-pubmed
(LoRA, 40 steps on PubMedQA abstracts 1-900 in file order; 901-1000 held out.)

Arms, every one evaluated IN llama.cpp (llama-cpp-python):
  f16      `lmopt export --format gguf --type f16` of the adapted model
  rtn-q4_1 llama.cpp's own quantizer on that f16 file (`llama_model_quantize`, LLAMA_FTYPE_MOSTLY_Q4_1)
  gptq     lmopt GPTQ W4 g32 asymmetric (default calibration, float lm_head), exported code for code as q4_1
  awq      the same with AWQ
  q8_0     `lmopt export --type q8_0` of the adapted model (round to nearest)
Perplexity: non-overlapping 512-token windows (the `lmopt.evaluate.perplexity` protocol: our tokenizer's
ids, no BOS, each window from a fresh context) of the 100 held-out abstracts, and of WikiText-2 raw test
(the first `--wiki-windows` windows). llama.cpp gets our token ids, so every arm scores the same tokens;
its logits (`logits_all=True`) are turned into NLL here. The float model's perplexity by
`lmopt.evaluate.perplexity` is printed beside them: the f16 file must agree with it within ~0.5%.

    flock -s /tmp/lmopt-cpu.lock .venv/bin/python benchmarks/export_llamacpp.py [--model DIR] [--work DIR]
Prints a table and one JSON line; the GGUF files stay in --work (--reuse skips arms already written).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

ARMS = ("f16", "rtn-q4_1", "gptq-q4_1", "awq-q4_1", "q8_0")


def heldout_text(data_dir: Path) -> str:
    """The 100 held-out abstracts, joined exactly as benchmarks/train_lora_defaults.py writes TEST.txt."""
    docs = [d.strip() for d in (data_dir / "pubmedqa" / "pubmedqa_abstracts.txt").read_text().split("\n\n")
            if d.strip()]
    return "\n\n".join(docs[-100:])


def llama_nll(path: Path, windows: torch.Tensor, threads: int) -> dict[str, Any]:
    """Perplexity of a GGUF in llama.cpp on (n, seq) token-id windows, each from an empty KV cache."""
    from llama_cpp import Llama

    seq = windows.shape[1]
    llm = Llama(str(path), n_ctx=seq, n_batch=seq, n_ubatch=seq, logits_all=True, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    total, count = 0.0, 0
    started = time.perf_counter()
    for window in windows:
        llm.reset()  # n_tokens = 0: eval() then clears the KV cache from position 0
        llm.eval(window.tolist())
        logits = torch.from_numpy(llm.scores[: seq - 1].copy())  # (seq-1, vocab) float32
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        targets = window[1:]
        total += float(-logprobs.gather(-1, targets[:, None]).double().sum())
        count += targets.numel()
    seconds = time.perf_counter() - started
    llm.close()
    return {"perplexity": round(math.exp(total / count), 4), "tokens": count, "seconds": round(seconds, 1)}


def llama_quantize(src: Path, dst: Path, threads: int) -> None:
    """llama.cpp's own q4_1 (round to nearest per 32-block; llama.cpp picks the embedding/output type)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def tensor_types(path: Path) -> dict[str, Any]:
    """Counts of GGUF tensor types, and the embedding/output types (what 'same file size' rests on)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    counts = Counter(v for k, v in types.items() if k.endswith(".weight") and ".norm" not in k
                     and not k.endswith("_norm.weight"))
    return {"token_embd": types.get("token_embd.weight"), "output": types.get("output.weight", "tied"),
            "weights": dict(counts)}


def quantized_gguf(method: str, model: str, work: Path, out: Path) -> dict[str, Any]:
    """lmopt GPTQ or AWQ, W4 g32 asymmetric with the default calibration, float lm_head (the GGUF
    writer then gives the tied embedding/output q8_0, as llama.cpp's own q4_1 does), exported as q4_1."""
    from lmopt.compress.quantize import quantize, save_quantized
    from lmopt.compress.quantize.config import AWQConfig, GPTQConfig
    from lmopt.export import ExportConfig, export
    from lmopt.models import load_model

    loaded = load_model(model, dtype="float32")
    config = {"gptq": GPTQConfig, "awq": AWQConfig}[method](bits=4, group_size=32, sym=False, lm_head_bits=None)
    report = quantize(loaded.model, config, None, loaded.tokenizer)
    saved = work / f"{method}-w4g32"
    save_quantized(loaded.model, loaded.tokenizer, saved)
    result = export(str(saved), ExportConfig(format="gguf", type="q4_1", output=str(out), force=True))
    return {"quantize_seconds": report["seconds"], "safeguard_kept": report.get("safeguard_kept"),
            "calibration_tokens": report.get("calibration_tokens"), "export_calibration":
            result.details.get("calibration"), "export_parity": _parity(result.parity)}


def lmopt_gguf(model: str, kind: str, out: Path) -> dict[str, Any]:
    from lmopt.export import ExportConfig, export

    result = export(model, ExportConfig(format="gguf", type=kind, output=str(out), force=True))
    return {"export_parity": _parity(result.parity), "export_calibration": result.details.get("calibration")}


def _parity(parity: dict[str, Any]) -> dict[str, Any]:
    keep = ("perplexity_source", "perplexity_export", "perplexity_change", "top1_agreement", "passed")
    return {k: parity.get(k) for k in keep}


def build_arm(arm: str, model: str, work: Path, threads: int) -> tuple[Path, dict[str, Any]]:
    path = work / f"{arm}.gguf"
    if arm == "f16":
        return path, lmopt_gguf(model, "f16", path)
    if arm == "q8_0":
        return path, lmopt_gguf(model, "q8_0", path)
    if arm == "rtn-q4_1":
        f16 = work / "f16.gguf"
        if not f16.exists():
            build_arm("f16", model, work, threads)
        llama_quantize(f16, path, threads)
        return path, {"made_by": "llama_cpp.llama_model_quantize(LLAMA_FTYPE_MOSTLY_Q4_1) of f16.gguf"}
    return path, quantized_gguf(arm.split("-")[0], model, work, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="/tmp/lmopt-lora-pubmed")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmopt-export-llamacpp"))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--pubmed-windows", type=int, default=None, help="default: every held-out window")
    parser.add_argument("--wiki-windows", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="keep GGUF files already in --work")
    args = parser.parse_args()

    from lmopt.data import wikitext2_text
    from lmopt.evaluate.perplexity import perplexity, tokenize_windows
    from lmopt.hardware import detect_hardware
    from lmopt.models import load_model
    from lmopt.settings import default_data_dir

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model, dtype="float32")
    texts = {"pubmed-heldout": (heldout_text(default_data_dir()), args.pubmed_windows),
             "wikitext2-test": (wikitext2_text(), args.wiki_windows)}
    windows = {name: tokenize_windows(loaded.tokenizer, text, args.seq_len, limit)
               for name, (text, limit) in texts.items()}
    rows: dict[str, dict[str, Any]] = {"float (torch, lmopt.evaluate.perplexity)": {
        name: {"perplexity": round(perplexity(loaded.model, loaded.tokenizer, text, args.seq_len, limit)
                                   ["perplexity"], 4)} for name, (text, limit) in texts.items()}}
    del loaded
    for arm in args.arms.split(","):
        path = args.work / f"{arm}.gguf"
        info: dict[str, Any] = {}
        if not (args.reuse and path.exists()):
            path, info = build_arm(arm, args.model, args.work, args.threads)
        info.update(size_mb=round(path.stat().st_size / 1e6, 2), **tensor_types(path))
        for name, ids in windows.items():
            info[name] = llama_nll(path, ids, args.threads)
        rows[arm] = info
        print(json.dumps({arm: info}), flush=True)
    print_table(rows, list(windows))
    hw = detect_hardware()
    print(json.dumps({"benchmark": "export_llamacpp", "model": args.model, "cpu": hw.cpu, "isa": hw.isa,
                      "loadavg": Path("/proc/loadavg").read_text().split()[:3],
                      "windows": {k: list(v.shape) for k, v in windows.items()}, "rows": rows}), flush=True)


def print_table(rows: dict[str, dict[str, Any]], names: list[str]) -> None:
    base = rows.get("f16", {})
    print("| arm | size MB | token_embd | " + " | ".join(f"{n} ppl (vs f16)" for n in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for arm, info in rows.items():
        cells = []
        for name in names:
            ppl = info[name]["perplexity"]
            ref = base.get(name, {}).get("perplexity")
            cells.append(f"{ppl:.3f}" + (f" ({ppl / ref - 1:+.2%})" if ref else ""))
        print(f"| {arm} | {info.get('size_mb', '-')} | {info.get('token_embd', '-')} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
