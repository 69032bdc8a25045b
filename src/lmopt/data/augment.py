"""`augment(data, AugmentConfig(...))`: more rows for small datasets, each new row tied to its source.

Rule-based edits follow EDA (Wei & Zou 2019): random swap of two words, random deletion of each
word with probability alpha, random insertion. EDA inserts WordNet synonyms; with no thesaurus
packaged, insertion here repeats a random non-stop word of the same text at a random place (a
deliberate, documented deviation). Paraphrases come from a model lmopt loads (chat template when
the tokenizer has one), sampled at `temperature`.

Every original row is kept (marked `augmentation: "original"`); each new row carries `augmentation`
(the method) and `source_line` (the original's line). A new row whose shingle Jaccard similarity
to its source or an earlier sibling reaches `dedup_threshold`, or that is empty, is dropped.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmopt.data.clean import as_records
from lmopt.data.config import AugmentConfig
from lmopt.data.filters import STOP_WORDS
from lmopt.data.load import INSTRUCTION_FIELDS, Record
from lmopt.data.normalize import canonical_words, ngrams
from lmopt.data.write import JsonlWriter
from lmopt.errors import LmoptError
from lmopt.models import load_model
from lmopt.progress import progress_bar

_TOKENS = re.compile(r"[^\S\n]*(\S+|\n)")


def _split(text: str) -> list[str]:
    return _TOKENS.findall(text)  # words and "\n" tokens; newlines are never moved or deleted


def _join(tokens: list[str]) -> str:
    return " ".join(tokens).replace(" \n ", "\n").replace("\n ", "\n").replace(" \n", "\n").strip()


def _word_positions(tokens: list[str]) -> list[int]:
    return [i for i, t in enumerate(tokens) if t != "\n"]


def random_swap(text: str, alpha: float, rng: random.Random) -> str:
    """Swap two random words, max(1, alpha * words) times."""
    tokens = _split(text)
    pos = _word_positions(tokens)
    if len(pos) < 2:
        return text
    for _ in range(max(1, int(alpha * len(pos)))):
        i, j = rng.sample(pos, 2)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return _join(tokens)


def random_delete(text: str, alpha: float, rng: random.Random) -> str:
    """Delete each word with probability alpha (one word always stays)."""
    tokens = _split(text)
    pos = _word_positions(tokens)
    if len(pos) < 2:
        return text
    drop = {i for i in pos if rng.random() < alpha}
    if len(drop) == len(pos):
        drop.discard(rng.choice(pos))
    return _join([t for i, t in enumerate(tokens) if i not in drop])


def random_insert(text: str, alpha: float, rng: random.Random) -> str:
    """Insert a random non-stop word of the text at a random place, max(1, alpha * words) times."""
    tokens = _split(text)
    pool = [t for t in tokens if t != "\n" and t.lower().strip(".,;:!?") not in STOP_WORDS]
    if not pool:
        return text
    for _ in range(max(1, int(alpha * len(pool)))):
        tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(pool).strip(".,;:!?"))
    return _join(tokens)


EDA: dict[str, Callable[[str, float, random.Random], str]] = {
    "swap": random_swap, "delete": random_delete, "insert": random_insert}


def _shingles(text: str) -> set[str]:
    return set(ngrams(canonical_words(text), 2))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def model_paraphraser(ref: str, cfg: AugmentConfig) -> Callable[[str, int], list[str]]:
    """`paraphrase(text, n) -> n sampled paraphrases` by a model lmopt loads."""
    import torch  # lazy: only model paraphrasing needs torch (~1 s); the rule-based kinds run without

    loaded = load_model(ref, dtype="float32")
    model, tok = loaded.model.eval(), loaded.tokenizer
    torch.manual_seed(cfg.seed)

    @torch.no_grad()
    def paraphrase(text: str, n: int) -> list[str]:
        prompt = cfg.prompt.format(text=text)
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tok(prompt, return_tensors="pt")
        out = model.generate(**ids, do_sample=True, temperature=cfg.temperature,
                             max_new_tokens=cfg.max_new_tokens, num_return_sequences=n,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)  # (n, prompt + new)
        texts = [tok.decode(seq[ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() for seq in out]
        return [_strip_preamble(t) for t in texts]

    return paraphrase


def _strip_preamble(text: str) -> str:
    """Drop a chat model's lead-in line ("Sure, here's a paraphrase:") before the paraphrase itself."""
    first, _, rest = text.partition("\n")
    if rest.strip() and first.rstrip().endswith(":") and len(first) < 120:
        return rest.strip()
    return text


@dataclass
class AugmentResult:
    rows_in: int = 0
    rows_out: int = 0
    made: dict[str, int] = field(default_factory=dict)
    """New rows kept, per method."""
    dropped: dict[str, int] = field(default_factory=dict)
    """New rows dropped as (near) copies of their source or a sibling, or empty, per method."""
    bad_rows: dict[str, Any] = field(default_factory=dict)
    """Input rows skipped (no text, invalid JSON...) per reason with their line numbers."""
    rows: list[dict[str, Any]] | None = None
    output: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "made": self.made,
                "dropped": self.dropped, "bad_rows": self.bad_rows}


def _target_field(rec: Record, cfg: AugmentConfig) -> str:
    if isinstance(cfg.text_field, str):
        return cfg.text_field
    if rec.fields == INSTRUCTION_FIELDS:
        return "instruction"  # rewording the answer would change what is learned
    return rec.fields[0]


def augment_record(rec: Record, cfg: AugmentConfig, rng: random.Random, paraphrase: Any,
                   result: AugmentResult) -> list[dict[str, Any]]:
    """The original row and its kept augmentations."""
    name = _target_field(rec, cfg)
    source = str(rec.row.get(name, ""))
    seen = [_shingles(source)]
    rows = [{**rec.row, "augmentation": "original"}]
    for method in cfg.methods:
        texts = paraphrase(source, cfg.per_row) if method == "paraphrase" else \
            [EDA[method](source, cfg.alpha, rng) for _ in range(cfg.per_row)]
        for text in texts:
            sh = _shingles(text)
            if not text.strip() or any(jaccard(sh, s) >= cfg.dedup_threshold for s in seen):
                result.dropped[method] = result.dropped.get(method, 0) + 1
                continue
            seen.append(sh)
            result.made[method] = result.made.get(method, 0) + 1
            rows.append({**rec.row, name: text, "augmentation": method, "source_line": rec.line})
    return rows


def augment(data: str | Path | Iterable[Any], config: AugmentConfig | None = None, *,
            output: str | Path | None = None, model: str | None = None) -> AugmentResult:
    """Augment `data` (a path or an iterable of records/dicts/strings); see the module docstring."""
    cfg = config or AugmentConfig()
    ref = model or cfg.model
    if "paraphrase" in cfg.methods and not ref:
        raise LmoptError("augment: method 'paraphrase' needs a model (AugmentConfig.model or --model)")
    paraphrase = model_paraphraser(ref, cfg) if "paraphrase" in cfg.methods else None
    rng = random.Random(cfg.seed)
    result = AugmentResult(rows=[] if output is None else None, output=Path(output) if output else None)
    writer = JsonlWriter(output) if output else None
    records = as_records(data, cfg.text_field)
    with (writer or _NoWriter()) as sink, progress_bar("augment", None) as advance:
        for rec in records:
            result.rows_in += 1
            for row in augment_record(rec, cfg, rng, paraphrase, result):
                result.rows_out += 1
                result.rows.append(row) if result.rows is not None else sink.write(row)
            advance(1)
    result.bad_rows = records.bad.to_dict()
    return result


class _NoWriter:
    def __enter__(self) -> _NoWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None
