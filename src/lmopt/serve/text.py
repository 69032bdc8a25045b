"""Token ids to streamed text: incremental detokenization and stop strings.

Byte-level BPE tokens are not text on their own: a multi-byte character can span tokens, and a
word's leading space belongs to its token. `Detokenizer` decodes a short window of recent tokens
and emits only the text that is final (the scheme used by TGI and vLLM), so the concatenated deltas
equal `tokenizer.decode(all_ids)`. `TextStream` adds stop strings: text that might be the start of a
stop string is held back until it is clearly not one.
"""

from __future__ import annotations

from typing import Any


class Detokenizer:
    """Feeds token ids one at a time and returns the newly final text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the decoding window
        self.read = 0  # tokens whose text has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):  # no half character pending
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still pending at the end (possibly an incomplete character)."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


class TextStream:
    """Accumulates text, finds stop strings, and says how much can be sent to the client."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, delta: str) -> str:
        """Add generated text; returns the part that is safe to send now."""
        if self.stopped:
            return ""
        old = len(self.text)
        self.text += delta
        longest = max((len(s) for s in self.stop), default=0)
        hits = [i for i in (self.text.find(s, max(0, old - longest + 1)) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def finish(self) -> str:
        """The end of generation: release everything held back."""
        return self._release(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _release(self, upto: int) -> str:
        upto = max(upto, self.sent)
        out, self.sent = self.text[self.sent:upto], upto
        return out
