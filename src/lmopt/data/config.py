"""Typed configs of the data stage: `clean(data, CleanConfig(...))`, `augment(data, AugmentConfig(...))`.

Only pydantic here, so the CLI and recipes can validate configs without importing the workers.
Defaults follow the published rules: quality thresholds from Gopher (Rae et al. 2021, table A1),
boilerplate lines from C4 (Raffel et al. 2020), 13-gram decontamination from GPT-3 (Brown et al. 2020).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmopt.configs import Config


class QualityConfig(Config):
    """Document-level quality rules; a document failing one is removed with that rule as its reason."""

    enabled: bool = True
    min_words: int = Field(default=50, ge=0)
    """Gopher: at least 50 words. Set lower (e.g. 3) for short instruction rows."""
    max_words: int = Field(default=100_000, ge=1)
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_ratio: float = 0.1
    """Gopher: '#' and '...' per word."""
    max_bullet_lines: float = 0.9
    """Gopher: share of lines starting with a bullet."""
    max_ellipsis_lines: float = 0.3
    """Gopher: share of lines ending with an ellipsis."""
    min_alpha_words: float = 0.8
    """Gopher: share of words with at least one letter (so number and symbol dumps go)."""
    min_stop_words: int = Field(default=2, ge=0)
    """Gopher: at least 2 of the, be, to, of, and, that, have, with (English-only rule; 0 turns it off)."""
    repetition: bool = True
    """Gopher's repeated lines, paragraphs and n-grams rules (thresholds in `filters.REPETITION`)."""
    boilerplate_lines: bool = True
    """C4: drop lines with cookie/privacy/terms notices or 'enable JavaScript'; drop 'lorem ipsum' pages."""
    language: str | None = None
    """Keep only this language (ISO 639-1 code, e.g. `en`), detected with py3langid; None = no filter."""
    min_language_score: float = Field(default=0.65, ge=0.0, le=1.0)
    """Least probability of `language` a document must have."""


class DedupConfig(Config):
    """Exact (normalized hash) and near-duplicate (MinHash LSH) removal; the first of a cluster is kept."""

    mode: Literal["none", "exact", "near", "semantic"] = "near"
    """`exact`: hash of the canonical words; `near`: exact plus MinHash LSH; `semantic`: near plus
    embedding cosine similarity (needs `embed_model`; quadratic, for small datasets)."""
    threshold: float = Field(default=0.7, gt=0.0, le=1.0)
    """Jaccard similarity of shingle sets from which two documents are near-duplicates. 0.7 with word
    3-grams finds 94% of copies with 3% of their words edited, and merged none of 1,000 distinct
    abstracts (BENCHMARKS.md (data section)); 0.8 finds 67% of those."""
    ngram: int = Field(default=3, ge=1)
    """Shingle size in canonical words."""
    num_perm: int = Field(default=128, ge=16)
    """MinHash permutations (more = sharper LSH, more memory per kept document)."""
    seed: int = 1
    semantic_threshold: float = Field(default=0.95, gt=0.0, le=1.0)
    """Cosine similarity of mean-pooled embeddings above which two documents are duplicates."""
    embed_model: str | None = None
    """Model (any load_model reference) whose mean-pooled hidden states embed documents (semantic)."""


class PIIConfig(Config):
    """Replace personal data and secrets by typed placeholders such as `<EMAIL>`."""

    enabled: bool = False
    kinds: list[Literal["email", "phone", "ip", "card", "key"]] = Field(
        default_factory=lambda: ["email", "phone", "ip", "card", "key"])
    placeholder: str = "<{KIND}>"
    """Format of the replacement; `{KIND}` is EMAIL, PHONE, IP_ADDRESS, CARD_NUMBER or KEY."""


class CleanConfig(Config):
    """Everything `clean` does, in this order: normalize, quality, decontaminate, PII, dedup."""

    text_field: str | list[str] | None = None
    """Row field(s) holding the text; None = guess (text, content, ... or instruction/input/output)."""
    normalize: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normalization form; whitespace is repaired unless "none"."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PIIConfig = Field(default_factory=PIIConfig)
    decontaminate: list[str] = Field(default_factory=list)
    """Evaluation sets (task names as in `lmopt eval`, or text files) whose n-grams rows must not share."""
    decontaminate_ngram: int = Field(default=13, ge=4)
    """n of the shared n-grams (GPT-3: 13)."""
    decontaminate_min_words: int = Field(default=8, ge=1)
    """Evaluation items shorter than `decontaminate_ngram` words are matched whole if at least this long."""
    workers: int = Field(default=0, ge=0)
    """Processes for the per-document work; 0 = one per CPU core (at most 8), 1 = in this process.
    With `engine: ray`: Ray workers; 0 = one per CPU of the cluster."""
    chunk_size: int = Field(default=256, ge=1)
    """Documents sent to a worker at a time."""
    engine: Literal["local", "ray"] = "local"
    """`local`: processes on this machine. `ray`: Ray Data on a Ray cluster (`pip install 'lmopt[ray]'`):
    input shards read in parallel, exact and MinHash dedup across shards by shuffles on the hash and
    band keys; the output equals the local engine's row for row. No semantic dedup."""
    address: str | None = None
    """Ray cluster to join (`auto`, `HOST:6379`, `ray://HOST:10001`); None = start a local one (`ray`
    engine only). Every node needs lmopt installed and the input path readable."""
    examples: int = Field(default=5, ge=0)
    """Removed documents kept as examples in the report, per reason."""
    keep_removed: bool = False
    """Also write the removed rows, each with its reason, to `removed.jsonl` beside the output."""

    @model_validator(mode="after")
    def _engine_options(self) -> CleanConfig:
        if self.engine == "ray" and self.dedup.mode == "semantic":
            raise ValueError("dedup.mode: semantic deduplication runs on the local engine only (engine: local)")
        if self.address is not None and self.engine != "ray":
            raise ValueError("address: joins a Ray cluster, which only `engine: ray` uses")
        return self


class AugmentConfig(Config):
    """Rule-based (EDA) edits and model paraphrases of each row; originals are kept and marked."""

    text_field: str | list[str] | None = None
    """Field(s) to augment; None = guess as in `clean`."""
    methods: list[Literal["swap", "delete", "insert", "paraphrase"]] = Field(
        default_factory=lambda: ["swap", "delete", "insert"])
    """EDA (Wei & Zou 2019) random swap / deletion / insertion; `paraphrase` asks `model`."""
    per_row: int = Field(default=2, ge=1)
    """New rows per original row and method."""
    alpha: float = Field(default=0.1, gt=0.0, le=0.5)
    """Share of words an EDA edit changes (EDA's alpha)."""
    seed: int = 0
    model: str | None = None
    """Model for paraphrases (load_model reference); in a recipe, the recipe's model."""
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.8, gt=0.0)
    prompt: str = "Paraphrase the following text. Keep its meaning, change the wording.\n\n{text}"
    dedup_threshold: float = Field(default=0.9, gt=0.0, le=1.0)
    """An augmented row this similar (shingle Jaccard) to its source or a sibling is dropped."""
