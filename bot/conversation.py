"""The prompt builder: system prompt + the newest turns that fit, counted in the model's real tokens.

The prompt is rendered with the tokenizer's own chat template and measured by tokenizing the whole
rendered prompt (BOS included). Per-turn token counts are only used as a first estimate: SentencePiece
adds a dummy-prefix space at the start of every string, and text merges across turn boundaries (SOLAR's
assistant turns have no separator: "Use C#" + "### User:" tokenizes differently), so counts are not
additive across turns.
The kept turns are always the maximal suffix of the history whose full prompt fits
``context_window - max_new_tokens``.

Role forgery: turn text cannot forge a turn. ``neutralise`` (applied to every turn's content, the
author's display name included: ``turn_content``) removes the number signs in front of anything that
reads as a template header (``### User:``, ``## assistant :``, ``### ### Assistant:``, ``＃＃＃ Ｕｓｅｒ：``,
``#\u200b## User:``, ...), leaving a plain ``User:``, and turns SentencePiece's control tokens
written as text (``<s>``, ``</s>``, ``<unk>``, which the tokenizer would otherwise encode as the real
BOS/EOS/UNK ids) into ``‹s›``, ``‹/s›``, ``‹unk›``. Headers are found on the text's skeleton (NFKC,
case-folded, accents and invisible characters dropped, every kind of space or line break read as a
space), anywhere in a line, and the function repeats until nothing is left to defuse, so its result
is a fixed point. Everything else in the text, line breaks included, is kept. What is stored is
untouched; only the prompt carries the neutralised form. The system prompt is set by admins and
passes as is.

The newest user message is never dropped silently: when it alone (with the system prompt) does not fit,
its longest beginning that fits is kept (cut between characters, never inside one: an emoji written
as four byte tokens is kept whole or left out), and ``TRUNCATION_MARKER`` is appended so the model
sees that the message was cut. ``bot.texts.TRUNCATED_NOTICE`` is what the user is told.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from bot.errors import PromptTooLongError
from bot.generation.engine import Tokenizer

Role = Literal["user", "assistant"]

# Appended (inside the user's message) to a newest message that was cut to fit the context window.
TRUNCATION_MARKER = "\n[… message truncated to fit the model's context window]"

_REPLACEMENT_CHAR = "\ufffd"
# How far past the searched cut a longer fitting prefix is looked for (see _build_truncated).
_LOOKAHEAD_CHARS = 8

# A header as read on the skeleton (``_skeleton``): number signs (spaces between them allowed), a
# role name, optional spaces, a colon.
_HEADER_SKELETON = re.compile(r"#[# ]*(?:system|user|assistant) *:")
# The tokenizer's control tokens, which it recognises inside plain text.
_CONTROL_TOKEN = re.compile(r"<(/?s|unk)>")
# Characters that end a line for a reader (and maybe for the model): kept when a header is defused.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
# Letters that show as nothing (Hangul fillers); format characters (Cf) are found by category.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Mn", "Me"})
# Every character whose skeleton holds "#" (a test checks the whole of Unicode).
NUMBER_SIGNS = re.compile("[#\ufe5f\uff03]")


@functools.lru_cache(maxsize=8192)
def _skeleton_of(char: str) -> str:
    """What one character reads as: a space for any space or line break, nothing for an invisible
    character or an accent, else its NFKC form case-folded without accents."""
    if char.isspace() or char in _LINE_BREAKS:
        return " "
    if char in _BLANK_LETTERS or unicodedata.category(char) in _INVISIBLE_CATEGORIES:
        return ""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", char).casefold())
    return "".join(c for c in decomposed if unicodedata.category(c) not in _INVISIBLE_CATEGORIES)


def _skeleton(text: str) -> tuple[str, list[int]]:
    """``text``'s skeleton and, for each skeleton character, the index of the character it came from."""
    chars: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        shape = _skeleton_of(char)
        chars.append(shape)
        origin.extend([index] * len(shape))
    return "".join(chars), origin


def _defuse_headers(text: str) -> str:
    """``text`` with the number signs (and what hides between them) removed before every header."""
    if NUMBER_SIGNS.search(text) is None:
        return text  # no header without a number sign: skip building the skeleton
    skeleton, origin = _skeleton(text)
    if "#" not in skeleton:
        return text
    parts: list[str] = []
    last = 0
    for match in _HEADER_SKELETON.finditer(skeleton):
        start = origin[match.start()]
        role = len(match.group()) - len(match.group().lstrip("# "))
        end = max(origin[match.start() + role], start + 1)
        parts.append(text[last:start])
        parts.append("".join(c for c in text[start:end] if c in _LINE_BREAKS))
        last = end
    parts.append(text[last:])
    return "".join(parts)


def neutralise(text: str) -> str:
    """``text`` with template headers and control tokens defused (see the module docstring).

    A fixed point: ``neutralise(neutralise(x)) == neutralise(x)``. Each round removes at least one
    character, so the loop ends."""
    while True:
        defused = _CONTROL_TOKEN.sub(lambda m: f"‹{m.group(1)}›", _defuse_headers(text))
        if defused == text:
            return text
        text = defused


@dataclass(frozen=True, kw_only=True)
class Turn:
    """One message of a conversation, oldest first in a history."""

    role: Role
    text: str
    author_name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ("user", "assistant"):
            raise ValueError(f"Turn.role must be 'user' or 'assistant', not {self.role!r}")


class PromptPassage(Protocol):
    """What the prompt shows of a knowledge-base passage (``bot.knowledge.Passage`` has it)."""

    @property
    def title(self) -> str: ...

    @property
    def heading_path(self) -> tuple[str, ...]: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True, kw_only=True)
class BuiltPrompt:
    """A prompt ready for the engine. ``prompt_ids`` start with BOS. ``passages_used``: the
    first passages given (numbered [1]..[k]; a passage over the passage budget is skipped, so
    they are ``passages_given``, a subsequence of the passages offered, in their order)."""

    prompt_ids: list[int]
    prompt_text: str
    turns_used: int
    turns_dropped: int
    newest_truncated: bool
    prompt_tokens: int
    passages_given: tuple[int, ...] = ()  # indexes into the passages offered, in [n] order


def passage_block(intro: str, passages: Sequence[PromptPassage]) -> str:
    """The passages numbered [1]..[k] after ``intro``, each under its title and heading path.
    Passage text is neutralised like turn text: a document cannot forge a turn either."""
    parts = [intro] if intro else []
    for number, passage in enumerate(passages, start=1):
        where = " › ".join(" ".join(p.split()) for p in (passage.title, *passage.heading_path) if p)
        parts.append(neutralise(f"[{number}] {where}\n{passage.text.strip()}"))
    return "\n\n".join(parts)


def turn_content(turn: Turn, text: str | None = None) -> str:
    """The message content the model sees: user turns carry their author's name when known.

    ``text`` overrides ``turn.text`` (used for a truncated newest message).
    """
    body = turn.text if text is None else text
    if turn.role == "user" and turn.author_name:
        name = " ".join(turn.author_name.split())  # one line: a name cannot fake a template header
        if name:
            return neutralise(f"{name}: {body}")
    return neutralise(body)


def _largest_fitting(fits: Callable[[int], bool], *, ok: int, bad: int, guess: int) -> int:
    """The largest ``k`` in ``[ok, bad)`` with ``fits(k)``, assuming ``fits`` is monotone decreasing.

    ``fits(ok)`` is known to be true; ``bad`` is known not to fit (or lies past the range) and is never
    evaluated. Starts at ``guess`` and gallops outwards, so a good guess costs ~2 evaluations.
    """
    lo, hi = ok, bad
    if hi - lo <= 1:
        return lo
    probe = min(max(guess, lo + 1), hi - 1)
    if fits(probe):
        lo, step = probe, 1
        while lo + step < hi:
            if fits(lo + step):
                lo += step
                step *= 2
            else:
                hi = lo + step
                break
    else:
        hi, step = probe, 1
        while hi - step > lo:
            if fits(hi - step):
                lo = hi - step
                break
            hi -= step
            step *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


class PromptBuilder:
    """Builds prompts within ``context_window - max_new_tokens`` tokens."""

    def __init__(self, tokenizer: Tokenizer, *, context_window: int, max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if context_window <= max_new_tokens:
            raise ValueError(
                f"context_window ({context_window}) must exceed max_new_tokens ({max_new_tokens})"
            )
        self._tokenizer = tokenizer
        self.context_window = context_window
        self.max_new_tokens = max_new_tokens

    @property
    def budget(self) -> int:
        """Tokens available to the prompt (BOS included)."""
        return self.context_window - self.max_new_tokens

    def build(
        self,
        *,
        system_prompt: str,
        history: Sequence[Turn],
        passages: Sequence[PromptPassage] = (),
        passage_intro: str = "",
        passage_tokens: int = 0,
    ) -> BuiltPrompt:
        """System prompt + the newest turns of ``history`` (chronological; last = newest user turn).

        With ``passages`` (best first), those that fit ``passage_tokens`` (the block's tokens,
        counted with the model's tokenizer; a passage that would overflow it is skipped) are
        numbered [1]..[k] after ``passage_intro`` in the system turn. History is trimmed first;
        then, when the system turn and the newest message alone do not fit, passages are dropped
        from the last; only without any is the newest message cut."""
        if not history:
            raise ValueError("history is empty: there is no user message to answer")
        newest = history[-1]
        if newest.role != "user":
            raise ValueError(f"the newest turn must be from the user, not {newest.role!r}")
        chosen = self._passages_within(passages, passage_intro, passage_tokens)
        while chosen:
            block = passage_block(passage_intro, [passages[i] for i in chosen])
            system = f"{system_prompt}\n\n{block}" if system_prompt else block
            try:
                built: BuiltPrompt | None = self._build(system_prompt=system, history=history)
            except PromptTooLongError:  # the passages leave no room for the message at all
                built = None
            if built is not None and not built.newest_truncated:
                return dataclasses.replace(built, passages_given=chosen)
            chosen = chosen[:-1]
        return self._build(system_prompt=system_prompt, history=history)

    def _passages_within(
        self, passages: Sequence[PromptPassage], intro: str, budget: int
    ) -> tuple[int, ...]:
        """The indexes of the passages (in order) whose numbered block fits ``budget`` tokens."""
        chosen: list[int] = []
        for index in range(len(passages)):
            block = passage_block(intro, [passages[i] for i in (*chosen, index)])
            if len(self._tokenizer.encode(block, add_bos=False)) <= budget:
                chosen.append(index)
        return tuple(chosen)

    def _build(self, *, system_prompt: str, history: Sequence[Turn]) -> BuiltPrompt:
        newest = history[-1]
        head: list[dict[str, str]] = (
            [{"role": "system", "content": system_prompt}] if system_prompt else []
        )
        messages = [{"role": t.role, "content": turn_content(t)} for t in history]
        rendered: dict[int, tuple[str, list[int]]] = {}

        def render(kept: int) -> tuple[str, list[int]]:
            if kept not in rendered:
                text = self._tokenizer.render_chat(
                    head + messages[len(messages) - kept :], add_generation_prompt=True
                )
                rendered[kept] = (text, self._tokenizer.encode(text, add_bos=True))
            return rendered[kept]

        def fits(kept: int) -> bool:
            return len(render(kept)[1]) <= self.budget

        # A huge newest message is detected from a prefix, without tokenizing all of it.
        leading_ids, complete = self._leading_ids(newest.text)
        if not complete or not fits(1):
            return self._build_truncated(head, newest, len(history), leading_ids)

        kept = _largest_fitting(
            fits, ok=1, bad=len(history) + 1, guess=self._estimate_kept(messages, len(render(1)[1]))
        )
        text, ids = render(kept)
        return BuiltPrompt(
            prompt_ids=ids,
            prompt_text=text,
            turns_used=kept,
            turns_dropped=len(history) - kept,
            newest_truncated=False,
            prompt_tokens=len(ids),
        )

    def _estimate_kept(self, messages: Sequence[dict[str, str]], newest_tokens: int) -> int:
        """A first guess of how many turns fit, from per-turn token counts (not exact)."""
        total, kept = newest_tokens, 1
        for message in reversed(messages[:-1]):
            text = self._tokenizer.render_chat([message], add_generation_prompt=False)
            total += len(self._tokenizer.encode(text, add_bos=False))
            if total > self.budget:
                break
            kept += 1
        return kept

    def _leading_ids(self, text: str) -> tuple[list[int], bool]:
        """Token ids of ``text`` and True, or of a prefix holding more than the whole budget and False.

        Tokenizing a huge message in full would cost far more than the prompt we keep from it. The
        last few ids of a prefix may straddle the cut, so they are dropped; every id that remains
        decodes to a prefix of ``text``.
        """
        margin = 16
        limit = 4 * (self.budget + margin)
        while len(text) > limit:
            ids = self._tokenizer.encode(text[:limit], add_bos=False)
            if len(ids) > self.budget + 2 * margin:
                return ids[:-margin], False
            limit *= 4
        return self._tokenizer.encode(text, add_bos=False), True

    def _build_truncated(
        self,
        head: list[dict[str, str]],
        newest: Turn,
        history_len: int,
        text_ids: list[int],
    ) -> BuiltPrompt:
        """System + the longest beginning of the newest message that fits + ``TRUNCATION_MARKER``.

        The cut is searched in characters of the message itself, never in decoded token ids: a
        character written as several byte tokens (emoji, rare CJK) is either kept whole or left
        out, and whatever is kept is a true prefix of what the user wrote. ``text_ids`` (the ids
        of the message or of a prefix holding more than the budget) only bound and guide the
        search.
        """
        rendered: dict[int, tuple[str, list[int]]] = {}
        # Every id in text_ids decodes to a prefix of the text: no more characters than that fit.
        decoded = self._tokenizer.decode(text_ids).rstrip(_REPLACEMENT_CHAR)
        upper = min(len(newest.text), len(decoded) + 1)

        def render(length: int) -> tuple[str, list[int]]:
            if length not in rendered:
                content = turn_content(newest, newest.text[:length]) + TRUNCATION_MARKER
                text = self._tokenizer.render_chat(
                    [*head, {"role": "user", "content": content}], add_generation_prompt=True
                )
                rendered[length] = (text, self._tokenizer.encode(text, add_bos=True))
            return rendered[length]

        def fits(length: int) -> bool:
            return len(render(length)[1]) <= self.budget

        if not fits(0):
            raise PromptTooLongError(
                f"the system prompt ({len(render(0)[1])} tokens with the newest message's header and "
                f"truncation marker) leaves no room for the message: the prompt budget is "
                f"{self.budget} tokens (context window {self.context_window} minus "
                f"{self.max_new_tokens} reserved for the reply); shorten the system prompt"
            )
        room = self.budget - len(render(0)[1])
        guess = len(self._tokenizer.decode(text_ids[:room]))
        length = _largest_fitting(fits, ok=0, bad=upper, guess=guess)
        # Token counts are not monotone in the prefix length (a longer prefix can merge into fewer
        # tokens), so the search may stop just short of a longer prefix that fits: look a few
        # characters further.
        for longer in range(length + 2, min(length + _LOOKAHEAD_CHARS, upper - 1) + 1):
            if fits(longer):
                length = longer
        text, ids = render(length)
        return BuiltPrompt(
            prompt_ids=ids,
            prompt_text=text,
            turns_used=1,
            turns_dropped=history_len - 1,
            newest_truncated=True,
            prompt_tokens=len(ids),
        )
