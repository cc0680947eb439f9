"""Markdown (what the model writes) -> Slack mrkdwn (what Slack renders).

- ``**bold**`` / ``__bold__`` -> ``*bold*``; ``*italic*`` / ``_italic_`` -> ``_italic_``;
  ``~~strike~~`` -> ``~strike~``; ``# Heading`` -> a bold line; ``- item`` / ``* item`` -> ``• item``;
- ``[text](url)`` and ``![alt](url)`` -> ``<url|text>``;
- fenced code blocks and inline code keep their content; a fence's language tag is dropped (Slack
  would show it as the first code line);
- ``&``, ``<`` and ``>`` are escaped everywhere, code included: Slack stores message text escaped
  and unescapes it for display, and an unescaped ``<!channel>`` would ping the whole channel even
  inside a code block. A ``>`` that starts a line (a quote) is kept. Every character is escaped
  exactly once (a link that is not a web or mail link is shown as ``label (target)``).

No marker travels inside the text: links and bold spans are kept aside as atoms, each stood for by a
character chosen, per conversion, among those the text does not contain (``_Atoms``), so nothing a
model writes can be mistaken for one. Any text converts without an error.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^ {0,3}(`{3,})([^`]*)$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_LINK = re.compile(r"!?\[([^\]\n]*)\]\((\S+?)(?:\s+\"[^\"]*\")?\)")
_BOLD_ITALIC = re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+")
_SAFE_URL = re.compile(r"(https?://|mailto:)[^\s<>|]+$", re.IGNORECASE)
# Where stand-in characters are looked for: the private use areas first, then everything else.
_STAND_IN_RANGES = (
    range(0xE000, 0xF900),
    range(0xF0000, 0x110000),
    range(0x2000, 0xD800),
    range(0xF900, 0xF0000),
)


def _absent_characters(text: str, count: int) -> list[str]:
    """``count`` characters that do not occur in ``text`` (there are always enough: a text holds
    fewer distinct characters than the ranges searched unless it is over a million long)."""
    present = set(text)
    found: list[str] = []
    for block in _STAND_IN_RANGES:
        for code in block:
            if chr(code) not in present:
                found.append(chr(code))
                if len(found) == count:
                    return found
    raise ValueError("text too large to convert: no stand-in character left")


class _Atoms:
    """Finished mrkdwn pieces kept out of the text being converted. ``keep`` returns the stand-in
    character (absent from the original text) that marks the piece's place; ``restore`` puts the
    pieces back in order of appearance. Bold markers get stand-ins of their own, so the italic pass
    cannot take them for italics."""

    def __init__(self, text: str) -> None:
        self.mark, self.bold_open, self.bold_close = _absent_characters(text, 3)
        self._pieces: list[str] = []

    def keep(self, piece: str) -> str:
        self._pieces.append(piece)
        return self.mark

    def restore(self, text: str) -> str:
        pieces = iter(self._pieces)
        text = "".join(next(pieces) if c == self.mark else c for c in text)
        return text.replace(self.bold_open, "*").replace(self.bold_close, "*")


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """Convert one message's Markdown to Slack mrkdwn (see the module docstring)."""
    out: list[str] = []
    prose: list[str] = []
    fence_ticks: str | None = None
    for line in markdown.split("\n"):
        match = _FENCE.match(line)
        if fence_ticks is None:
            if match is not None:
                if prose:
                    out.append(_prose("\n".join(prose)))
                    prose = []
                fence_ticks = match.group(1)
                out.append("```")
            else:
                prose.append(line)
        else:
            if match is not None and len(match.group(1)) >= len(fence_ticks) and not match.group(2):
                fence_ticks = None
                out.append("```")
            else:
                out.append(escape(line))
    if prose:
        out.append(_prose("\n".join(prose)))
    return "\n".join(out)


def _prose(text: str) -> str:
    """Convert text outside fenced code blocks, leaving inline code spans' content alone."""
    parts: list[str] = []
    last = 0
    for match in _INLINE_CODE.finditer(text):
        parts.append(_inline(text[last : match.start()]))
        parts.append("`" + escape(match.group(2).strip("`")) + "`")
        last = match.end()
    parts.append(_inline(text[last:]))
    return "".join(parts)


def _inline(text: str) -> str:
    atoms = _Atoms(text)

    def keep_link(match: re.Match[str]) -> str:
        label = _emphasis(escape(match.group(1).replace("|", "/")), atoms)
        target = escape(match.group(2))
        if not _SAFE_URL.match(match.group(2)):
            # "<!channel|x>" or "<@U123|x>" would ping: only web and mail links become links.
            return atoms.keep(f"{label} ({target})" if label else target)
        return atoms.keep(f"<{target}|{label}>" if label else f"<{target}>")

    text = _LINK.sub(keep_link, text)
    lines = []
    for line in text.split("\n"):
        heading = _HEADING.match(line)
        if heading is not None:
            title = heading.group(1).replace("**", "").replace("__", "")
            lines.append(atoms.bold_open + _emphasis(_escape_line(title), atoms) + atoms.bold_close)
            continue
        line = _BULLET.sub(lambda m: m.group(1) + "• ", line)
        lines.append(_emphasis(_escape_line(line), atoms))
    return atoms.restore("\n".join(lines))


def _escape_line(line: str) -> str:
    quote = re.match(r"^(\s*>+\s?)", line)
    if quote is None:
        return escape(line)
    return quote.group(1) + escape(line[quote.end() :])


def _emphasis(text: str, atoms: _Atoms) -> str:
    bold_open, bold_close = atoms.bold_open, atoms.bold_close
    text = _BOLD_ITALIC.sub(lambda m: bold_open + "_" + m.group(1) + "_" + bold_close, text)
    text = _BOLD.sub(lambda m: bold_open + m.group(2) + bold_close, text)
    text = _ITALIC_STAR.sub(lambda m: "_" + m.group(1) + "_", text)
    return _STRIKE.sub(lambda m: "~" + m.group(1) + "~", text)


_CONTROL = re.compile(r"<([^<>]*)>")


def from_slack(text: str, *, bot_user_id: str = "") -> str:
    """A user's Slack message as plain text for the model: the bot's own mention removed, other
    mentions, channels and links made readable (``<url|label>`` -> ``label (url)``), entities
    unescaped."""

    def readable(match: re.Match[str]) -> str:
        inner = match.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            if bot_user_id and target[1:] == bot_user_id:
                return ""
            return "@" + (label or target[1:])
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("!"):
            return "@" + (label or target[1:].split("^")[0])
        if label and label != target:
            return f"{label} ({target})"
        return target

    plain = _CONTROL.sub(readable, text)
    plain = plain.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]{2,}", " ", plain).strip()
