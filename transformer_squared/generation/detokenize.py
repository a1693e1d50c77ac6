"""Incremental detokenisation: the new text of each step without decoding the whole completion again.

A token does not always decode to text on its own: byte-level BPE and byte-fallback tokenizers split a
multi-byte character over several tokens (each alone decodes to U+FFFD), and SentencePiece-style tokenizers
decide a token's leading space from its neighbour. So, as vLLM and TGI do (vLLM's `detokenize_incrementally`,
TGI's `decode_token` with prefix/read offsets), each step decodes a short window: the tokens from `prefix` (a
token or so before the last emitted text, for context) to the end, and the same window up to `read` (what was
already emitted). The new text is the difference, emitted only once it no longer ends in U+FFFD (an
unfinished character). Two short decodes per step instead of one of the whole text: the cost does not grow
with the completion's length.

The emitted pieces add up to the text of the ids decoded at once for the tokenizers used here (byte-level
BPE, byte fallback); the engine still decodes each finished completion once in full for its final text.
"""

from __future__ import annotations

from collections.abc import Sequence


class IncrementalText:
    """The decoded text of a growing list of token ids, extended by `push` one step at a time."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prefix = 0  # first id of the context window
        self.read = 0  # ids up to here are in `text`
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def push(self, ids: Sequence[int]) -> str:
        """`ids`: all generated ids so far (the previous ones plus the new). Returns the text they add (possibly
        "" while a character is unfinished) and appends it to `text`."""
        before = self._decode(ids[self.prefix : self.read])
        after = self._decode(ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        new = after[len(before) :]
        self.prefix, self.read = self.read, len(ids)
        self.text += new
        return new


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of unfinished `text` must not be streamed yet: those that could be the
    start of a stop string (the client must never see a stop string, and the text is cut before it)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold
