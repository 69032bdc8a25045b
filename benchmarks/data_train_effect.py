"""Effect of cleaning on training: LoRA domain adaptation on a dirty vs a cleaned PubMedQA corpus.

Run: nice -n 10 .venv/bin/python benchmarks/data_train_effect.py [--abstracts 300 --steps 40]

The dirty corpus: the first `--abstracts` PubMedQA abstracts with planted problems (exact and near
copies, PII, pasted evaluation items from ARC/BoolQ/PIQA/LAMBADA, junk; `lmopt.data.planted`). The
clean corpus: `clean()` of it with every filter on. The embedded model is LoRA-trained on each for
the same number of steps (same settings as the training stage's domain-adaptation recipe, shorter),
then measured on two texts: the last 100 abstracts (held out from both corpora) and the pasted
evaluation items (what a contaminated model has seen). Prints a table and one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

TASKS = ["arc_easy", "boolq", "piqa", "lambada"]


def corpora(data_dir: Path, n: int, seed: int) -> tuple[list[str], list[str], str, str]:
    """(dirty texts, clean texts, held-out text, planted evaluation items text)."""
    from lmopt.data.clean import clean
    from lmopt.data.config import CleanConfig
    from lmopt.data.decontaminate import eval_texts
    from lmopt.data.load import open_records
    from lmopt.data.planted import plant

    rng = random.Random(seed)
    abstracts = [r.text for r in open_records(data_dir / "pubmedqa" / "pubmedqa_abstracts.txt")]
    items = [t for task in TASKS for t in rng.sample([x for x in eval_texts(task, data_dir)
                                                        if len(x.split()) >= 20], 10)]
    planted = plant(abstracts[:n], items, rng, exact=n // 6, near=n // 6, pii=n // 10,
                    contaminated=len(items), junk_docs=n // 20)
    dirty = [r["text"] for r in planted.rows]
    cfg = CleanConfig(workers=1, pii={"enabled": True}, decontaminate=TASKS)
    cleaned = [r["text"] for r in clean(dirty, cfg, data_dir=data_dir).rows]
    return dirty, cleaned, "\n\n".join(abstracts[-100:]), "\n\n".join(items)


def measure(model, tokenizer, held_out: str, items: str, limit: int) -> dict:
    from lmopt.evaluate import perplexity

    return {"held_out_ppl": round(perplexity(model, tokenizer, held_out, 256, limit)["perplexity"], 3),
            "eval_items_ppl": round(perplexity(model, tokenizer, items, 256, limit)["perplexity"], 3)}


def train(texts: list[str], steps: int, seed: int):
    from lmopt.models import load_model
    from lmopt.train.config import TrainConfig
    from lmopt.train.finetune import finetune

    cfg = TrainConfig(method="lora", lora_r=16, lora_alpha=32, lr=1e-3, warmup_steps=5, seq_len=256,
                      batch_size=4, max_steps=steps, val_fraction=0.0, mixed_precision="bf16", seed=seed)
    started = time.time()
    result = finetune(load_model("smollm2-135m-instruct", dtype="float32"), texts, cfg)
    return result.model, round(time.time() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--abstracts", type=int, default=300)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--limit", type=int, default=30, help="perplexity windows of 256 tokens per text")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from lmopt.hardware import apply_threads
    from lmopt.models import load_model

    apply_threads()
    dirty, cleaned, held_out, items = corpora(Path(args.data_dir), args.abstracts, args.seed)
    base = load_model("smollm2-135m-instruct", dtype="float32")
    results = {"base": measure(base.model, base.tokenizer, held_out, items, args.limit)}
    for name, texts in (("dirty", dirty), ("clean", cleaned)):
        trained, seconds = train(texts, args.steps, args.seed)
        results[name] = {"rows": len(texts), "train_s": seconds,
                         **measure(trained.model, trained.tokenizer, held_out, items, args.limit)}
    print(f"LoRA r16, {args.steps} steps x 4 x 256 tokens on each corpus; perplexity at 256-token windows")
    print(f"{'model':<8}{'rows':>6}{'held-out abstracts ppl':>24}{'planted eval items ppl':>24}")
    for name, r in results.items():
        print(f"{name:<8}{r.get('rows', '-'):>6}{r['held_out_ppl']:>24}{r['eval_items_ppl']:>24}")
    print(json.dumps({"steps": args.steps, "abstracts": args.abstracts, **results}))


if __name__ == "__main__":
    main()
