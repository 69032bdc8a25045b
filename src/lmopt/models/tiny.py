"""Tiny random llama-style models built in-process: the fixtures for fast tests (users' tests too).

`tiny_llama()` returns a `LoadedModel` with a real byte-level BPE tokenizer (trained in well under a
second on a slice of Python's docs) and a ChatML chat template like SmolLM2's, so every code path
that a real model takes (tokenizing, chat templates, saving, loading) runs in milliseconds.

torch, tokenizers and transformers are imported inside the functions: `lmopt.models` (which exports
these) is imported at CLI start-up, and they take one to several seconds.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

from lmopt.models.card import ModelCard
from lmopt.models.load import LoadedModel
from lmopt.models.save import save_model

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer with `vocab_size` entries, trained on Python's docs."""
    # lazy: start-up cost (module docstring)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = "\n".join(topics[k] for k in sorted(topics))[:200_000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text[i:i + 2000] for i in range(0, len(text), 2000)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|im_end|>", unk_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_llama(
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    seed: int = 0,
    tie_word_embeddings: bool = True,
    max_position_embeddings: int = 2048,
) -> LoadedModel:
    """A random LlamaForCausalLM (grouped-query attention, tied embeddings like SmolLM2)."""
    # lazy: start-up cost (module docstring)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    card = ModelCard(name="tiny-llama", format_info={"source": "random", "seed": seed})
    return LoadedModel(model, tokenizer, "tiny-llama", None, card)


def save_tiny_llama(directory: str | Path, **kwargs: Any) -> Path:
    """Build a tiny model and save it as an HF directory (for CLI and recipe tests)."""
    loaded = tiny_llama(**kwargs)
    return save_model(loaded.model, loaded.tokenizer, directory, loaded.card)
