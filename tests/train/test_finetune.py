"""finetune on a tiny model: learning, exact resume after a kill, best weights, early stop, callbacks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from lmopt.train import TrainConfig, finetune


def _docs():
    from lmopt.data.text import pydoc_text

    return [d for d in pydoc_text("train")[:16_000].split("\n\n") if d.strip()]


def _fresh(**kwargs):
    from lmopt.models import tiny_llama

    return tiny_llama(**kwargs)


RESUME_CONFIGS = {
    "full": dict(
        method="full",
        seq_len=32,
        batch_size=2,
        grad_accum=2,
        max_steps=8,
        lr=3e-3,
        dropout=0.1,
        weight_decay=0.1,
        warmup_steps=2,
        eval_every=1,
        save_every=2,
        max_val_batches=2,
        log_every=1,
    ),
    "lora": dict(
        method="lora",
        seq_len=32,
        batch_size=2,
        max_steps=8,
        lr=1e-2,
        lora_dropout=0.2,
        epochs=3,
        eval_every=1,
        save_every=2,
        max_val_batches=2,
        merge_lora=True,
    ),
}

KILL_SCRIPT = """
import os, sys
os.environ["LMOPT_QUIET"] = "1"
from lmopt.models import tiny_llama
from lmopt.train import TrainConfig, finetune
from tests.train.test_finetune import RESUME_CONFIGS, _docs

def kill(step, metrics):
    if step == 5:
        os._exit(9)  # no cleanup, no finally: as abrupt as SIGKILL

config = TrainConfig(**RESUME_CONFIGS[sys.argv[1]])
finetune(tiny_llama(), _docs(), config, callbacks=kill, run_dir=sys.argv[2])
"""


@pytest.mark.parametrize("method", ["full", "lora"])
def test_killed_run_resumes_to_identical_weights(tmp_path, method):
    """Killed at step 5 (last checkpoint at 4, a half-written one at 6), resumed: bitwise equal to a run
    that never stopped. Exact because data order, RNG streams, optimizer and scheduler state are all
    restored; CPU kernels are deterministic for the same inputs."""
    config = TrainConfig(**RESUME_CONFIGS[method])
    reference = finetune(_fresh(), _docs(), config, run_dir=tmp_path / "ref")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), method, str(run_dir)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(_repo())},
    )
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert sorted(p.name for p in run_dir.glob("ckpt-*")) == ["ckpt-0000004"]
    (run_dir / "ckpt-0000006.tmp").mkdir()  # as if killed while writing the next checkpoint
    (run_dir / "ckpt-0000006.tmp" / "junk").write_text("partial")
    resumed = finetune(_fresh(), _docs(), config, run_dir=run_dir)
    assert resumed.metrics["steps"] == reference.metrics["steps"] == 8
    assert [h["eval_loss"] for h in resumed.history] == [h["eval_loss"] for h in reference.history]
    assert resumed.metrics["best_step"] == reference.metrics["best_step"]
    ref_state, res_state = reference.model.model.state_dict(), resumed.model.model.state_dict()
    assert ref_state.keys() == res_state.keys()
    for name in ref_state:
        assert torch.equal(ref_state[name], res_state[name]), name


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def test_training_lowers_validation_loss_and_reports(tiny):
    import copy

    from lmopt.models import LoadedModel

    model = LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "tiny")
    seen = []
    result = finetune(
        model,
        _docs(),
        TrainConfig(
            seq_len=64, batch_size=4, max_steps=30, lr=3e-3, eval_every=10, eval_before=True, warmup_steps=3
        ),
        callbacks=lambda step, m: seen.append((step, m["eval_loss"])),
    )
    assert [s for s, _ in seen] == [0, 10, 20, 30]
    assert seen[-1][1] < seen[0][1] - 0.3
    m = result.metrics
    # every micro-batch is full-length packed blocks; an epoch's last batch may be short
    assert m["kind"] == "text" and m["steps"] == 30 and m["tokens"] % 64 == 0
    assert 30 * 64 <= m["tokens"] <= 30 * 4 * 64
    assert m["tokens_per_s"] > 0 and m["peak_memory_mb"] > 0 and result.stopped == "max_steps"
    assert result.model.card.step == "finetune" and result.model.card.parent == "tiny"


def test_best_weights_are_returned(tiny):
    """With a far too high learning rate (1.0) the loss is worst late (lr 0.05 kept improving to the last
    step, so it never tested this): the returned model is the best step's, not the last one."""
    import copy

    from lmopt.models import LoadedModel
    from lmopt.train.examples import collate
    from lmopt.train.finetune import prepare_data
    from lmopt.train.losses import ce_sum

    model = LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "tiny")
    config = TrainConfig(
        seq_len=32,
        batch_size=4,
        max_steps=12,
        lr=1.0,
        scheduler="constant",
        eval_every=1,
        max_grad_norm=None,
    )
    result = finetune(model, _docs(), config)
    losses = [h["eval_loss"] for h in result.history]
    assert result.metrics["best_eval_loss"] == min(losses)
    best = [h["step"] for h in result.history if h["eval_loss"] == min(losses)]
    assert result.metrics["best_step"] == best[0] < 12  # the premise: the last step is not the best
    val = prepare_data(_docs(), tiny.tokenizer, config).val
    batch = collate(val, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        nll, count = ce_sum(
            result.model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            batch["labels"],
        )
    assert nll / count == pytest.approx(min(losses), rel=1e-5)


def test_early_stopping_and_callback_stop(tiny):
    import copy

    from lmopt.models import LoadedModel

    model = LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "tiny")
    stop = finetune(
        model,
        _docs(),
        TrainConfig(
            seq_len=32,
            max_steps=50,
            lr=1e-9,
            eval_every=1,
            early_stopping_patience=2,
            early_stopping_min_delta=0.1,
        ),
    )
    assert stop.stopped == "early_stopping" and stop.metrics["steps"] == 3

    class Pruner:
        def __init__(self):
            self.logs = []

        def on_eval(self, step, metrics):
            return step >= 2

        def on_log(self, step, metrics):
            self.logs.append(metrics)

    pruner = Pruner()
    result = finetune(
        model, _docs(), TrainConfig(seq_len=32, max_steps=50, eval_every=1, log_every=1), callbacks=[pruner]
    )
    assert result.stopped == "callback" and result.metrics["steps"] == 2
    assert len(pruner.logs) == 2 and {"loss", "lr", "tokens_per_s"} <= pruner.logs[0].keys()


def test_chat_lora_trains_only_on_responses(tiny):
    import copy

    from lmopt.models import LoadedModel

    rows = [{"instruction": f"Repeat {i}", "input": "", "output": f"{i} {i} {i}"} for i in range(30)]
    model = LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "tiny")
    result = finetune(
        model,
        rows,
        TrainConfig(method="lora", seq_len=64, max_steps=4, lr=1e-2, eval_every=2, val_fraction=0.1),
    )
    m = result.metrics
    assert m["kind"] == "chat" and m["train_records"] == 27 and m["val_records"] == 3
    # default LoRA: r=8 on every projection; r x (in + out) per Linear of the base model
    expected = sum(8 * (mod.in_features + mod.out_features) for name, mod in tiny.model.named_modules()
                   if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1].endswith("_proj"))
    assert expected == 2 * 8 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))  # 2 layers, by hand
    assert m["trainable_parameters"] == expected
    assert not hasattr(result.model.model, "peft_config")  # merged: a plain model again


def test_resume_refuses_a_different_config(tmp_path, tiny):
    import copy

    from lmopt.errors import LmoptError
    from lmopt.models import LoadedModel

    model = LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "tiny")
    finetune(model, _docs(), TrainConfig(seq_len=32, max_steps=2, save_every=1), run_dir=tmp_path)
    with pytest.raises(LmoptError, match="different training config"):
        finetune(model, _docs(), TrainConfig(seq_len=32, max_steps=2, save_every=1, lr=1.0), run_dir=tmp_path)
