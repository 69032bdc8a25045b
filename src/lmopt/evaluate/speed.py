"""Speed and memory of a model on this machine: prefill, decode at batch 1 and 8, TTFT, RSS, size.

- prefill tokens/s: one forward pass over a (1, prefill_len) prompt, median of `repeats`.
- decode tokens/s at batch b: greedy `generate` of N and of 1 new tokens, decode = b*(N-1) / (t_N - t_1),
  so prompt processing is not counted as decoding.
- time to first token: the batch-1 generate of 1 new token (prompt processing + one step).
- peak RSS: the process's high-water mark (includes everything loaded so far).
- quantized models (`QuantLinear` layers), with `dense_copies`: prefill again with a de-quantized bf16
  copy of each weight kept for prompt-sized inputs, as the serving engine keeps them
  (`prefill_tokens_per_s_dense_copies`, and the copies' `dense_copies_mb`), measured after the peak
  RSS above and freed afterwards. As loaded, the dense paths de-quantize on every call: a 4-bit model
  keeps its small memory and prefills slower than the bf16 model (BENCHMARKS.md).

torch is imported inside the functions: `lmopt.evaluate` is imported at CLI start-up (its config
module sits in this package), and importing torch takes about a second.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmopt.data.text import pydoc_text
from lmopt.hardware import decode_roofline, peak_rss_mb, weight_bytes_per_token
from lmopt.io import size_on_disk_mb


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _prompt(tokenizer: Any, batch: int, length: int) -> Any:
    import torch  # lazy: start-up cost (module docstring)

    ids = tokenizer(pydoc_text("eval")[:20 * length], add_special_tokens=False)["input_ids"][:length]
    return torch.tensor([ids] * batch, dtype=torch.long)


def _generate(model: Any, prompt: Any, new_tokens: int, pad_id: int) -> Any:
    import torch  # lazy: start-up cost (module docstring)

    with torch.inference_mode():
        prompt = prompt.to(model.device)
        return model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=pad_id)


def benchmark_speed(
    model: Any,
    tokenizer: Any,
    *,
    prefill_len: int = 512,
    prompt_len: int = 32,
    new_tokens: int = 64,
    batch_sizes: tuple[int, ...] = (1, 8),
    repeats: int = 3,
    path: str | Path | None = None,
    bandwidth_gbs: float | None = None,
    dense_copies: bool = True,
) -> dict[str, Any]:
    """Measure the figures listed in the module docstring; returns a flat dict."""
    import torch  # lazy: start-up cost (module docstring)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prefill = _prompt(tokenizer, 1, prefill_len).to(model.device)
    with torch.inference_mode():
        model(input_ids=prefill)  # warm-up (allocations, kernel selection)
        t_prefill = _median_time(lambda: model(input_ids=prefill), repeats)
    result: dict[str, Any] = {"prefill_tokens_per_s": round(prefill.shape[1] / t_prefill, 2)}
    for batch in batch_sizes:
        prompt = _prompt(tokenizer, batch, prompt_len)
        _generate(model, prompt, 2, pad)  # warm-up
        t1 = _median_time(lambda p=prompt: _generate(model, p, 1, pad), repeats)
        tn = _median_time(lambda p=prompt: _generate(model, p, new_tokens, pad), repeats)
        result[f"decode_tokens_per_s_bs{batch}"] = round(batch * (new_tokens - 1) / max(tn - t1, 1e-9), 2)
        if batch == 1:
            result["time_to_first_token_s"] = round(t1, 4)
    n_params = sum(p.numel() for p in model.parameters())
    result.update({
        "parameters": n_params,
        "weight_bytes_per_token": weight_bytes_per_token(model),
        "size_on_disk_mb": size_on_disk_mb(path),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "prefill_len": prefill_len, "prompt_len": prompt_len, "new_tokens": new_tokens,
    })
    if dense_copies:
        result.update(_prefill_with_dense_copies(model, prefill, repeats))
    if bandwidth_gbs:
        roof = decode_roofline(model, bandwidth_gbs)
        result["bandwidth_gbs"] = round(bandwidth_gbs, 2)
        result["decode_roofline_tokens_per_s"] = round(roof, 2)
        result["roofline_fraction_bs1"] = round(result["decode_tokens_per_s_bs1"] / roof, 3)
    return result


def _prefill_with_dense_copies(model: Any, prefill: Any, repeats: int) -> dict[str, Any]:
    """Prefill rate with the quantized layers' dense copies kept, and their size; {} for a float model."""
    import torch  # lazy: start-up cost (module docstring)

    from lmopt.compress.quantize.runtime import dense_copy_mb, drop_dense_weights, keep_dense_weights

    if not keep_dense_weights(model):
        return {}
    try:
        with torch.inference_mode():
            model(input_ids=prefill)  # warm-up
            seconds = _median_time(lambda: model(input_ids=prefill), repeats)
        return {"prefill_tokens_per_s_dense_copies": round(prefill.shape[1] / seconds, 2),
                "dense_copies_mb": round(dense_copy_mb(model), 1)}
    finally:
        drop_dense_weights(model)
