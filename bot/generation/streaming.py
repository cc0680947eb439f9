"""The loop both local engines stream through: token ids from the generation thread ->
``IncrementalDecoder`` -> ``StopMatcher`` -> text deltas for the caller."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from bot.generation.decoding import Decodes, IncrementalDecoder, StopMatcher


@dataclass(frozen=True, kw_only=True)
class TokenChunk:
    """Token ids generated since the previous chunk; ``done``: the request has finished."""

    ids: Sequence[int]
    done: bool


async def stream_text(
    chunks: AsyncGenerator[TokenChunk, None],
    *,
    tokenizer: Decodes,
    stop_strings: Sequence[str],
) -> AsyncGenerator[str, None]:
    """Text deltas of ``chunks`` until one is ``done``, a stop string is reached (nothing of it is
    yielded) or ``chunks`` ends (a cancelled request). Errors raised by ``chunks`` pass through;
    ``chunks`` is closed when this generator ends or is closed."""
    decoder = IncrementalDecoder(tokenizer)
    matcher = StopMatcher(stop_strings)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            text = decoder.feed(chunk.ids)
            if chunk.done:
                text += decoder.finish()
            result = matcher.feed(text)
            if result.text:
                yield result.text
            if result.stopped:
                return
            if chunk.done:
                rest = matcher.flush()
                if rest:
                    yield rest
                return
