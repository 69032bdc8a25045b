"""The engine on the real embedded SmolLM2-135M: concurrent greedy requests equal `generate`."""

from __future__ import annotations

import pytest
import torch

from lmopt.native import library
from lmopt.serve.config import EngineConfig
from lmopt.serve.engine import Engine
from lmopt.serve.sampling import SamplingParams


@pytest.mark.integration
def test_embedded_model_concurrent_greedy_equals_generate(embedded) -> None:
    tok = embedded.tokenizer
    chats = [[{"role": "user", "content": q}] for q in ("What is the capital of France?", "Say hi.",
                                                        "Write a Python function that adds two numbers.")]
    prompts = [tok(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"] for c in chats]
    lengths = [12, 6, 16]
    # 3 requests, 2 slots, 16-token prefill chunks beside decodes; one thread (the cores are shared)
    config = EngineConfig(max_batch=2, max_model_len=256, kv_cache_mb=64, max_step_tokens=24,
                          prefill_chunk=16, threads=1)
    engine = Engine(embedded, config)
    outs = engine.generate(prompts, [SamplingParams(max_tokens=n, temperature=0) for n in lengths])
    for prompt, n, out in zip(prompts, lengths, outs, strict=True):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            ref = embedded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                          do_sample=False, pad_token_id=tok.pad_token_id)[0, len(prompt):]
        assert out.token_ids == ref.tolist()
    assert "Paris" in outs[0].text


@pytest.mark.integration
def test_embedded_model_batch1_decode_in_c_equals_generate(embedded) -> None:
    """One request at a time: every decode step runs the C attention and row ops (native_ops.py)
    where the library is built; greedy tokens still equal `generate`'s."""
    tok = embedded.tokenizer
    engine = Engine(embedded, EngineConfig(max_batch=1, max_model_len=256, kv_cache_mb=32, threads=1))
    if library() is not None and embedded.model.dtype == torch.bfloat16:
        assert engine.runner.rope_attend is not None and engine.runner.row_ops is not None
    prompts = [tok(text, add_special_tokens=False)["input_ids"]
               for text in ("The Python standard library is", "Photosynthesis converts")]
    outs = engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0))
    for prompt, out in zip(prompts, outs, strict=True):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            ref = embedded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                          do_sample=False, pad_token_id=tok.pad_token_id)[0, len(prompt):]
        assert out.token_ids == ref.tolist()
