"""Tokenizer and chat template as GGUF metadata (`tokenizer.ggml.*`), the way llama.cpp reads them.

A byte-level BPE tokenizer (GPT-2 style, as SmolLM2, Llama 3 and Qwen use) is written as model
`gpt2`: every token id's string (in the byte alphabet), the merges, each token's type (control for
special added tokens, user-defined for other added tokens, normal otherwise, unused for ids the
tokenizer lacks up to the model's vocabulary size), the bos/eos/unk/pad ids and whether bos/eos are
added. `tokenizer.ggml.pre` names llama.cpp's pre-tokenizer (its splitting regex): read from the GGUF
the model came from when there is one, else recognized from the tokenizer's pre-tokenizer structure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmopt.errors import LmoptError
from lmopt.models.card import ModelCard
from lmopt.models.gguf import EMBEDDED_ALIAS, embedded_gguf_path

PAD_TOKEN = "[PAD{}]"
TOKEN_TYPE = {"normal": 1, "control": 3, "user_defined": 4, "unused": 5}


def tokenizer_fields(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """tokens, merges, token_type, special ids and add_bos/add_eos of a byte-level BPE tokenizer."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or not _byte_level(spec):
        raise LmoptError(f"tokenizer: only byte-level BPE tokenizers can be written to GGUF for now "
                         f"(found {model.get('type')} with pre-tokenizer {_kind(spec.get('pre_tokenizer'))})")
    by_id = {index: token for token, index in model["vocab"].items()}
    added = {item["id"]: item for item in spec.get("added_tokens", [])}
    by_id.update({index: item["content"] for index, item in added.items()})
    if max(by_id) >= vocab_size:
        raise LmoptError(f"tokenizer: token id {max(by_id)} is past the model's vocabulary of {vocab_size}")
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(PAD_TOKEN.format(index))
            types.append(TOKEN_TYPE["unused"])
        elif index in added:
            tokens.append(by_id[index])
            types.append(TOKEN_TYPE["control" if added[index].get("special") else "user_defined"])
        else:
            tokens.append(by_id[index])
            types.append(TOKEN_TYPE["normal"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    fields = {"tokens": tokens, "merges": merges, "token_type": types,
              "add_bos": tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id],
              "add_eos": tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]}
    for key in ("bos", "eos", "unk", "pad"):
        fields[f"{key}_id"] = getattr(tokenizer, f"{key}_token_id", None)
    fields["chat_template"] = getattr(tokenizer, "chat_template", None)
    return fields


def _byte_level(spec: dict[str, Any]) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))


def _kind(node: Any) -> str:
    return node.get("type", "?") if isinstance(node, dict) else "none"


def recognize_pre_tokenizer(tokenizer: Any) -> str | None:
    """llama.cpp's name for the tokenizer's splitting, when its structure is one we recognize."""
    node = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = node.get("pretokenizers", []) if node.get("type") == "Sequence" else [node]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own regex, applied by ByteLevel
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"  # single digits, then GPT-2's regex (SmolLM/SmolLM2, StarCoder)
    return None


def inherited_pre_tokenizer(card: Any, depth: int = 20) -> str | None:
    """`tokenizer.ggml.pre` of the GGUF this model descends from (following the cards' parents)."""
    parent = card.parent if card is not None else None
    for _ in range(depth):
        if not parent:
            return None
        if str(parent).lower() == EMBEDDED_ALIAS:
            parent = str(embedded_gguf_path())
        path = Path(str(parent))
        if path.suffix == ".gguf" and path.is_file():
            return read_gguf_string(path, "tokenizer.ggml.pre")
        if not path.is_dir():
            return None
        parent = ModelCard.read(path).parent
    return None


def read_gguf_string(path: Path, key: str) -> str | None:
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get(key)
    return None if field is None else str(field.contents())


def add_tokenizer(writer: Any, fields: dict[str, Any], pre: str) -> None:
    """Write the fields of `tokenizer_fields` with gguf's writer."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["token_type"])
    writer.add_token_merges(fields["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if fields[f"{key}_id"] is not None:
            add(fields[f"{key}_id"])
    writer.add_add_bos_token(bool(fields["add_bos"]))
    writer.add_add_eos_token(bool(fields["add_eos"]))
    writer.add_add_space_prefix(False)  # byte-level BPE marks spaces itself
    if fields["chat_template"]:
        writer.add_chat_template(fields["chat_template"])
