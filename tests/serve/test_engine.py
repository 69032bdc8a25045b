"""The engine: greedy outputs of concurrent mixed-length requests equal transformers `generate` run
one request at a time; limits, aborts and seeds."""

from __future__ import annotations

import pytest
import torch

from lmopt.errors import LmoptError
from lmopt.serve.config import EngineConfig
from lmopt.serve.engine import Engine, QueueFull, RequestRejected
from lmopt.serve.sampling import SamplingParams


def _config(**fields) -> EngineConfig:
    return EngineConfig(threads=1, **fields)  # one thread: the test machine's cores are shared


def _reference(model, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _prompts(lengths: list[int], vocab: int = 500, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("max_step_tokens,prefill_chunk", [(8, 5), (256, 256)])
def test_concurrent_greedy_equals_generate_one_at_a_time(tiny, max_step_tokens, prefill_chunk) -> None:
    # 3 slots for 7 requests: they queue, join as others leave, prefill in chunks beside decodes.
    config = _config(max_batch=3, max_step_tokens=max_step_tokens, prefill_chunk=prefill_chunk,
                          max_model_len=128, kv_cache_mb=8)
    engine = Engine(tiny, config)
    prompts = _prompts([3, 17, 9, 30, 1, 12, 40])
    lengths = [20, 5, 33, 12, 8, 25, 3]
    outs = engine.generate(prompts, [SamplingParams(max_tokens=n, temperature=0) for n in lengths])
    for prompt, n, out in zip(prompts, lengths, outs, strict=True):
        assert out.token_ids == _reference(tiny.model, prompt, n)
        assert out.finish_reason == "length" and out.prompt_tokens == len(prompt)
    assert engine.scheduler.slots.used == 0 and engine.num_unfinished() == 0


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_other_llama_family_layouts_match_generate(tiny, kind) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(kind, vocab_size=len(tiny.tokenizer), hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                  head_dim=16, max_position_embeddings=256, eos_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    engine = Engine((model, tiny.tokenizer), _config(max_batch=2, max_step_tokens=8, prefill_chunk=6,
                                                          max_model_len=96, kv_cache_mb=4))
    prompts = _prompts([5, 14, 8])
    outs = engine.generate(prompts, SamplingParams(max_tokens=10, temperature=0))
    assert [o.token_ids for o in outs] == [_reference(model, p, 10) for p in prompts]


def test_eos_and_stop_strings_end_a_request(tiny) -> None:
    engine = Engine(tiny, _config(max_batch=2, max_model_len=64, kv_cache_mb=4))
    prompt = tiny.tokenizer("def main(argv):\n    return", add_special_tokens=False)["input_ids"]
    # seeded sampling for varied text; the same seed replays the same tokens
    free = engine.generate([prompt], SamplingParams(max_tokens=24, seed=3, ignore_eos=True))[0]
    ids = free.token_ids
    k = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])  # a token not generated before
    engine.eos_ids = {ids[k]}  # pretend it is end-of-sequence
    cut = engine.generate([prompt], SamplingParams(max_tokens=24, seed=3))[0]
    assert cut.token_ids == ids[:k + 1] and cut.finish_reason == "stop"
    engine.eos_ids = set()
    stop = free.text[len(free.text) // 2:][:3]
    stopped = engine.generate([prompt], SamplingParams(max_tokens=24, seed=3, stop=[stop]))[0]
    assert stopped.finish_reason == "stop" and stopped.text == free.text[:free.text.index(stop)]
    assert free.finish_reason == "length"
    assert free.text == tiny.tokenizer.decode(ids, skip_special_tokens=True)


def test_seeded_sampling_does_not_depend_on_the_rest_of_the_batch(tiny) -> None:
    engine = Engine(tiny, _config(max_batch=4, max_model_len=64, kv_cache_mb=4))
    prompts = _prompts([5, 9, 3])
    sampled = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=42)
    alone = engine.generate([prompts[0]], sampled)[0]
    mixed = engine.generate(prompts, [sampled, SamplingParams(max_tokens=7, temperature=0.7),
                                      SamplingParams(max_tokens=12, temperature=0)])
    assert mixed[0].token_ids == alone.token_ids


def test_limits_queue_and_abort(tiny) -> None:
    engine = Engine(tiny, _config(max_batch=1, max_model_len=32, kv_cache_mb=1, max_queue=1))
    with pytest.raises(RequestRejected, match="context limit"):
        engine.add_request([1] * 30, SamplingParams(max_tokens=5), print)
    with pytest.raises(RequestRejected, match="empty"):
        engine.add_request([], SamplingParams(), print)
    with pytest.raises(ValueError, match="top_p"):
        engine.add_request([1], SamplingParams(top_p=0), print)
    seen: list = []
    first = engine.add_request([5, 6], SamplingParams(max_tokens=20, temperature=0), seen.append)
    engine.add_request([5, 6], SamplingParams(max_tokens=2, temperature=0), seen.append)  # the queued one
    with pytest.raises(QueueFull):
        engine.add_request([5, 6], SamplingParams(max_tokens=2), seen.append)
    engine.step()
    engine.abort(first)
    while engine.step():
        pass
    finals = [o for o in seen if o.finished]
    assert [o.finish_reason for o in finals] == ["abort", "length"]
    assert engine.scheduler.slots.used == 0 and engine.metrics.finished == {"abort": 1, "length": 1}


def test_memory_limit_sets_the_number_of_slots(tiny) -> None:
    # tiny: 2 layers x 2 KV heads x 16 dims x 2 (k, v) x 4 bytes = 512 bytes per token
    engine = Engine(tiny, _config(max_batch=32, max_model_len=1024, kv_cache_mb=2))
    assert engine.cache.num_slots == 4 and engine.cache.nbytes == 4 * 1024 * 512
    with pytest.raises(LmoptError, match="kv_cache_mb"):
        Engine(tiny, _config(max_model_len=2048, kv_cache_mb=0.5))


def test_unsupported_architecture_is_a_clear_error(tiny) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=600))
    with pytest.raises(LmoptError, match="gpt2"):
        Engine((model, tiny.tokenizer))


def test_quantized_model_runs_its_fast_kernels_and_matches_its_own_generate() -> None:
    from lmopt.compress.quantize import RTNConfig, prepare_runtime, quantize
    from lmopt.models import tiny_llama

    loaded = tiny_llama()
    loaded.model.to(torch.bfloat16)
    quantize(loaded.model, RTNConfig(bits=4, group_size=32))
    backends = prepare_runtime(loaded.model)
    engine = Engine(loaded, _config(max_batch=3, max_step_tokens=16, prefill_chunk=16, max_model_len=96,
                                    kv_cache_mb=4))
    prompts = _prompts([5, 12, 9])
    outs = engine.generate(prompts, SamplingParams(max_tokens=8, temperature=0))
    assert [o.token_ids for o in outs] == [_reference(loaded.model, p, 8) for p in prompts]
    # one request alone: every decode step is a single bf16 row (one-row norm, no mask, kernel direct)
    alone = engine.generate([prompts[1]], SamplingParams(max_tokens=12, temperature=0))[0]
    assert alone.token_ids == _reference(loaded.model, prompts[1], 12)
    dense = [m for m in loaded.model.modules() if type(m).__name__ == "QuantLinear" and m.cache_dense]
    assert len(dense) == backends.get("int4", 0) + backends.get("int8", 0)  # prompt chunks: dense copy
    q_proj, fused = loaded.model.model.layers[0].self_attn.q_proj, engine.runner.qkv[0].inner
    assert q_proj.dense_weight().untyped_storage().data_ptr() == fused.dense_weight().untyped_storage().data_ptr()


@pytest.mark.parametrize("quantized", [False, True])
def test_fused_projections_equal_the_separate_linears(quantized) -> None:
    from lmopt.compress.quantize import RTNConfig, prepare_runtime, quantize
    from lmopt.models import tiny_llama
    from lmopt.serve.runner import ModelRunner

    model = tiny_llama(hidden_size=64, intermediate_size=96).model.to(torch.bfloat16)
    if quantized:
        quantize(model, RTNConfig(bits=4, group_size=32))
        prepare_runtime(model)
    runner = ModelRunner(model)
    assert all(f is not None for f in runner.qkv + runner.gate_up)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    with torch.inference_mode():
        for fused, linears in [(runner.qkv[1], [attn.q_proj, attn.k_proj, attn.v_proj]),
                               (runner.gate_up[1], [mlp.gate_proj, mlp.up_proj])]:
            for got, linear in zip(fused(x), linears, strict=True):
                torch.testing.assert_close(got, linear(x), rtol=1e-2, atol=1e-2)
    assert ModelRunner(model, fuse=False).qkv == [None, None]
