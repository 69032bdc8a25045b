"""Choosing the next token for every row of a batch, each row with its own sampling settings.

Pure tensor math plus the per-request settings. The order of the transforms is the one
transformers' `generate` uses (temperature, then top-k, then top-p), and tests check the filters
against transformers' logits warpers. A request with a seed owns a `torch.Generator`, so its
samples do not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    """What one request asks for; greedy when temperature is 0."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    """Keep the k most likely tokens (0 or -1: off)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches top_p (1: off)."""
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends before the first occurrence, which is not returned."""
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    """Keep going past end-of-sequence tokens (load tests with fixed output lengths)."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_k == 1

    def validate(self) -> None:
        """ValueError naming the bad field (the API turns it into a 400)."""
        checks = [(self.max_tokens >= 1, "max_tokens must be at least 1"),
                  (self.temperature >= 0, "temperature must be >= 0"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (self.top_k >= -1, "top_k must be -1, 0 (off) or a positive count")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def make_generator(self) -> torch.Generator | None:
        if self.greedy:
            return None
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()  # a fresh random seed
        else:
            gen.manual_seed(self.seed)
        return gen


def filter_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """logits (B, V), top_k (B,) with 0 = off -> logits with all but each row's k best set to -inf."""
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """logits (B, V), top_p (B,) -> keep the smallest prefix of sorted tokens whose mass reaches top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = mass_before >= top_p[:, None]
    drop_sorted[:, 0] = False  # always keep the best token
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> list[int]:
    """logits (B, V) float32 -> one token id per row, following each row's params."""
    tokens = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        index = torch.tensor(rows)
        sub = logits.index_select(0, index)
        temp = torch.tensor([params[i].temperature for i in rows], dtype=sub.dtype)
        sub = sub / temp[:, None]
        if any(params[i].top_k > 0 for i in rows):
            sub = filter_top_k(sub, torch.tensor([max(params[i].top_k, 0) for i in rows]))
        if any(params[i].top_p < 1 for i in rows):
            sub = filter_top_p(sub, torch.tensor([params[i].top_p for i in rows], dtype=sub.dtype))
        cdf = sub.softmax(dim=-1).cumsum(dim=-1)  # (R, V)
        # One uniform draw per row from that request's own generator, then inverse-CDF sampling.
        u = torch.cat([torch.rand(1, generator=generators[i]) for i in rows]).clamp(min=1e-9) * cdf[:, -1]
        picked = torch.searchsorted(cdf, u[:, None]).clamp(max=logits.shape[-1] - 1)[:, 0]
        tokens[index] = picked
    return tokens.tolist()
