"""Answering from a channel's knowledge base: which passages a question gets, and whether any is
relevant enough for ``strict`` mode.

``retrieve`` searches the channel's collections for the newest message; for a follow-up the
previous user turn joins it as context (``what about Windows?`` after ``how do I install the
agent?``): the hits for the newest message alone come first, then those for both, best first,
without repeats.

Relevance (``relevance``) is the share of the question's search words (``query_terms``: stop words
left out) that a passage contains, in its title, headings or text, a word counting as contained
when one of the passage's words begins with its first ``STEM_CHARS`` letters (``sorting`` finds
``sort``). It is used instead of the search's own score, BM25 with document evidence, which
depends on the corpus and varies between queries, so that one
threshold means the same everywhere. ``DEFAULT_MIN_RELEVANCE`` was calibrated on the collection of
tests/test_kb_answering.py (docs/knowledge-base-answering.md has the figures).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot import texts
from bot.citations import Source, render_link
from bot.hygiene import clean_outgoing
from bot.kb.embeddings import Embedder
from bot.knowledge import Passage
from bot.records import KnowledgeMode
from storage.repository import Repository
from storage.repository.knowledge import QueryVector, query_terms

STEM_CHARS = 5
DEFAULT_MIN_RELEVANCE = 0.5
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, kw_only=True)
class AnswerOptions:
    passages: int = 5  # passages retrieved per question (SOLARBOT_KB_PASSAGES)
    passage_tokens: int = 1500  # their budget in the prompt (SOLARBOT_KB_PASSAGE_TOKENS)
    min_relevance: float = DEFAULT_MIN_RELEVANCE  # strict mode (SOLARBOT_KB_MIN_RELEVANCE)
    embedder: Embedder | None = None  # hybrid retrieval (SOLARBOT_KB_EMBEDDINGS)


def relevance(question: str, passage: Passage) -> float:
    """The share (0..1) of ``question``'s search words found in ``passage``."""
    terms = query_terms(question)
    if not terms:
        return 0.0
    words = set(
        _WORD.findall(" ".join((passage.title, *passage.heading_path, passage.text)).lower())
    )
    # A word is found when a passage word begins with its first STEM_CHARS letters, or when a
    # passage word of four letters or more begins it ("sort" for "sorting").
    prefixes = {word[:n] for word in words for n in range(1, STEM_CHARS + 1)}
    short = {word for word in words if 4 <= len(word) < STEM_CHARS}
    found = sum(
        1
        for term in terms
        if term[:STEM_CHARS] in prefixes or any(term[:n] in short for n in range(4, STEM_CHARS))
    )
    return found / len(terms)


def retrieve(
    repository: Repository,
    *,
    collections: Sequence[str],
    newest: str,
    previous: str | None,
    limit: int,
    embedder: Embedder | None = None,
) -> list[Passage]:
    """The passages for the newest message, then for it with the previous user turn. With an
    ``embedder`` (hybrid retrieval) each query is embedded here: call this on a thread."""

    def search(query: str) -> list[Passage]:
        vector = None
        if embedder is not None:
            [row] = embedder.embed([query])
            vector = QueryVector(model=embedder.model_id, vector=row.tolist())
        return repository.search_passages(
            collections=collections, query=query, limit=limit, query_vector=vector
        )

    hits = search(newest)
    if previous:
        seen = {hit.chunk_id for hit in hits}
        context = search(f"{previous}\n{newest}")
        hits += [hit for hit in context if hit.chunk_id not in seen]
    return hits[:limit]


def best_relevance(passages: Sequence[Passage], *, newest: str, previous: str | None) -> float:
    """How relevant the best passage is to the newest message (or, for a follow-up, to it with
    the previous user turn)."""
    questions = [newest] + ([f"{previous}\n{newest}"] if previous else [])
    return max(
        (relevance(question, passage) for passage in passages for question in questions),
        default=0.0,
    )


def passage_intro(mode: KnowledgeMode) -> str:
    rule = texts.KB_RULE_STRICT if mode is KnowledgeMode.STRICT else texts.KB_RULE_ASSIST
    return texts.KB_INTRO.format(mode_rule=rule)


def sources_of(passages: Sequence[Passage]) -> list[Source]:
    """What the citations of passages numbered [1]..[k] link to."""
    return [Source(title=passage.title, link=passage.link) for passage in passages]


def dont_know(handoff_keyword: str) -> str:
    """Strict mode's answer when nothing relevant was found, with the way to a human where the
    platform hands conversations over (``handoff_keyword`` empty: it does not)."""
    hint = texts.KB_HANDOFF_HINT.format(keyword=handoff_keyword) if handoff_keyword else ""
    return texts.KB_DONT_KNOW.format(handoff=hint)


WAITING_LINKS = 3


def waiting_help(
    repository: Repository, *, collections: Sequence[str], question: str, platform: str
) -> str:
    """For a question waiting in the queue: the top ``WAITING_LINKS`` documents the search finds
    for it, as links for ``platform`` ("" when none has a web link)."""
    if not collections:
        return ""
    hits = repository.search_passages(collections=collections, query=question, limit=10)
    links: dict[str, str] = {}
    for hit in hits:
        if hit.link.startswith(("http://", "https://")) and hit.link not in links:
            links[hit.link] = render_link(hit.title, hit.link, platform=platform)
        if len(links) == WAITING_LINKS:
            break
    if not links:
        return ""
    return clean_outgoing(texts.KB_WHILE_WAITING.format(links=" · ".join(links.values())))
