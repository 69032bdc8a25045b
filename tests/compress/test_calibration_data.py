"""Calibration windows: the default `mix` (parts, shares, fallback without data, never evaluated text)
and the user's own files as sources."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from lmopt.compress import calibration_data as cd
from lmopt.compress.config import CalibrationConfig
from lmopt.data.text import pydoc_text
from lmopt.errors import LmoptError


def test_default_source_is_the_mix():
    assert CalibrationConfig().source == cd.MIX
    assert (CalibrationConfig().n_samples, CalibrationConfig().seq_len) == (128, 512)


def test_mix_draws_equal_shares_from_every_part(tiny, data_dir):
    drawn = cd.calibration_set(tiny.tokenizer, "mix", n_samples=10, seq_len=64, data_dir=data_dir)
    assert drawn.windows.shape == (10, 64) and drawn.windows.dtype == torch.long
    assert drawn.parts == {"pydoc-train": 3, "wikitext2-valid": 3, "dolly": 2, "pubmed-train": 2}
    assert len({tuple(w.tolist()) for w in drawn.windows}) == 10


def test_mix_without_shared_data_falls_back_to_python_docs_with_a_note(tiny, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LMOPT_DATA_DIR", str(tmp_path))  # an empty data dir
    with caplog.at_level(logging.WARNING, logger="lmopt.compress"):
        drawn = cd.calibration_set(tiny.tokenizer, "mix", n_samples=4, seq_len=32, data_dir=tmp_path)
    assert drawn.parts == {"pydoc-train": 4}
    assert "wikitext2-valid, dolly, pubmed-train not found" in caplog.text and "using pydoc-train" in caplog.text


def test_mix_never_holds_text_the_benchmarks_evaluate(tiny, data_dir):
    texts = cd.mix_part_texts(tiny.tokenizer, data_dir)
    abstracts = [a.strip() for a in (data_dir / "pubmedqa" / "pubmedqa_abstracts.txt").read_text().split("\n\n")]
    abstracts = [a for a in abstracts if a]
    held_out = abstracts[cd.PUBMED_CALIBRATION_ABSTRACTS:]
    assert len(held_out) == 100 and not any(a[:200] in texts["pubmed-train"] for a in held_out)
    assert abstracts[0][:200] in texts["pubmed-train"]
    test = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text()
    headings = [line.strip() for line in test.splitlines() if line.startswith(" = ") and not line.startswith(" = =")]
    assert headings and not any(h in texts["wikitext2-valid"] for h in headings[:20])  # test articles absent
    assert texts["pydoc-train"] == pydoc_text("train")  # the first 80%, cut before the eval split
    assert "<unk>" not in texts["wikitext2-valid"] and " @-@ " not in texts["wikitext2-valid"]


def test_wikitext_detokenizer():
    tokenized = "a 2 @-@ 3 gun , with 1 @,@ 000 <unk> men ( see ) ."
    assert cd.detokenize_wikitext(tokenized) == "a 2-3 gun, with 1,000 men (see) ."


def test_dolly_rows_become_chat_turns(tiny, data_dir):
    text = cd._dolly_text(tiny.tokenizer, data_dir / "dolly_hhrlhf" / "dolly_hhrlhf_train_small.jsonl")
    assert text.startswith("<|im_start|>user\nwhat is kangen water?<|im_end|>\n<|im_start|>assistant\nKangen")
    assert "Below is an instruction" not in text and "### Response" not in text


def test_user_text_and_jsonl_files_are_sources(tiny, tmp_path):
    words = " ".join(f"word{i}" for i in range(400))
    txt = tmp_path / "mine.txt"
    txt.write_text(words)
    rows = tmp_path / "mine.jsonl"
    rows.write_text("\n".join(json.dumps({"text": words[i * 100:(i + 1) * 100]}) for i in range(20)))
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(json.dumps({"prompt": f"question {i}?", "response": f"answer {i}."}) for i in range(200)))
    for path in (txt, rows, chat):
        drawn = cd.calibration_set(tiny.tokenizer, str(path), n_samples=3, seq_len=16)
        assert drawn.windows.shape == (3, 16) and drawn.parts == {str(path): 3}
    assert "<|im_start|>user\nquestion 0?<|im_end|>" in cd.source_text(tiny.tokenizer, str(chat))

    class Plain:  # a tokenizer without a chat template: role-prefixed lines
        chat_template = None

    assert "user: question 0?\nassistant: answer 0." in cd.source_text(Plain(), str(chat))


def test_chat_rows_use_the_models_chat_template(tiny, tmp_path):
    chat = tmp_path / "chat.jsonl"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    chat.write_text(json.dumps({"messages": messages}))

    class Templated:
        chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"

        def apply_chat_template(self, messages, tokenize=False):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    assert cd.source_text(Templated(), str(chat)) == "<user>hi<assistant>yo"


def test_bad_sources_fail_with_one_line_naming_the_file(tiny, tmp_path):
    with pytest.raises(LmoptError, match=r"source '.*missing\.jsonl': unknown text source and no such file"):
        cd.calibration_set(tiny.tokenizer, str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    with pytest.raises(LmoptError, match=r"bad\.jsonl.*line 2|bad\.jsonl.*2"):
        cd.calibration_set(tiny.tokenizer, str(bad))
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(LmoptError, match=r"short\.txt.*fewer than seq_len=512"):
        cd.calibration_set(tiny.tokenizer, str(short))


def test_long_texts_are_sampled_without_tokenizing_everything(tiny):
    text = pydoc_text("train")
    windows = cd.text_windows(tiny.tokenizer, text * 4, n_samples=6, seq_len=32, seed=0, where="x")
    assert windows.shape == (6, 32)
    ids = cd.token_ids(tiny.tokenizer, text * 4).tolist()
    joined = " ".join(map(str, ids))
    for window in windows:  # every window is a run of the whole text's tokens (modulo span edges)
        assert " ".join(map(str, window[2:-2].tolist())) in joined


def test_cli_quantize_calibrates_on_the_users_file(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from lmopt.cli import app
    from lmopt.models import load_model

    chat = tmp_path / "support.jsonl"
    chat.write_text("\n".join(json.dumps({"prompt": f"How do I reset device {i}?", "response": f"Hold button {i}."})
                              for i in range(100)))
    out = tmp_path / "w4"
    result = CliRunner().invoke(app, ["quantize", str(tiny_dir), "--method", "gptq", "--calib", str(chat),
                                      "--n-samples", "8", "--calib-seq-len", "32", "--output", str(out)])
    assert result.exit_code == 0, result.output
    card = load_model(out).card
    assert card.config["calibration"]["source"] == str(chat) and card.config["safeguard"] is True
