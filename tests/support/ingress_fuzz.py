"""Shared pieces of the ingress fuzzing tests: hostile strings and JSON for hypothesis, a service
hosted on its own event-loop thread (hypothesis drives synchronous tests; the service under test
keeps running between examples), and the checks every ingress must pass for client mistakes."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

# Strings that broke an ingress once, or would: NUL, lone surrogates, bidi overrides, huge ids,
# numbers and keywords where text is expected, separators of dedupe keys, SQL and markup.
SPECIALS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\u202e\u2066evil",
    "None",
    "null",
    "0",
    "-1",
    "9" * 40,
    "a:b",
    "::",
    "'; DROP TABLE jobs; --",
    "<@U0BOT> <!channel>",
    "\r\n\t",
    "東京🙂",
    "\U0010ffff",
)
hostile_text = st.one_of(
    st.sampled_from(SPECIALS),
    st.sampled_from([128, 129, 255, 256, 257, 5000]).map(lambda n: "x" * n),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Cc", "Cf"]), max_size=8),
    st.builds(lambda a, b: a + b, st.sampled_from(SPECIALS), st.text(max_size=10)),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)


def deep_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [b"", b"{", b"[]", b"null", b"\xff\xfe", b"[" * 100_000, deep_json(20_000), b'"\\ud800"']
    ),
)


def dumps(value: Any) -> bytes:
    """JSON as a careless client sends it (lone surrogates escaped, so still valid JSON text)."""
    return json.dumps(value).encode()


def http_headers() -> st.SearchStrategy[dict[str, str]]:
    header_value = st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
    )
    return st.dictionaries(
        st.sampled_from(
            ["Content-Type", "X-Slack-Request-Timestamp", "X-Slack-Signature", "X-Slack-Retry-Num"]
        ),
        header_value,
        max_size=3,
    )


class LoopThread:
    """An asyncio event loop on its own thread: ``run(coro)`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def tracebacks_at_error(records: Sequence[logging.LogRecord]) -> list[str]:
    """Log records at ERROR or above that carry a traceback (a client's mistake must not)."""
    return [
        f"{record.name}: {record.getMessage()}"
        for record in records
        if record.levelno >= logging.ERROR and (record.exc_info or record.exc_text)
    ] + [
        f"{record.name}: {record.getMessage()}"
        for record in records
        if record.levelno >= logging.ERROR and "Traceback" in record.getMessage()
    ]
