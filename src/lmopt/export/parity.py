"""The parity check every export runs: the exported model, read back by an independent reader, against
the source model on a fixed text.

Both models score the same token windows: the source tokenizer's ids of the text, cut into windows
of `seq_len` tokens (the last one possibly shorter), each scored from a fresh context. Reported: each
model's perplexity, the relative change, the share of positions where both predict the same next
token (top-1 agreement), the largest logit difference, and whether the reader's tokenizer gives the
same ids. Goals by weight type (issue 16): f32/f16/bf16 and code-for-code exports within 0.1%
perplexity and >= 99.5% top-1 agreement; q8_0 within 0.5%; a float model re-quantized to 4 bits has
no goal (reported only)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmopt.errors import LmoptError
from lmopt.export.config import ParityConfig

PARITY_TEXT = (
    "The river town woke slowly on market mornings. Before the sun cleared the hills, the baker had "
    "already pulled the first loaves from the oven, and the smell of warm bread drifted down the narrow "
    "street toward the water. Fishermen checked their nets by lantern light, trading quiet jokes about "
    "the weather and the price of rope. By the time the church bell rang, the square was full of carts: "
    "apples from the northern orchards, cheese wrapped in cloth, bundles of dried herbs, and baskets "
    "woven from reeds that grew along the bank. Children ran between the stalls, pretending not to hear "
    "their parents calling them back. An old woman sold honey from a wooden table she had carried there "
    "every week for most of her life, and she knew the name of nearly everyone who stopped to taste it. "
    "Travelers who arrived by boat often remarked that the town seemed unchanged by the passing years, "
    "though the people who lived there would have told a different story. The mill had closed when the "
    "new road was built, the school had added a second floor, and the bridge had been rebuilt after a "
    "flood that nobody liked to talk about. Still, the rhythm of the market held everything together. "
    "Neighbors who had argued during the week would stand side by side choosing pears, and news moved "
    "from one end of the square to the other faster than any letter could travel. In the afternoon, "
    "when the crowds thinned, the merchants packed what remained and shared a meal under the plane trees. "
    "They spoke about harvests and weddings, about the young doctor who had just opened a practice near "
    "the station, and about whether the winter would be as hard as the last one. Then the carts rolled "
    "away, the swallows returned to the rooftops, and the river carried the evening light out toward the sea."
)

PROMPTS = [
    "The capital of France is", "Once upon a time, in a small village,", "To make a cup of tea, first",
    "The three primary colors are", "Water boils when", "A good way to learn a new language is",
    "The largest planet in our solar system is", "In the morning, the cat", "def add(a, b):\n   ",
    "The most important rule of cooking is", "My favourite season is autumn because",
    "The train left the station and", "Photosynthesis is the process by which",
    "Here is a short poem about the sea:\n", "The difference between weather and climate is",
    "She opened the old wooden box and found", "Exercise is good for your health because",
    "The recipe calls for flour, sugar and", "A computer program is", "The museum was closed, so we",
]
"""Fixed prompts of the greedy-generation check (the goal compares 20; `parity.prompts` picks how many)."""

GOALS = {"f32": (0.001, 0.995), "f16": (0.001, 0.995), "bf16": (0.001, 0.995), "exact": (0.001, 0.99),
         "q8_0": (0.005, None)}
"""Goal per kind of export: (max relative perplexity change, min top-1 agreement or None). A code-for-code
("exact") export equals lmopt's weights up to the fp16 rounding of q4_1's offset, which flips a near-tie
now and then: 2 of 255 tokens on the embedded model in one run, 0 in another, at a perplexity change of
-0.007%, so its agreement goal is 99% rather than 99.5%."""

Logits = Callable[[torch.Tensor], torch.Tensor]
"""(1, seq) token ids -> (1, seq, vocab) logits."""


def parity_text(config: ParityConfig, base_dir: Path | None = None) -> str:
    if config.text_file is None:
        return PARITY_TEXT
    path = Path(config.text_file).expanduser()
    path = path if path.is_absolute() or base_dir is None else base_dir / path
    if not path.is_file():
        raise LmoptError(f"parity.text_file: {path}: file not found")
    return path.read_text(encoding="utf-8")


def parity_windows(tokenizer: Any, text: str, config: ParityConfig) -> list[torch.Tensor]:
    """The text's first `max_tokens` token ids in windows of `seq_len` (the last may be shorter)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: config.max_tokens]
    if len(ids) < 8:
        raise LmoptError("parity: the text has fewer than 8 tokens")
    windows = [torch.tensor(ids[i:i + config.seq_len], dtype=torch.long) for i in range(0, len(ids), config.seq_len)]
    return windows if len(windows) == 1 or len(windows[-1]) >= 8 else windows[:-1]


def compare(source: Logits, exported: Logits, windows: list[torch.Tensor]) -> dict[str, Any]:
    """Perplexities, top-1 agreement and max logit difference of two models on the same windows."""
    nll_src = nll_exp = 0.0
    agree = count = 0
    max_diff = 0.0
    for window in windows:
        ids = window.unsqueeze(0)
        with torch.inference_mode():
            a, b = source(ids).float()[0, :-1], exported(ids).float()[0, :-1]  # (seq-1, vocab)
        targets = ids[0, 1:]
        nll_src += float(-torch.log_softmax(a, -1).gather(-1, targets[:, None]).double().sum())
        nll_exp += float(-torch.log_softmax(b, -1).gather(-1, targets[:, None]).double().sum())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        count += targets.numel()
        max_diff = max(max_diff, float((a - b).abs().max()))
    ppl_src, ppl_exp = math.exp(nll_src / count), math.exp(nll_exp / count)
    return {"perplexity_source": round(ppl_src, 4), "perplexity_export": round(ppl_exp, 4),
            "perplexity_change": round(ppl_exp / ppl_src - 1, 6), "top1_agreement": round(agree / count, 5),
            "max_logit_diff": round(max_diff, 5), "tokens": count}


def judge(figures: dict[str, Any], kind: str) -> dict[str, Any]:
    """Add the goal for this kind of export and whether it was met (None = no goal)."""
    goal = GOALS.get(kind)
    if goal is None:
        return {**figures, "goal": None, "passed": None}
    max_change, min_agree = goal
    passed = abs(figures["perplexity_change"]) <= max_change and (
        min_agree is None or figures["top1_agreement"] >= min_agree)
    return {**figures, "goal": {"max_perplexity_change": max_change, "min_top1_agreement": min_agree},
            "passed": passed}


def torch_logits(model: Any) -> Logits:
    def run(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids.to(model.device), use_cache=False).logits
    return run


def tokenizer_agreement(source: Any, reader: Any, text: str) -> float:
    """Share of the text's token ids that the reader's tokenizer reproduces, position by position."""
    a = source(text, add_special_tokens=False)["input_ids"]
    b = reader(text, add_special_tokens=False)["input_ids"]
    same = sum(x == y for x, y in zip(a, b, strict=False))
    return round(same / max(len(a), len(b)), 5)
