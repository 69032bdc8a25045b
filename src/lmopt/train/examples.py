"""Records -> token examples: packed raw-text blocks, chat conversations with response-only labels.

An example is `{"input_ids": [...], "labels": [...]}` with label -100 where no loss is taken.

- Raw text: every document is tokenized, documents are joined with the EOS token and the stream is cut
  into `seq_len` blocks (labels = inputs); the tail shorter than a block is dropped unless it is the
  only block. Packing wastes no compute on padding, which matters on a CPU.
- Chat: the conversation is rendered with the tokenizer's chat template (or a plain "role: content"
  fallback when it has none). The characters of each assistant turn, from the end of the generation
  prompt to the end of that turn (its end-of-turn marker included, so the model learns to stop), are
  found by rendering the conversation prefixes; tokens whose first character falls inside such a span
  get labels, all others -100. Conversations are truncated to `seq_len` tokens; one left with no
  labelled token is dropped.
"""

from __future__ import annotations

from typing import Any

import torch

from lmopt.errors import LmoptError

IGNORE = -100


def pack_text(documents: list[str], tokenizer: Any, seq_len: int) -> list[dict[str, list[int]]]:
    """Tokenize, join with EOS and cut into `seq_len` blocks (see the module docstring)."""
    sep = tokenizer.eos_token_id
    stream: list[int] = []
    encoded = tokenizer(documents, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    for ids in encoded:
        stream.extend(ids)
        if sep is not None:
            stream.append(sep)
    n_blocks = max(len(stream) // seq_len, 1 if len(stream) >= 2 else 0)
    blocks = [stream[i * seq_len : (i + 1) * seq_len] for i in range(n_blocks)]
    return [{"input_ids": b, "labels": list(b)} for b in blocks]


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as text, through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    text = "".join(f"{m['role']}: {m['content']}\n\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


def response_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of its assistant turns."""
    full = render(tokenizer, messages)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        turn = render(tokenizer, messages[: i + 1])
        if not (full.startswith(prompt) and full.startswith(turn) and len(turn) > len(prompt)):
            raise LmoptError(
                "the chat template does not render conversations prefix by prefix; "
                "response-only loss needs that (set response_only: false)"
            )
        spans.append((len(prompt), len(turn)))
    return full, spans


def chat_example(
    tokenizer: Any, messages: list[dict[str, str]], seq_len: int, response_only: bool = True
) -> dict[str, list[int]] | None:
    """One conversation as token ids and labels (None when nothing is left to learn after truncation)."""
    full, spans = response_spans(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:seq_len], enc["offset_mapping"][:seq_len]
    if response_only:
        labels = [
            tok if any(a <= start < b for a, b in spans) else IGNORE
            for tok, (start, _end) in zip(ids, offsets, strict=True)
        ]
    else:
        labels = list(ids)
    if all(label == IGNORE for label in labels[1:]):  # the first label is never predicted
        return None
    return {"input_ids": ids, "labels": labels}


def build_examples(
    kind: str, records: list[Any], tokenizer: Any, seq_len: int, response_only: bool = True
) -> list[dict[str, list[int]]]:
    """Token examples for `records` of `kind` ("text" or "chat")."""
    if kind == "text":
        return pack_text(records, tokenizer, seq_len)
    examples = [chat_example(tokenizer, msgs, seq_len, response_only) for msgs in records]
    return [ex for ex in examples if ex is not None]


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a list of examples into (batch, max_len) tensors: input_ids, attention_mask, labels."""
    width = max(len(ex["input_ids"]) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        ids[row, :n] = torch.tensor(ex["input_ids"])
        labels[row, :n] = torch.tensor(ex["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
