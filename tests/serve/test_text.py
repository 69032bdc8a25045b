"""Incremental detokenization and stop strings."""

from __future__ import annotations

from lmopt.serve.text import Detokenizer, TextStream


def test_streamed_deltas_concatenate_to_the_full_decode(tiny) -> None:
    tok = tiny.tokenizer
    text = "Héllo wörld — naïve café ✓ def f(x): return x ** 2\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    detok = Detokenizer(tok)
    deltas = [detok.add(i) for i in ids]
    assert "".join(deltas) + detok.flush() == tok.decode(ids)
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_split_across_pieces_is_cut_and_never_sent() -> None:
    stream = TextStream(["STOP"])
    sent = [stream.push(p) for p in ["abc S", "T", "OP tail"]]
    assert sent == ["abc ", "", ""] and stream.stopped and stream.text == "abc S"[:4]
    assert "".join(sent) + stream.finish() == "abc "


def test_held_back_prefix_is_released_when_it_turns_out_not_to_stop() -> None:
    stream = TextStream(["</s>", "###"])
    assert stream.push("x <") == "x "
    assert stream.push("b>") == "<b>"
    assert stream.push("#") == ""
    assert stream.finish() == "#" and not stream.stopped
