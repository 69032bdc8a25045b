"""Calibration token windows: the default `mix` of domains, one named source, or the user's own file.

Why a mix: calibrated on Python documentation alone, GPTQ W4 fitted that domain and came out worse
than round-to-nearest on general English (WikiText-2 perplexity x1.43 against RTN's x1.39, issue 13).
`mix` draws an equal share of the windows from each part that is present:

| part | text | brings | never taken (benchmarks evaluate on it) |
|---|---|---|---|
| `pydoc-train` | Python docs, first 80% (`pydoc_data`, in CPython) | code, technical prose | `pydoc` (last 20%) |
| `wikitext2-valid` | `wikitext-2/valid.txt`, detokenized, `<unk>` dropped | encyclopedic English | WikiText-2 test |
| `dolly` | `dolly_hhrlhf` prompt/response pairs in the model's chat template | chat turns as served | - |
| `pubmed-train` | `pubmedqa_abstracts.txt`, abstracts 1-900 | scientific abstracts | abstracts 901-1000 |

The last three live in the shared data dir (`CalibrationConfig.data_dir`, else `$LMOPT_DATA_DIR` or a
`shared/data` found near the working directory); a missing part is skipped with a logged note, so
without the data dir the mix is the Python docs alone (the demo and CI without data still run).
Only WikiText-2's validation split is used because its train split is not in the offline data.
Instruction data is Dolly/HH-RLHF rather than Alpaca: Alpaca's data is CC BY-NC 4.0 (non-commercial)
and its first rows are the validation set of benchmarks/train_chat.py; Dolly is CC BY-SA 3.0.

A file source is the user's own text, first-class: `.txt` (as is), or `.jsonl`/`.json` rows with
`text`, or chat rows (`messages`, `prompt`+`response`, `instruction`+`output`) rendered with the
model's chat template, read by `lmopt.train.data.read_records` (errors name the file and line).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmopt.data.text import TEXT_SOURCES, load_text, pydoc_text
from lmopt.errors import LmoptError
from lmopt.settings import default_data_dir
from lmopt.step import StepContext
from lmopt.train.data import read_records

log = logging.getLogger("lmopt.compress")
MIX = "mix"
PUBMED_CALIBRATION_ABSTRACTS = 900
"""Abstracts 901-1000 of pubmedqa_abstracts.txt are the held-out split benchmarks evaluate on."""
MIX_PARTS = ("pydoc-train", "wikitext2-valid", "dolly", "pubmed-train")
CHARS_PER_TOKEN_MAX = 8
"""A span of 8 characters per wanted token holds enough tokens in any text tried (English ~4.5, code ~3)."""


@dataclass
class CalibrationSet:
    """Token windows (n, seq_len) and how many came from each source part, in window order."""

    windows: torch.Tensor
    parts: dict[str, int] = field(default_factory=dict)


def _data_dir(data_dir: str | Path | None) -> Path | None:
    found = Path(data_dir) if data_dir else default_data_dir()
    return found if found is not None and found.is_dir() else None


def detokenize_wikitext(text: str) -> str:
    """WikiText's tokenized layout back to plain prose (` @-@ ` -> `-`, ` , ` -> `, `...), `<unk>` dropped."""
    text = text.replace(" <unk>", "").replace("<unk> ", "")
    for tokenized, plain in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" , ", ", "), (" . ", ". "),
                             (" ; ", "; "), (" : ", ": "), (" 's", "'s"), (" n't", "n't"), ("( ", "("),
                             (" )", ")")):
        text = text.replace(tokenized, plain)
    return re.sub(r"\n +", "\n", text)


def _chat_text(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> str:
    """Conversations as the model sees them when served: its chat template, else `role: content` lines."""
    if getattr(tokenizer, "chat_template", None):
        return "".join(tokenizer.apply_chat_template(c, tokenize=False) for c in conversations)
    return "\n\n".join("\n".join(f"{m['role']}: {m['content']}" for m in c) for c in conversations)


def _dolly_text(tokenizer: Any, path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    conversations = []
    for row in rows:  # prompts carry the Alpaca wrapper; the instruction alone is the user turn
        prompt = row["prompt"].split("### Instruction:\n", 1)[-1].split("\n\n### Response:", 1)[0]
        conversations.append([{"role": "user", "content": prompt.strip()},
                              {"role": "assistant", "content": row["response"].strip()}])
    return _chat_text(tokenizer, conversations)


def mix_part_texts(tokenizer: Any, data_dir: str | Path | None = None) -> dict[str, str]:
    """The text of each `mix` part that is present (see the module docstring); notes what is missing."""
    texts = {"pydoc-train": pydoc_text("train")}
    root = _data_dir(data_dir)
    files = {"wikitext2-valid": "wikitext-2/valid.txt", "dolly": "dolly_hhrlhf/dolly_hhrlhf_train_small.jsonl",
             "pubmed-train": "pubmedqa/pubmedqa_abstracts.txt"}
    missing = [part for part, rel in files.items() if root is None or not (root / rel).is_file()]
    if missing:
        where = f"under {root}" if root else "(no shared data dir found; set LMOPT_DATA_DIR or data_dir)"
        log.warning("calibration mix: %s not found %s; using %s", ", ".join(missing), where,
                    ", ".join(p for p in MIX_PARTS if p not in missing))
    if root is None:
        return texts
    if "wikitext2-valid" not in missing:
        wiki = (root / files["wikitext2-valid"]).read_text(encoding="utf-8")
        texts["wikitext2-valid"] = detokenize_wikitext(wiki)
    if "dolly" not in missing:
        texts["dolly"] = _dolly_text(tokenizer, root / files["dolly"])
    if "pubmed-train" not in missing:
        abstracts = [a.strip() for a in (root / files["pubmed-train"]).read_text(encoding="utf-8").split("\n\n")]
        texts["pubmed-train"] = "\n\n".join([a for a in abstracts if a][:PUBMED_CALIBRATION_ABSTRACTS])
    return texts


def source_text(tokenizer: Any, source: str, data_dir: str | Path | None = None) -> str:
    """The text of one named source (`lmopt.data.load_text`) or of the user's file (module docstring)."""
    if source in TEXT_SOURCES or source == "wikitext":
        return load_text(source, data_dir)
    path = Path(source).expanduser()
    if not path.exists():
        raise LmoptError(f"calibration source '{source}': unknown text source and no such file "
                         f"(choose {MIX}, {', '.join(TEXT_SOURCES)} or a .txt/.jsonl/.json file)")
    if path.suffix not in (".jsonl", ".json"):
        return load_text(str(path), data_dir)
    kind, records = read_records(path)
    return "\n\n".join(records) if kind == "text" else _chat_text(tokenizer, records)


def is_file_source(source: str) -> bool:
    """Whether a calibration `source` is the user's file rather than `mix` or a named text source."""
    return source not in (MIX, *TEXT_SOURCES, "wikitext")


def with_step_paths(config: Any, ctx: StepContext) -> Any:
    """`config` (a method config with a `calibration` field, or without one) as a step runs it: the
    calibration data dir defaults to the step's, and a file source given relative resolves against the
    recipe's folder (`ctx.resolve_path`). A missing file is one line naming it."""
    calibration = getattr(config, "calibration", None)
    if calibration is None:
        return config
    update: dict[str, Any] = {}
    if calibration.data_dir is None and ctx.data_dir is not None:
        update["data_dir"] = str(ctx.data_dir)
    if is_file_source(calibration.source):
        path = ctx.resolve_path(calibration.source)
        if not path.is_file():
            raise LmoptError(f"calibration.source: no such file {path} (a relative path is read from the "
                             f"recipe's folder; named sources: {MIX}, {', '.join(TEXT_SOURCES)})")
        update["source"] = str(path)
    if not update:
        return config
    return config.model_copy(update={"calibration": calibration.model_copy(update=update)})


def token_ids(tokenizer: Any, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def cut_windows(ids: torch.Tensor, n_samples: int, seq_len: int, seed: int, where: str) -> torch.Tensor:
    """`n_samples` windows of `seq_len` tokens from `ids`: evenly spaced and disjoint when the text holds
    that many, else at random (seeded) offsets."""
    if ids.numel() < seq_len + 1:
        raise LmoptError(f"calibration source '{where}': {ids.numel()} tokens, fewer than seq_len={seq_len}")
    slots = ids.numel() // seq_len
    if slots >= n_samples:
        starts = torch.arange(n_samples) * (slots // n_samples) * seq_len
    else:
        gen = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=gen)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


def text_windows(tokenizer: Any, text: str, n_samples: int, seq_len: int, seed: int, where: str) -> torch.Tensor:
    """`cut_windows` over the tokens of `text`. A text far longer than needed is not tokenized whole: each
    window comes from one of `n_samples` evenly spaced, disjoint character spans of 8 chars per token
    (its first token, maybe part of a word, dropped), so the cost follows n_samples x seq_len."""
    span = seq_len * CHARS_PER_TOKEN_MAX
    if len(text) < n_samples * span * 3 // 2:
        return cut_windows(token_ids(tokenizer, text), n_samples, seq_len, seed, where)
    stride = (len(text) - span) // max(n_samples - 1, 1)
    windows = []
    for start in range(0, stride * n_samples, stride):
        ids = token_ids(tokenizer, text[start:start + span])[1:seq_len + 1]
        if ids.numel() < seq_len:  # unusually short tokens for this span: fall back to the whole text
            return cut_windows(token_ids(tokenizer, text), n_samples, seq_len, seed, where)
        windows.append(ids)
    return torch.stack(windows)


def calibration_set(tokenizer: Any, source: str = MIX, n_samples: int = 128, seq_len: int = 512, seed: int = 0,
                    data_dir: str | Path | None = None) -> CalibrationSet:
    """(n_samples, seq_len) windows from `source`; for `mix`, equal shares per present part, in part order."""
    if source != MIX:
        windows = text_windows(tokenizer, source_text(tokenizer, source, data_dir), n_samples, seq_len, seed, source)
        return CalibrationSet(windows, {source: n_samples})
    texts = mix_part_texts(tokenizer, data_dir)
    shares = [n_samples // len(texts) + (i < n_samples % len(texts)) for i in range(len(texts))]
    chunks, parts = [], {}
    for (part, text), share in zip(texts.items(), shares, strict=True):
        if share:
            chunks.append(text_windows(tokenizer, text, share, seq_len, seed, f"{MIX}/{part}"))
            parts[part] = share
    return CalibrationSet(torch.cat(chunks), parts)


def calibration_windows(tokenizer: Any, source: str = MIX, n_samples: int = 128, seq_len: int = 512,
                        seed: int = 0, data_dir: str | Path | None = None) -> torch.Tensor:
    """A (n_samples, seq_len) LongTensor of token windows taken from `source` (`calibration_set`)."""
    return calibration_set(tokenizer, source, n_samples, seq_len, seed, data_dir).windows
