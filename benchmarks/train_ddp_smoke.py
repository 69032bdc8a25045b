"""Multi-process smoke check: the same `finetune`/`distill` code under torchrun (DDP, gloo on CPU).

    CUDA_VISIBLE_DEVICES= torchrun --nproc_per_node 2 benchmarks/train_ddp_smoke.py /tmp/ddp-run

Each rank trains on its shard of every batch; validation loss is reduced over ranks; rank 0 writes the
checkpoints. The script stops at step 4 (a callback), then resumes to step 8 from the checkpoint.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ.setdefault("LMOPT_QUIET", "1")
    from accelerate import PartialState

    from lmopt.data.text import pydoc_text
    from lmopt.models import tiny_llama
    from lmopt.train import DistillConfig, TrainConfig, distill, finetune, student_from_teacher

    run_dir = sys.argv[1]
    docs = [d for d in pydoc_text("train")[:30_000].split("\n\n") if d.strip()]
    config = TrainConfig(seq_len=32, batch_size=2, max_steps=8, save_every=2, eval_every=2, lr=3e-3)
    first = finetune(tiny_llama(), docs, config, run_dir=run_dir, callbacks=lambda step, m: step >= 4)
    resumed = finetune(tiny_llama(), docs, config, run_dir=run_dir)
    teacher = tiny_llama(num_layers=4)
    distilled = distill(teacher, student_from_teacher(teacher, 2), docs,
                        DistillConfig(seq_len=32, batch_size=2, max_steps=4, hidden_weight=0.5))
    state = PartialState()
    if state.is_main_process:
        print(json.dumps({"processes": state.num_processes, "backend": state.backend,
                          "first_stop": [first.stopped, first.metrics["steps"]],
                          "resumed": [resumed.stopped, resumed.metrics["steps"], resumed.metrics["tokens"]],
                          "eval_losses": [round(h["eval_loss"], 4) for h in resumed.history],
                          "distill_steps": distilled.metrics["steps"]}))


if __name__ == "__main__":
    main()
