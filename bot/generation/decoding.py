"""Streaming text out of token ids: incremental detokenization and stop-string matching.

``IncrementalDecoder`` turns a growing list of token ids into text deltas. It uses the
prefix/read-offset technique of TGI and vLLM: each step decodes a short window of already-emitted
tokens plus the new ones and emits only what the new tokens added, so SentencePiece's leading-space
rule and multi-byte characters split over several byte-fallback tokens come out right. A delta is
held back while the decoded window ends in U+FFFD (an incomplete UTF-8 sequence); ``finish()``
releases whatever is left. The concatenation of all deltas equals ``decode(all_ids)``.

``StopMatcher`` cuts a stream of text deltas at the first stop string, never emitting any part of
it: a suffix that could be the start of a stop string is held back until it is resolved, and so is
trailing whitespace (a SOLAR turn ends with ``"\\n\\n"`` right before the next ``### User:``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decodes(Protocol):
    """Anything that decodes ids to text, skipping special tokens (``Tokenizer`` satisfies it)."""

    def decode(self, ids: Sequence[int]) -> str: ...


class IncrementalDecoder:
    """Token ids in (new or cumulative), text deltas out.

    ``tokenizer.decode`` must skip special tokens; then ``"".join(deltas) + finish()`` equals
    ``tokenizer.decode(all_ids)``.
    """

    def __init__(self, tokenizer: Decodes) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    @property
    def ids(self) -> list[int]:
        """Every id fed so far (a copy)."""
        return list(self._ids)

    def feed(self, new_ids: Sequence[int]) -> str:
        """Add newly generated ids; return the text they complete (possibly empty)."""
        self._ids.extend(new_ids)
        if not new_ids:
            return ""
        return self._advance(final=False)

    def feed_cumulative(self, all_ids: Sequence[int]) -> str:
        """Give every id generated so far (a prefix of it was fed before); return the new text."""
        if len(all_ids) < len(self._ids):
            raise ValueError("cumulative ids shrank: got fewer ids than were already fed")
        return self.feed(all_ids[len(self._ids) :])

    def finish(self) -> str:
        """The text still held back (an incomplete character at the very end decodes as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read_offset >= len(self._ids):
            return ""
        prefix_text = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._tokenizer.decode(self._ids[self._prefix_offset :])
        if not final and (len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR)):
            # Nothing printable yet, or a multi-byte character is still incomplete.
            return ""
        if not new_text.startswith(prefix_text):
            # Not expected with SentencePiece; keep the stream consistent with the full decode.
            prefix_text = new_text[: len(prefix_text)]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]


class StopResult(NamedTuple):
    text: str
    """Text safe to emit now."""
    stopped: bool
    """A stop string was reached: ``text`` is the last of the reply; feed no more."""


class StopMatcher:
    """Cut text deltas at the first of ``stops``, holding back anything that might start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def held(self) -> str:
        """Text received but not emitted yet."""
        return self._held

    def feed(self, delta: str) -> StopResult:
        if self._stopped:
            return StopResult("", True)
        buffer = self._held + delta
        hit = self._first_stop(buffer)
        if hit is not None:
            self._held = ""
            self._stopped = True
            return StopResult(buffer[:hit].rstrip(), True)
        keep_from = len(buffer) - self._partial_stop_length(buffer)
        # Hold trailing whitespace too: it is dropped if a stop string follows.
        while keep_from > 0 and buffer[keep_from - 1].isspace():
            keep_from -= 1
        self._held = buffer[keep_from:]
        return StopResult(buffer[:keep_from], False)

    def flush(self) -> str:
        """At the end of generation: everything still held back (no stop string was reached)."""
        held, self._held = self._held, ""
        return "" if self._stopped else held

    def _first_stop(self, buffer: str) -> int | None:
        positions = [pos for pos in (buffer.find(stop) for stop in self._stops) if pos >= 0]
        return min(positions) if positions else None

    def _partial_stop_length(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:length]):
                    longest = length
                    break
        return longest
