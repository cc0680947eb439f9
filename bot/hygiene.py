"""Text hygiene for what the bot posts: no control characters, no invisible or bidi-override tricks.

``clean_outgoing`` removes, from text about to be posted on a platform:

- C0 control characters except tab and newline (a carriage return becomes nothing: ``\\r\\n`` is a
  newline), DEL and the C1 controls (U+0080..U+009F);
- zero-width characters that only hide things: ZERO WIDTH SPACE, WORD JOINER, the invisible
  operators U+2061..U+2064, MONGOLIAN VOWEL SEPARATOR and the BOM / ZERO WIDTH NO-BREAK SPACE;
- bidirectional embeddings, overrides and isolates (U+202A..U+202E, U+2066..U+2069), which can make
  text read differently from what it is ("Trojan Source").

Kept on purpose: ZERO WIDTH JOINER and NON-JOINER (emoji sequences such as 👩‍💻 and Persian or Indic
spelling need them) and the plain left-to-right / right-to-left marks (U+200E, U+200F), which
right-to-left writers use and which cannot reorder text on their own. Everything else, any script,
emoji or symbol, passes unchanged. The function is idempotent and works character by character, so
cleaning a growing streamed reply gives a growing cleaned text.

Only egress is cleaned: what users send is stored and given to the model exactly as sent.
"""

from __future__ import annotations

import re

_REMOVED = re.compile(
    "["
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 (but \t, \n), DEL, C1
    "\u180e\u200b\u2060-\u2064\ufeff"  # zero-width and invisible operators
    "\u202a-\u202e\u2066-\u2069"  # bidi embeddings, overrides, isolates
    "]"
)


def clean_outgoing(text: str) -> str:
    """``text`` without control, hidden zero-width or bidi-override characters (see module doc)."""
    return _REMOVED.sub("", text)
