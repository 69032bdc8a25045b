"""Instruction tuning: LoRA on the Alpaca sample (chat template, loss on responses only).

Split (fixed): the first 100 rows of `alpaca/alpaca_5000.json` are the validation set, the rest train.
Reported: response-only validation loss before and after, and greedy answers to three validation
prompts before and after.

    nice -n 10 .venv/bin/python benchmarks/train_chat.py --steps 150
"""

from __future__ import annotations

import argparse
import json
import os


def answer(loaded, prompt: str, new_tokens: int = 60) -> str:
    import torch

    tok = loaded.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=False).to(loaded.model.device)
    with torch.no_grad():
        out = loaded.model.generate(
            **ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    os.environ.setdefault("LMOPT_QUIET", "1")
    from lmopt.data.text import load_text  # noqa: F401  (data dir resolution lives there)
    from lmopt.models import load_model
    from lmopt.settings import default_data_dir
    from lmopt.train import TrainConfig, finetune
    from lmopt.train.data import to_messages

    rows = json.loads((default_data_dir() / "alpaca" / "alpaca_5000.json").read_text())
    val, train = rows[:100], rows[100:]
    prompts = [to_messages(r)[0]["content"] for r in val[:3]]
    loaded = load_model(args.model, dtype="float32")
    before = [answer(loaded, p) for p in prompts]
    config = TrainConfig(
        format="chat",
        method="lora",
        lora_r=16,
        lora_alpha=32,
        lr=args.lr,
        seq_len=384,
        batch_size=args.batch_size,
        max_steps=args.steps,
        warmup_steps=10,
        eval_every=max(args.steps // 3, 1),
        eval_before=True,
        mixed_precision=args.precision,
    )
    result = finetune(loaded, train, config, val_data=val)
    after = [answer(result.model, p) for p in prompts]
    hist = result.history
    print(
        f"response-only validation loss: before {hist[0]['eval_loss']:.4f}, "
        f"after {hist[-1]['eval_loss']:.4f}, "
        f"best {result.metrics['best_eval_loss']:.4f} (step {result.metrics['best_step']})"
    )
    for p, b, a, ref in zip(prompts, before, after, val[:3], strict=True):
        print(f"\nPROMPT: {p}\nREFERENCE: {ref['output']}\nBEFORE: {b}\nAFTER: {a}")
    print(
        json.dumps(
            {
                "benchmark": "train_chat",
                "before_loss": hist[0]["eval_loss"],
                "after_loss": hist[-1]["eval_loss"],
                "best_loss": result.metrics["best_eval_loss"],
                "curve": [(h["step"], round(h["eval_loss"], 4)) for h in hist],
                "tokens": result.metrics["tokens"],
                "steps": result.metrics["steps"],
                "device": str(result.model.model.device),
                "samples": [
                    {"prompt": p, "before": b, "after": a}
                    for p, b, a in zip(prompts, before, after, strict=True)
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
