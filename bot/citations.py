"""Checked citations: what the model cites must be what it was given, and the reply links it.

A reply written from knowledge-base passages numbered [1]..[k] (``bot.conversation``) cites them as
``[n]``, ``[n, m]`` (or ``[n; m]``) or ``[n][m]``. ``check_citations`` removes every number that was
not given (``[9]`` with five passages, ``[0]``) and keeps the rest; a bracket left empty goes with
the space before it. Removing one never forms another: in ``[1[0]]`` the brackets around ``[0]``
would close into ``[1]``, a citation the model never wrote, so they go with it. Code is left alone: nothing inside a fenced code block or an inline code span
is touched (``a[1]`` in Python is no citation), and neither is a Markdown link label (``[1](url)``).

``with_sources`` then appends the sources actually cited, in the order first cited, each document
once with the numbers that cite it, rendered for the platform (``render_link``): Slack gets the
Markdown link its adapter turns into ``<url|title>``, Discord ``[title](<url>)`` (the angle brackets
suppress the embed), the console plain ``title: url``. Only http(s) links become links; a source
without one is named by its title.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from bot import texts

# A citation: numbers in brackets, separated by commas or semicolons; not a link label "[1](",
# and not glued to a backtick or tilde run, nor followed by a fence-long one after spaces (removing
# it could turn that run into a code fence).
CITATION = re.compile(r"\[\s*\d{1,6}(?:\s*[,;]\s*\d{1,6})*\s*\](?![(`~])(?![ \t]*(?:`{3}|~{3}))")
_NUMBER = re.compile(r"\d+")
# A fence opens a code block at the start of a line (up to three spaces in) and the same kind of
# fence, at least as long, closes it; an unclosed block runs to the end.
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
_INLINE_CODE = re.compile(r"(`+)(?:.+?)\1", re.DOTALL)
_HORIZONTAL_SPACE = " \t"
# What is left of a bracket that a removed citation sat in: "[1" before it (then "]" after it).
_OPEN_BRACKET_TAIL = re.compile(r"\[[\d\s,;]*\Z")
_MAX_TITLE = 120
_WEB_LINK = re.compile(r"https?://[^\s]+", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class Source:
    """A passage given to the model: its number is its position + 1."""

    title: str
    link: str


@dataclass(frozen=True, kw_only=True)
class CheckedReply:
    text: str  # the reply with every citation of a number not given removed
    cited: tuple[int, ...]  # the numbers cited, in the order first cited


def code_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every fenced code block and inline code span, in order."""
    spans: list[tuple[int, int]] = []
    position = 0
    while True:
        opening = _FENCE.search(text, position)
        prose_end = opening.start() if opening is not None else len(text)
        spans.extend(
            (position + m.start(), position + m.end())
            for m in _INLINE_CODE.finditer(text[position:prose_end])
        )
        if opening is None:
            return spans
        fence = opening.group(1)
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M)
        line_end = text.find("\n", opening.end())
        found = closing.search(text, line_end + 1) if line_end != -1 else None
        end = found.end() if found is not None else len(text)
        spans.append((opening.start(), end))
        position = end


def check_citations(text: str, *, given: int) -> CheckedReply:
    """``text`` with citations of numbers outside 1..``given`` removed (see the module doc)."""
    spans = code_spans(text)
    cited: list[int] = []
    out: list[str] = []
    last = 0
    for match in CITATION.finditer(text):
        if match.start() < last or any(a <= match.start() < b for a, b in spans):
            continue  # in code, or its leading space went with the citation before it
        numbers = [int(n) for n in _NUMBER.findall(match.group())]
        valid = [n for n in dict.fromkeys(numbers) if 1 <= n <= given]
        for number in valid:
            if number not in cited:
                cited.append(number)
        before = text[last : match.start()]
        if all(1 <= n <= given for n in numbers):
            out.append(before + match.group())
        elif valid:
            out.append(before + "[" + ", ".join(str(n) for n in valid) + "]")
        else:
            preceding = text[: match.start()].rstrip(_HORIZONTAL_SPACE)
            if preceding and not preceding.endswith("\n"):
                out.append(before.rstrip(_HORIZONTAL_SPACE))
            else:  # at the start of a line: the space after it goes instead
                out.append(before)
                rest = text[match.end() :]
                last = match.end() + len(rest) - len(rest.lstrip(_HORIZONTAL_SPACE))
                out, last = _without_glued_bracket(out, text, last)
                continue
            out, last = _without_glued_bracket(out, text, match.end())
            continue
        last = match.end()
    out.append(text[last:])
    return CheckedReply(text="".join(out), cited=tuple(cited))


def _without_glued_bracket(out: list[str], text: str, resume: int) -> tuple[list[str], int]:
    """After a citation was removed, where the reply goes on at ``resume``: while what was kept
    (``out``) and what follows would close into a new citation, both halves go too."""
    while True:
        done = "".join(out)
        tail = _OPEN_BRACKET_TAIL.search(done)
        if tail is None:
            return [done], resume
        glued = CITATION.match(tail.group() + text[resume:])
        if glued is None or glued.end() <= len(tail.group()):
            return [done], resume
        kept = done[: tail.start()]
        resume += glued.end() - len(tail.group())
        preceding = kept.rstrip(_HORIZONTAL_SPACE)
        if preceding and not preceding.endswith("\n"):
            kept = preceding  # the space before it goes with it, as above
        else:  # at the start of a line: the space after it goes instead
            rest = text[resume:]
            resume += len(rest) - len(rest.lstrip(_HORIZONTAL_SPACE))
        out = [kept]


def _plain(text: str) -> str:
    """One line, no square brackets (they would end a Markdown link label), not too long."""
    return " ".join(text.replace("[", "(").replace("]", ")").split())[:_MAX_TITLE]


def render_link(title: str, link: str, *, platform: str) -> str:
    """One source, rendered for ``platform`` (see the module docstring)."""
    name = _plain(title) or _plain(link)
    if not _WEB_LINK.fullmatch(link):
        return name
    url = quote(link, safe=":/?#@!$&'*+,;=%~.-_")
    if platform == "console":
        return f"{name}: {url}"
    if platform == "discord":
        return f"[{name}](<{url}>)"
    return f"[{name}]({url})"


def sources_block(sources: Sequence[Source], cited: Sequence[int], *, platform: str) -> str:
    """The sources cited (numbers into ``sources``), in citation order, one document per line
    with every number that cites it; "" when nothing is cited."""
    lines: dict[tuple[str, str], list[int]] = {}
    for number in cited:
        source = sources[number - 1]
        lines.setdefault((source.title, source.link), []).append(number)
    if not lines:
        return ""
    header = texts.KB_SOURCES_PLAIN if platform == "console" else texts.KB_SOURCES
    body = [
        "".join(f"[{n}]" for n in numbers) + " " + render_link(title, link, platform=platform)
        for (title, link), numbers in lines.items()
    ]
    return "\n".join([header, *body])


def with_sources(text: str, sources: Sequence[Source], *, platform: str) -> str:
    """The reply checked against ``sources`` (the passages given, [1] first) and ending with the
    sources it cites."""
    checked = check_citations(text, given=len(sources))
    block = sources_block(sources, checked.cited, platform=platform)
    if not block:
        return checked.text
    return f"{checked.text.rstrip()}\n\n{block}"
