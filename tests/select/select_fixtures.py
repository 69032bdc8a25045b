"""Tiny random BERT and T5 built in-process (the encoder and encoder-decoder fixtures of tests/select)."""

from __future__ import annotations

from typing import Any

from lmopt.models import tiny_tokenizer
from lmopt.select.selection_candidates import Candidate, Loaded


def tiny_bert(seed: int = 0) -> Loaded:
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return Loaded(BertModel(config).eval(), tokenizer, "encoder")


def tiny_t5(seed: int = 0) -> Loaded:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = tiny_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return Loaded(T5ForConditionalGeneration(config).eval(), tokenizer, "seq2seq")


def tiny_decoder(layers: int = 2) -> Loaded:
    from lmopt.models import tiny_llama

    loaded = tiny_llama(num_layers=layers)
    return Loaded(loaded.model, loaded.tokenizer, "decoder")


def candidate(name: str, family: str, way: str | None, build: Any) -> Candidate:
    return Candidate(f"{name}:{way}", family, way, build=build)
