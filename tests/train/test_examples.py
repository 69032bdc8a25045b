"""Packing raw text and response-only labels for chat, checked token by token."""

from __future__ import annotations

import pytest

from lmopt.train.examples import IGNORE, chat_example, collate, pack_text


def test_pack_text_joins_with_eos_and_cuts_blocks(tiny):
    tok = tiny.tokenizer
    docs = ["alpha beta gamma " * 20, "delta epsilon " * 30]
    blocks = pack_text(docs, tok, seq_len=16)
    stream = []
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(blocks) == len(stream) // 16
    assert [t for b in blocks for t in b["input_ids"]] == stream[: 16 * len(blocks)]
    assert all(b["labels"] == b["input_ids"] and len(b["input_ids"]) == 16 for b in blocks)


def _check_response_only(tok, messages, expected_spans):
    ex = chat_example(tok, messages, seq_len=4096)
    # token by token: a label is either the token itself (inside a response) or IGNORE
    labelled = []
    for tid, label in zip(ex["input_ids"], ex["labels"], strict=True):
        assert label in (tid, IGNORE)
        labelled.append(label != IGNORE)
    # the labelled tokens decode to exactly the assistant turns plus their end-of-turn marker
    runs, current = [], []
    for tid, on in zip(ex["input_ids"], labelled, strict=True):
        if on:
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    assert [tok.decode(r) for r in runs] == expected_spans
    return ex


def test_response_only_mask_chatml(tiny):
    tok = tiny.tokenizer
    messages = [
        {"role": "user", "content": "What is a list?"},
        {"role": "assistant", "content": "A mutable sequence."},
        {"role": "user", "content": "And a tuple?"},
        {"role": "assistant", "content": "An immutable one."},
    ]
    ex = _check_response_only(
        tok, messages, ["A mutable sequence.<|im_end|>\n", "An immutable one.<|im_end|>\n"]
    )
    # the prompt part (system/user turns and the generation prompts) carries no label
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert all(label == IGNORE for label in ex["labels"][:n_prompt])


def test_response_only_off_and_truncation(tiny):
    tok = tiny.tokenizer
    messages = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]
    full = chat_example(tok, messages, seq_len=4096, response_only=False)
    assert full["labels"] == full["input_ids"]
    assert chat_example(tok, messages, seq_len=8) is None  # the response was truncated away


def test_fallback_template_without_chat_template(tiny):
    import copy

    tok = copy.deepcopy(tiny.tokenizer)
    tok.chat_template = None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    _check_response_only(tok, messages, ["hello there\n\n"])


def test_collate_pads_right():
    batch = collate(
        [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.integration
def test_response_only_mask_smollm2_template(embedded):
    """The real template adds a default system prompt; masks still cover exactly the responses."""
    messages = [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."}]
    _check_response_only(embedded.tokenizer, messages, ["Seven.<|im_end|>\n"])
