"""`make demo`: the embedded SmolLM2-135M-Instruct measured end to end on this machine.

Steps: describe the hardware (and measure bandwidth), load the embedded model in the dtype lmopt
picks, measure perplexity on the held-out Python docs, answer a chat prompt, measure speed against
the decode roofline, then print a table and write `reports/demo.md` and `reports/demo.json`.
Needs no data dir and no network. Takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmopt.evaluate import run_task
from lmopt.evaluate.speed import benchmark_speed
from lmopt.hardware import apply_threads, detect_hardware, measure_bandwidth
from lmopt.io import atomic_write_text, write_json
from lmopt.models import EMBEDDED_ALIAS, load_model
from lmopt.report import hardware_table, speed_table

PROMPT = "Write a Python function that returns the squares of a list of numbers."


def chat_answer(loaded: Any, prompt: str = PROMPT, max_new_tokens: int = 96) -> str:
    """Greedy answer to one user message through the model's chat template."""
    tok = loaded.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def run_demo(out_dir: Path = Path("reports")) -> dict[str, Any]:
    console = Console()
    started = time.time()
    hw = detect_hardware()
    hw.bandwidth_gbs = round(measure_bandwidth(), 2)
    apply_threads()
    console.print(hardware_table(hw.to_dict()))
    console.print(f"loading {EMBEDDED_ALIAS} (first run converts the GGUF once, ~30 s)")
    loaded = load_model(EMBEDDED_ALIAS)
    console.print(f"perplexity on held-out Python docs (seq_len 2048, dtype {hw.dtype})")
    ppl = run_task(loaded, "pydoc", seq_len=2048)  # the held-out split of Python's docs
    answer = chat_answer(loaded)
    console.print(f"[bold]user:[/] {PROMPT}\n[bold]assistant:[/] {answer}")
    speed = benchmark_speed(loaded.model, loaded.tokenizer, path=loaded.path, bandwidth_gbs=hw.bandwidth_gbs)
    console.print(speed_table({"pydoc_perplexity": ppl["perplexity"], **speed}))
    report = {"model": EMBEDDED_ALIAS, "hardware": hw.to_dict(), "pydoc": ppl, "chat": {"prompt": PROMPT,
              "answer": answer}, "speed": speed, "seconds": round(time.time() - started, 1)}
    write_json(out_dir / "demo.json", report)
    atomic_write_text(out_dir / "demo.md", render_markdown(report))
    console.print(f"wrote {out_dir / 'demo.md'} and {out_dir / 'demo.json'} in {report['seconds']} s")
    return report


def render_markdown(report: dict[str, Any]) -> str:
    hw, speed, ppl = report["hardware"], report["speed"], report["pydoc"]
    rows = [("Python-docs perplexity (held-out, seq 2048)",
             f"{ppl['perplexity']:.3f} ({ppl['tokens']} tokens)")]
    rows += [(key.replace("_", " "), str(value)) for key, value in speed.items()]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    isa = ", ".join(hw["isa"])
    machine = (f"{hw['cpu']}, {hw['physical_cores']} cores, {hw['memory_gb']} GB, ISA {isa}; "
               f"dtype {hw['dtype']}, {hw['threads']} threads, bandwidth {hw['bandwidth_gbs']} GB/s")
    return (f"# lmopt demo: {report['model']}\n\nMachine: {machine}.\n\n"
            f"| measure | value |\n|---|---|\n{table}\n\n"
            f"**Prompt:** {report['chat']['prompt']}\n\n**Answer:**\n\n{report['chat']['answer']}\n")


if __name__ == "__main__":
    run_demo()
