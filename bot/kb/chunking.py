"""Cutting a document's blocks into chunks of about ``min_tokens``..``max_tokens`` tokens,
counted with SOLAR's tokenizer.

- A chunk follows the headings: a heading starts a new chunk once the current one holds at least
  ``min_tokens`` (smaller sections are merged with the next, their heading kept as a line of the
  text), and each chunk carries the heading path in effect at its start.
- A chunk holds at most ``max_tokens``, except when a single indivisible piece is larger: a code
  block (never cut) or one word (never cut inside). A paragraph too long for one chunk is cut
  between sentences, and a sentence too long between words.
- Headings are never left dangling at the end of a chunk: they move to the chunk their section
  starts in.
- Chunk texts, in order, hold every block's text in order (blocks joined by a blank line).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.generation.engine import Tokenizer
from bot.kb.extract import Block, BlockKind
from bot.knowledge import ChunkDraft

# Counts the tokens of each text (SOLAR's tokenizer, no BOS).
TokenCounter = Callable[[Sequence[str]], list[int]]

BLOCK_JOINER = "\n\n"
WORD_JOINER = " "
# Tokens a joiner may add when pieces are put together (two newline tokens, and the first word
# of the next piece losing or gaining its leading-space form); the exact count is checked after.
JOIN_ALLOWANCE = 3
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


@dataclass(frozen=True, kw_only=True)
class ChunkLimits:
    max_tokens: int = 300
    min_tokens: int = 200

    def __post_init__(self) -> None:
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ValueError("chunk limits: need 0 < min_tokens <= max_tokens")


@dataclass(frozen=True, kw_only=True)
class _Piece:
    text: str
    tokens: int
    path: tuple[str, ...]
    heading: bool
    indivisible: bool  # a code block, or a single word
    joiner: str  # what goes before it when it follows another piece


def chunk_blocks(
    blocks: Sequence[Block], *, count: TokenCounter, limits: ChunkLimits
) -> list[ChunkDraft]:
    """The chunks of a document's blocks, in order."""
    pieces = _pieces(blocks, count=count, limits=limits)
    groups = _pack(pieces, limits=limits)
    return _exact(groups, count=count, limits=limits)


def _pieces(blocks: Sequence[Block], *, count: TokenCounter, limits: ChunkLimits) -> list[_Piece]:
    counts = count([block.text for block in blocks]) if blocks else []
    pieces: list[_Piece] = []
    stack: list[tuple[int, str]] = []
    for block, tokens in zip(blocks, counts, strict=True):
        if block.kind is BlockKind.HEADING:
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, block.text))
        path = tuple(text for _, text in stack)
        if block.kind is BlockKind.TEXT and tokens > limits.max_tokens:
            pieces.extend(_split_text(block.text, path=path, count=count, limits=limits))
            continue
        pieces.append(
            _Piece(
                text=block.text,
                tokens=tokens,
                path=path,
                heading=block.kind is BlockKind.HEADING,
                indivisible=block.kind is BlockKind.CODE or len(block.text.split()) <= 1,
                joiner=BLOCK_JOINER,
            )
        )
    return pieces


def _split_text(
    text: str, *, path: tuple[str, ...], count: TokenCounter, limits: ChunkLimits
) -> list[_Piece]:
    """A paragraph too long for one chunk, as sentences (and over-long sentences as runs of
    words) each within ``max_tokens`` where a single word allows it."""
    sentences = [part for part in _SENTENCE_END.split(text) if part.strip()]
    pieces: list[_Piece] = []
    for sentence, tokens in zip(sentences, count(sentences), strict=True):
        if tokens <= limits.max_tokens:
            pieces.append(_text_piece(sentence, tokens, path, first=not pieces))
            continue
        words = sentence.split()
        run: list[str] = []
        run_tokens = 0
        for word, word_tokens in zip(words, count(words), strict=True):
            if run and run_tokens + word_tokens > limits.max_tokens - JOIN_ALLOWANCE:
                pieces.append(_text_piece(" ".join(run), run_tokens, path, first=not pieces))
                run, run_tokens = [], 0
            run.append(word)
            run_tokens += word_tokens
        if run:
            pieces.append(_text_piece(" ".join(run), run_tokens, path, first=not pieces))
    return pieces


def _text_piece(text: str, tokens: int, path: tuple[str, ...], *, first: bool) -> _Piece:
    return _Piece(
        text=text,
        tokens=tokens,
        path=path,
        heading=False,
        indivisible=len(text.split()) <= 1,
        joiner=BLOCK_JOINER if first else WORD_JOINER,
    )


def _pack(pieces: Sequence[_Piece], *, limits: ChunkLimits) -> list[list[_Piece]]:
    groups: list[list[_Piece]] = []
    current: list[_Piece] = []
    tokens = 0
    for piece in pieces:
        if current:
            section_break = piece.heading and tokens >= limits.min_tokens
            full = tokens + JOIN_ALLOWANCE + piece.tokens > limits.max_tokens
            if section_break or full:
                carried: list[_Piece] = []
                # Headings go with the section they open, not at the end of the previous chunk.
                while full and current and current[-1].heading and len(current) > 1:
                    carried.insert(0, current.pop())
                groups.append(current)
                current = carried
                tokens = sum(p.tokens + JOIN_ALLOWANCE for p in current)
        current.append(piece)
        tokens += piece.tokens + (JOIN_ALLOWANCE if len(current) > 1 else 0)
    if current:
        groups.append(current)
    return groups


def _join(group: Sequence[_Piece]) -> str:
    return "".join(
        (piece.joiner if index else "") + piece.text for index, piece in enumerate(group)
    )


def _exact(
    groups: list[list[_Piece]], *, count: TokenCounter, limits: ChunkLimits
) -> list[ChunkDraft]:
    """Count each chunk's text exactly; a chunk of several pieces over ``max_tokens`` (the
    joiners cost more than allowed for) is cut in two between pieces and counted again."""
    texts = [_join(group) for group in groups]
    counts = count(texts)
    done: list[tuple[list[_Piece], str, int]] = []
    pending = list(zip(groups, texts, counts, strict=True))
    while pending:
        group, text, tokens = pending.pop(0)
        if tokens <= limits.max_tokens or len(group) == 1:
            done.append((group, text, tokens))
            continue
        half = len(group) // 2
        halves = [group[:half], group[half:]]
        half_texts = [_join(part) for part in halves]
        half_counts = count(half_texts)
        pending[:0] = list(zip(halves, half_texts, half_counts, strict=True))
    return [
        ChunkDraft(position=position, heading_path=group[0].path, text=text, token_count=tokens)
        for position, (group, text, tokens) in enumerate(done)
    ]


def tokenizer_counter(tokenizer: Tokenizer) -> TokenCounter:
    """A ``TokenCounter`` over the engine's ``Tokenizer`` protocol (``HFTokenizer``, or the
    ``FileTokenizer`` a process without an engine loads from the model's files)."""

    def count(texts: Sequence[str]) -> list[int]:
        return [len(tokenizer.encode(text, add_bos=False)) for text in texts]

    return count
