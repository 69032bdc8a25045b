"""Load generator for any OpenAI-compatible server (lmopt, vLLM): `lmopt bench-serve URL`.

Requests of mixed prompt and output lengths arrive as a Poisson process (exponential gaps at
`rate` requests/s; all at once when rate is unset), at most `concurrency` in flight. Each is a
streaming /v1/completions call with `ignore_eos` so it produces exactly its output length. Reported:
output tokens/s over the whole run, request/s, time to first token and end-to-end latency (p50, p99),
time per output token (p50).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from lmopt.configs import Config
from lmopt.data.text import pydoc_text
from lmopt.errors import LmoptError


class LoadConfig(Config):
    """One load test."""

    url: str
    """Server base URL, e.g. http://127.0.0.1:8000 (with or without /v1)."""
    concurrency: int = Field(default=8, ge=1)
    requests: int = Field(default=64, ge=1)
    prompt_len: tuple[int, int] = (32, 256)
    """Prompt tokens, drawn uniformly from [lo, hi] (approximate for text prompts)."""
    output_len: tuple[int, int] = (32, 128)
    """Output tokens, drawn uniformly from [lo, hi]."""
    rate: float | None = Field(default=None, gt=0)
    """Mean arrivals per second (Poisson); None = all requests arrive at once."""
    seed: int = 0
    api_key: str | None = None
    model: str | None = None
    """Model id to request (default: the first one /v1/models lists)."""
    timeout_s: float = Field(default=600.0, gt=0)

    @field_validator("prompt_len", "output_len", mode="before")
    @classmethod
    def _range(cls, value: Any) -> Any:
        """Accept 64, "64", "32:256" or [32, 256]."""
        if isinstance(value, int):
            return (value, value)
        if isinstance(value, str):
            lo, _, hi = value.partition(":")
            return (int(lo), int(hi or lo))
        return value


@dataclass
class Job:
    """One request of the workload: a prompt (text or token ids) and its output length."""

    prompt: str | list[int]
    max_tokens: int
    arrival_s: float


def make_workload(config: LoadConfig, tokenizer: Any = None) -> list[Job]:
    """Prompts cut from Python's docs; exact token counts when a tokenizer is given."""
    rng = random.Random(config.seed)
    arrivals = random.Random(config.seed + 1)  # its own stream: the prompts do not depend on the rate
    words = pydoc_text("eval").split()
    ids = tokenizer(" ".join(words[:20000]), add_special_tokens=False)["input_ids"] if tokenizer else None
    jobs, clock = [], 0.0
    for _ in range(config.requests):
        n_prompt, n_out = rng.randint(*config.prompt_len), rng.randint(*config.output_len)
        if ids is not None:
            start = rng.randrange(0, len(ids) - n_prompt)
            prompt: str | list[int] = ids[start:start + n_prompt]
        else:  # about 0.75 words per token for English BPE vocabularies
            start = rng.randrange(0, len(words) - n_prompt)
            prompt = " ".join(words[start:start + max(1, int(n_prompt * 0.75))])
        jobs.append(Job(prompt, n_out, clock))
        if config.rate:
            clock += arrivals.expovariate(config.rate)
    return jobs


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated q-th percentile (q in 0..100), None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


async def _one(client: Any, url: str, model: str, job: Job) -> dict[str, Any]:
    body = {"model": model, "prompt": job.prompt, "max_tokens": job.max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens, error = None, 0, None
    async with client.stream("POST", f"{url}/completions", json=body) as resp:
        if resp.status_code != 200:
            return {"error": f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"}
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = event["error"].get("message")
            if event.get("choices") and event["choices"][0].get("text") and first is None:
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter() - start
    return {"ttft": first, "latency": end, "tokens": tokens, "error": error}


async def _model_id(client: Any, url: str) -> str:
    import httpx

    try:
        resp = await client.get(f"{url}/models")
    except httpx.HTTPError as exc:
        raise LmoptError(f"{url}: cannot reach the server ({type(exc).__name__})") from None
    if resp.status_code != 200:
        raise LmoptError(f"{url}/models: HTTP {resp.status_code}: {resp.text[:200]}")
    return resp.json()["data"][0]["id"]


async def _run(config: LoadConfig, jobs: list[Job]) -> dict[str, Any]:
    import httpx

    url = config.url.rstrip("/")
    url = url if url.endswith("/v1") else url + "/v1"
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    limits = httpx.Limits(max_connections=config.concurrency + 4)
    async with httpx.AsyncClient(headers=headers, timeout=config.timeout_s, limits=limits) as client:
        model = config.model or await _model_id(client, url)
        gate = asyncio.Semaphore(config.concurrency)
        start = time.perf_counter()

        async def run(job: Job) -> dict[str, Any]:
            await asyncio.sleep(max(0.0, job.arrival_s - (time.perf_counter() - start)))
            async with gate:
                try:
                    return await _one(client, url, model, job)
                except Exception as exc:  # report, never crash the load test
                    return {"error": f"{type(exc).__name__}: {exc}"}

        results = await asyncio.gather(*(run(j) for j in jobs))
        wall = time.perf_counter() - start
    return summarize(results, wall, config)


def summarize(results: list[dict[str, Any]], wall_s: float, config: LoadConfig) -> dict[str, Any]:
    ok = [r for r in results if not r.get("error")]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    lat = [r["latency"] for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    tpot = [(r["latency"] - r["ttft"]) / (r["tokens"] - 1) for r in ok if r["ttft"] and r["tokens"] > 1]

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 1)

    return {"concurrency": config.concurrency, "requests": len(results), "errors": len(results) - len(ok),
            "first_error": next((r["error"] for r in results if r.get("error")), None),
            "duration_s": round(wall_s, 2), "output_tokens": tokens,
            "output_tokens_per_s": round(tokens / wall_s, 2), "requests_per_s": round(len(ok) / wall_s, 3),
            "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
            "latency_p50_ms": ms(percentile(lat, 50)), "latency_p99_ms": ms(percentile(lat, 99)),
            "tpot_p50_ms": ms(percentile(tpot, 50)), "rate": config.rate}


def run_load(config: LoadConfig, tokenizer: Any = None, jobs: list[Job] | None = None) -> dict[str, Any]:
    """Run the load test (blocking) and return the summary dict."""
    return asyncio.run(_run(config, jobs if jobs is not None else make_workload(config, tokenizer)))


def generate_baseline(model: Any, tokenizer: Any, jobs: list[Job]) -> dict[str, Any]:
    """The same workload served one request at a time with transformers `generate` (greedy, fixed lengths)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ttft, latency, tokens = [], [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for job in jobs:
            ids = job.prompt if isinstance(job.prompt, list) else tokenizer(job.prompt)["input_ids"]
            ids_t = torch.tensor([ids])
            begin = time.perf_counter()
            out = model.generate(ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=job.max_tokens,
                                 min_new_tokens=job.max_tokens, do_sample=False, pad_token_id=pad)
            latency.append(time.perf_counter() - begin)
            tokens += out.shape[1] - len(ids)
    wall = time.perf_counter() - start
    # One at a time, request i waits for all before it: its TTFT is at least their total latency.
    waits = [sum(latency[:i]) for i in range(len(latency))]
    ttft = [w + lat / max(1, j.max_tokens) for w, lat, j in zip(waits, latency, jobs, strict=True)]
    return {"engine": "generate one at a time", "requests": len(jobs), "duration_s": round(wall, 2),
            "output_tokens": tokens, "output_tokens_per_s": round(tokens / wall, 2),
            "latency_p50_ms": round(percentile(latency, 50) * 1000, 1),
            "latency_p99_ms": round(percentile(latency, 99) * 1000, 1),
            "ttft_p99_ms_if_queued": round(percentile(ttft, 99) * 1000, 1)}
