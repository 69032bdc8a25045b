"""Distillation: a half-depth student cut from the embedded model, distilled vs plain cross-entropy.

Teacher: SmolLM2-135M-Instruct (30 layers). Student: every other layer kept (15, first and last
included), the same embeddings and head. Both students train on the same packed blocks of Python's
docs (`pydoc-train`) for the same optimizer steps (so the same tokens); held-out perplexity on the
`pydoc` eval split (disjoint), fp32, 512-token windows. Recovery = share of the gap between the freshly
cut student and the teacher that training closes, in log-perplexity (= mean NLL, the honest scale;
perplexity ratios flatter a student that starts in the thousands).

    nice -n 10 .venv/bin/python benchmarks/distill_half_depth.py --steps 60
"""

from __future__ import annotations

import argparse
import json
import math
import os


def ppl(loaded, text: str, windows: int) -> float:
    from lmopt.evaluate import perplexity

    return perplexity(loaded.model, loaded.tokenizer, text, 512, windows)["perplexity"]


def run(teacher, docs: list[str], alpha: float, args) -> object:
    from lmopt.train import DistillConfig, distill, student_from_teacher

    student = student_from_teacher(teacher, args.layers)
    config = DistillConfig(
        loss="forward_kl",
        temperature=args.temperature,
        alpha=alpha,
        lr=args.lr,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        max_steps=args.steps,
        warmup_steps=5,
        scheduler="cosine",
        mixed_precision=args.precision,
        val_fraction=0.02,
        max_val_batches=2,
        eval_every=max(args.steps // 3, 1),
        seed=0,
    )
    return distill(teacher, student, docs, config)


def speed(loaded) -> float:
    from lmopt.evaluate.speed import benchmark_speed

    result = benchmark_speed(
        loaded.model,
        loaded.tokenizer,
        prefill_len=128,
        prompt_len=32,
        new_tokens=32,
        batch_sizes=(1,),
        repeats=2,
    )
    return result["decode_tokens_per_s_bs1"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--layers", type=int, default=15)
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="CE weight of the distilled run")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--speed-only", action="store_true", help="only time teacher vs cut student decode")
    parser.add_argument("--speed", action="store_true", help="also time decode (takes the speed lock)")
    args = parser.parse_args()
    os.environ.setdefault("LMOPT_QUIET", "1")
    from lmopt.data.text import pydoc_text
    from lmopt.hardware import apply_threads
    from lmopt.models import load_model
    from lmopt.train import student_from_teacher

    apply_threads()
    docs = [d for d in pydoc_text("train").split("\n\n") if d.strip()]
    held_out = pydoc_text("eval")
    teacher = load_model(args.model, dtype="float32")
    if args.speed_only:  # decode speed does not depend on the trained values, only on the shapes
        cut = student_from_teacher(teacher, args.layers)
        rates = {"teacher_decode_bs1": speed(teacher), "student_decode_bs1": speed(cut)}
        print(json.dumps({"benchmark": "distill_half_depth_speed", **rates,
                          "ratio": rates["student_decode_bs1"] / rates["teacher_decode_bs1"]}))
        return
    fresh = student_from_teacher(teacher, args.layers)
    figures = {
        "teacher_ppl": ppl(teacher, held_out, args.windows),
        "fresh_ppl": ppl(fresh, held_out, args.windows),
    }
    print(json.dumps(figures), flush=True)
    rows = {}
    for name, alpha in (("distill", args.alpha), ("cross_entropy", 1.0)):
        result = run(teacher, docs, alpha, args)
        value = ppl(result.model, held_out, args.windows)
        gap = math.log(figures["fresh_ppl"]) - math.log(figures["teacher_ppl"])
        rows[name] = {
            "ppl": value,
            "recovery_log": (math.log(figures["fresh_ppl"]) - math.log(value)) / gap,
            "tokens": result.metrics["tokens"],
            "steps": result.metrics["steps"],
            "train_seconds": result.metrics["train_seconds"],
            "val_curve": [(h["step"], round(h["eval_loss"], 4)) for h in result.history],
        }
        print(json.dumps({name: rows[name]}), flush=True)
        if name == "distill":
            student = result.model
    params = {
        "teacher": sum(p.numel() for p in teacher.model.parameters()),
        "student": sum(p.numel() for p in student.model.parameters()),
    }
    if args.speed:
        figures["teacher_decode_bs1"], figures["student_decode_bs1"] = speed(teacher), speed(student)
    print(
        f"\nteacher ppl {figures['teacher_ppl']:.3f}, freshly cut {args.layers}-layer student "
        f"{figures['fresh_ppl']:.3f}; parameters {params['student']:,} vs {params['teacher']:,}"
    )
    print("| student training | held-out ppl | gap recovered (log ppl) | tokens | steps |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['ppl']:.3f} | {r['recovery_log']:.1%} | {r['tokens']} | {r['steps']} |")
    if args.speed:
        print(
            f"decode bs1 tokens/s: teacher {figures['teacher_decode_bs1']}, "
            f"student {figures['student_decode_bs1']}"
        )
    print(
        json.dumps(
            {"benchmark": "distill_half_depth", **figures, "params": params, "rows": rows, "args": vars(args)}
        )
    )


if __name__ == "__main__":
    main()
