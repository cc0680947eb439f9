"""Split a long reply into platform-sized messages without breaking Markdown code fences.

``split_message(text, limit=2000)`` returns chunks of at most ``limit`` characters. A chunk that ends
inside a fenced code block is closed with a fence line of the same backticks, and the next chunk
reopens it with the original opening line (``` ```python ``` stays ``` ```python ```), so every chunk
renders on its own. Cut points prefer a paragraph break, then a line break, then a space; only a single
word longer than the room left is cut hard. Removing the added fence lines, the chunks concatenate to
the input exactly (see ``split_pieces``, which reports what was added where).

A text that ends inside an unclosed fence (a model cut off mid-code) gets a closing fence on its last
chunk too, so a half-written code block never swallows the rest of the channel's formatting.

Fences: a fence line (up to 3 spaces, then 3+ backticks and an info string) opens a block that only
a fence line of at least as many backticks and no info closes (CommonMark). As Discord and Slack
render it, 3+ backticks in the middle of a line outside a block open one too (``Here: ```python``);
runs on that same line pair up (``run ```ls``` now`` opens nothing), and a block still open at the
end of that line is closed, like any other, by a fence line. A reply that opens its code block
mid-line therefore gets no stray closing fence. (A block closed in the middle of a later line,
``x = 1```, is not seen as closed: such a reply gets one closing fence too many at its end.)
(A fence line that is itself longer than about half the limit cannot be kept whole; it is cut like
any other over-long line and balance is not guaranteed for such a text.)
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

# An opening or closing fence: up to 3 spaces, then 3+ backticks, then an optional info string.
_FENCE = re.compile(r"^ {0,3}(`{3,})([^`]*)$")
_TICK_RUN = re.compile(r"`{3,}")
_LANGUAGE = re.compile(
    r"[\w+#.-]{1,20}"
)  # an info string kept when a block opened mid-line reopens
_MIN_LIMIT = 16  # room for a fence line, its close and some text


@dataclass(frozen=True)
class Piece:
    """One chunk: ``text == reopen + source[start:end] + close``."""

    text: str
    start: int
    end: int
    reopen: str  # "" or the reopened fence line plus "\n"
    close: str  # "" or the closing fence ("```", preceded by "\n" when the body ends mid-line)


@dataclass(frozen=True)
class _Line:
    start: int
    end: int  # exclusive, includes the trailing "\n" if any
    fence_before: str | None  # the opening fence line in force when this line starts
    is_fence: bool  # a fence line (line start): never cut inside it if avoidable
    # Backtick runs in a line outside a block that open or close one: (start, end, the fence in
    # force from ``end`` on). Cuts inside a run are avoided; a cut after one sees the new state.
    runs: tuple[tuple[int, int, str | None], ...] = ()


def _scan(text: str) -> list[_Line]:
    lines: list[_Line] = []
    open_line: str | None = None
    open_ticks = 0
    pos = 0
    for raw in text.splitlines(keepends=True):
        body = raw.rstrip("\r\n")
        match = _FENCE.match(body)
        is_fence = False
        before = open_line
        runs: list[tuple[int, int, str | None]] = []
        if match is not None:
            ticks = len(match.group(1))
            info = match.group(2).strip()
            if open_line is None:
                open_line, open_ticks, is_fence = body, ticks, True
            elif ticks >= open_ticks and not info:
                open_line, open_ticks, is_fence = None, 0, True
        elif open_line is None:
            # Chat platforms (Discord, Slack) open a code block at ``` in the middle of a line
            # too; runs on that line pair up (```ls``` is inline code). A block left open at the
            # end of the line is then closed like any other: by a fence line.
            for run in _TICK_RUN.finditer(body):
                if open_line is None:
                    info = body[run.end() :].strip()
                    language = info if _LANGUAGE.fullmatch(info) else ""
                    open_line, open_ticks = run.group() + language, len(run.group())
                elif len(run.group()) >= open_ticks:
                    open_line, open_ticks = None, 0
                else:
                    continue
                runs.append((pos + run.start(), pos + run.end(), open_line))
        lines.append(_Line(pos, pos + len(raw), before, is_fence, tuple(runs)))
        pos += len(raw)
    return lines


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = _scan(text)
        self.starts = [line.start for line in self.lines]
        last = self.lines[-1] if self.lines else None
        self.fence_at_end: str | None = None
        if last is not None:
            # The state after the last line: replay it as if one more line started there.
            self.fence_at_end = _scan(text + "\n.")[-1].fence_before

    def fence_at(self, pos: int) -> str | None:
        """The opening fence line in force at ``pos`` (None outside code blocks)."""
        if pos >= len(self.text):
            return self.fence_at_end
        index = bisect.bisect_right(self.starts, pos) - 1
        fence = self.lines[index].fence_before
        for _, end, after in self.lines[index].runs:
            if end <= pos:
                fence = after
        return fence

    def inside_fence_line(self, pos: int) -> bool:
        """True when ``pos`` falls strictly inside a fence marker line or a mid-line run of
        backticks that opens or closes a block (never cut there if avoidable)."""
        if pos >= len(self.text):
            return False
        index = bisect.bisect_right(self.starts, pos) - 1
        line = self.lines[index]
        return (line.is_fence and line.start < pos) or any(
            start < pos < end for start, end, _ in line.runs
        )


def _ticks(fence_line: str) -> str:
    match = _FENCE.match(fence_line)
    return match.group(1) if match else "```"


def _close_for(source: _Text, body_end: int, fence: str | None) -> str:
    if fence is None:
        return ""
    ticks = _ticks(fence)
    if body_end > 0 and source.text[body_end - 1] == "\n":
        return ticks
    return "\n" + ticks


def split_pieces(text: str, *, limit: int) -> list[Piece]:
    """Like ``split_message`` but says which source span each chunk holds and what was added."""
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_LIMIT} characters")
    if not text:
        return []
    source = _Text(text)
    pieces: list[Piece] = []
    pos = 0
    while pos < len(text):
        fence = source.fence_at(pos)
        reopen = fence + "\n" if fence is not None and pos > 0 else ""
        fences = len(reopen) + len(_ticks(fence or "")) + 2 <= limit
        if not fences:
            reopen = ""  # a fence line nearly as long as the limit: plain chunks from here on
        end = _choose_end(source, pos, limit - len(reopen), fences=fences)
        close = _close_for(source, end, source.fence_at(end)) if fences else ""
        pieces.append(Piece(reopen + text[pos:end] + close, pos, end, reopen, close))
        pos = end
    return pieces


def split_message(text: str, *, limit: int) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters (see the module docstring)."""
    return [piece.text for piece in split_pieces(text, limit=limit)]


def _choose_end(source: _Text, pos: int, room: int, *, fences: bool) -> int:
    def _fits(source: _Text, pos: int, end: int, room: int) -> bool:
        close = _close_for(source, end, source.fence_at(end)) if fences else ""
        return (end - pos) + len(close) <= room

    text = source.text
    if _fits(source, pos, len(text), room):
        return len(text)
    # The furthest end that fits, leaving room for a closing fence wherever one may be needed.
    furthest = min(len(text), pos + room)
    while furthest > pos + 1 and not _fits(source, pos, furthest, room):
        furthest -= 1
    window = text[pos:furthest]
    candidates: list[tuple[int, re.Pattern[str]]] = [
        ((furthest - pos) // 2, re.compile(r"\n[ \t]*\n")),  # paragraph, in the second half
        ((furthest - pos) // 4, re.compile(r"\n")),  # line, in the last three quarters
        (0, re.compile(r"\s")),  # any whitespace
    ]
    for minimum, pattern in candidates:
        best = 0
        for match in pattern.finditer(window):
            end = pos + match.end()
            if (
                end - pos > minimum
                and not source.inside_fence_line(end)
                and _fits(source, pos, end, room)
            ):
                best = max(best, end)
        # Keep a run of spaces with this chunk so the next one starts with text (not indentation).
        if best:
            while (
                text[best - 1] in " \t"
                and best < furthest
                and text[best] in " \t"
                and _fits(source, pos, best + 1, room)
                and not source.inside_fence_line(best + 1)
            ):
                best += 1
            return best
    # One word longer than the room: cut it hard, but not inside a fence marker or a run of
    # backticks (half a run would open a block of its own) unless the marker fills the chunk.
    end = max(furthest, pos + 1)
    while end > pos + 1 and source.inside_fence_line(end):
        end -= 1
    return end if not source.inside_fence_line(end) else max(furthest, pos + 1)


def truncate_at_word(text: str, limit: int, *, ellipsis: str = "…") -> str:
    """``text`` if it fits in ``limit`` characters; otherwise its beginning cut at the last word
    boundary that leaves room for ``ellipsis`` (a hard cut only when that would lose more than half
    of the room), trailing spaces dropped, then ``ellipsis``. Never longer than ``limit``."""
    if len(text) <= limit:
        return text
    room = max(limit - len(ellipsis), 0)
    cut = text[:room]
    if room < len(text) and not text[room].isspace():
        boundary = max(cut.rfind(" "), cut.rfind("\n"), cut.rfind("\t"))
        if boundary >= room // 2:
            cut = cut[:boundary]
    return cut.rstrip() + ellipsis
