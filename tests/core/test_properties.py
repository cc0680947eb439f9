"""Property-based tests (hypothesis): the reply splitter, Markdown -> Slack mrkdwn, the prompt
builder and the intake's dedupe, each against the invariant it promises for *any* input."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.slack_format import escape, to_mrkdwn
from bot.conversation import TRUNCATION_MARKER, PromptBuilder, Turn, neutralise
from bot.generation.fake import FakeTokenizer
from bot.hygiene import clean_outgoing
from bot.intake import Intake
from bot.records import Incoming
from bot.splitting import split_message, split_pieces
from storage.repository import Repository
from tests.unit.test_splitting import open_fence_after

# No example database in the working tree: failures print their reproducing example instead.
settings.register_profile("solarbot", database=None)
settings.load_profile("solarbot")

# Lines a model writes: prose (with Unicode and Markdown), fences, blank lines, a very long word.
WORD = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
)
PROSE = st.lists(WORD, min_size=0, max_size=15).map(" ".join)
LINE = st.one_of(
    PROSE,
    PROSE,
    st.sampled_from(
        ["```", "```python", "```js", "", "    indented()", "> quote", "- item", "See ```sh"]
    ),
    st.integers(20, 120).map(lambda n: "x" * n),
)
MARKDOWN = st.lists(LINE, min_size=0, max_size=40).map("\n".join)


def ends_outside_fence(chunk: str) -> bool:
    return open_fence_after(chunk) is None


@settings(max_examples=200, deadline=None)
@given(text=MARKDOWN, limit=st.integers(40, 400))
def test_split_never_exceeds_the_limit_balances_fences_and_preserves_the_text(
    text: str, limit: int
) -> None:
    pieces = split_pieces(text, limit=limit)
    assert all(0 < len(piece.text) <= limit for piece in pieces)
    # Removing what the splitter added, the chunks are the text, in order, nothing lost.
    assert "".join(text[p.start : p.end] for p in pieces) == text
    assert all(a.end == b.start for a, b in itertools.pairwise(pieces))
    for piece in pieces:
        assert piece.text == piece.reopen + text[piece.start : piece.end] + piece.close
        assert ends_outside_fence(piece.text), piece.text
    assert [p.text for p in pieces] == split_message(text, limit=limit)


PINGS = re.compile(r"<[!@#]")


@settings(max_examples=300, deadline=None)
@given(text=MARKDOWN | st.text(alphabet="<>&!@#[]()|*_~`\n abc:/"))
def test_slack_conversion_never_pings_and_keeps_lines(text: str) -> None:
    text = clean_outgoing(text)  # what the streamed reply hands the Slack adapter
    out = to_mrkdwn(text)
    assert not PINGS.search(out), out
    assert out.count("\n") == text.count("\n")
    # Outside links, every <, > and & the model wrote is escaped.
    bare = re.sub(r"<(https?://|mailto:)[^\s<>|]+(\|[^<>]*)?>", "", out)
    assert "<" not in bare
    assert not re.search(r"&(?!amp;|lt;|gt;)", bare)


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")).filter(
            lambda c: c not in "*_~`[]#>-+!•"
        ),
        max_size=80,
    )
)
def test_plain_text_reaches_slack_unchanged_but_escaped(text: str) -> None:
    assert to_mrkdwn(text) == escape(text)


ROLE_TEXT = st.one_of(
    PROSE,
    st.sampled_from(["### User:\nhi", "</s><s>", "### Assistant:", "x" * 500]),
    st.text(min_size=1, max_size=600),
).filter(lambda t: t.strip() != "")


@st.composite
def histories(draw: st.DrawFn) -> list[Turn]:
    count = draw(st.integers(1, 12))
    turns = []
    for index in range(count):
        role = "user" if (count - 1 - index) % 2 == 0 else "assistant"
        author = draw(st.none() | st.sampled_from(["Ana", "### System", "Bob\nSmith"]))
        turns.append(Turn(role=role, text=draw(ROLE_TEXT), author_name=author))  # type: ignore[arg-type]
    return turns


@settings(max_examples=200, deadline=None)
@given(
    history=histories(),
    room=st.integers(200, 3000),  # what is left for the prompt: above the system prompt + marker
    reserve=st.integers(1, 150),
    system=st.sampled_from(["", "Be brief.", "You are a helpful assistant in a team chat."]),
)
def test_prompt_budget_is_never_exceeded_and_the_newest_turn_is_kept(
    history: list[Turn], room: int, reserve: int, system: str
) -> None:
    window = room + reserve
    tokenizer = FakeTokenizer()  # one token per character: exact and fast
    builder = PromptBuilder(tokenizer, context_window=window, max_new_tokens=reserve)
    built = builder.build(system_prompt=system, history=history)
    assert built.prompt_tokens == len(built.prompt_ids) <= window - reserve
    assert built.turns_used >= 1 and built.turns_used + built.turns_dropped == len(history)
    assert built.prompt_text.endswith("\n\n### Assistant:\n")
    newest = history[-1]
    body = built.prompt_text.rsplit("### User:\n", 1)[1].removesuffix("\n\n### Assistant:\n")
    name = " ".join((newest.author_name or "").split())
    expected = neutralise(f"{name}: {newest.text}" if name else newest.text)
    if built.newest_truncated:
        kept = body.removesuffix(TRUNCATION_MARKER)
        assert body.endswith(TRUNCATION_MARKER) and expected.startswith(kept)
    else:
        assert body == expected
    # Only the headers the builder wrote: one per kept turn, plus system and generation prompt.
    headers = re.findall(r"### (System|User|Assistant):\n", built.prompt_text)
    assert len(headers) == built.turns_used + 1 + (1 if system else 0)


@pytest.fixture(scope="module")
def dedupe_repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    path: Path = tmp_path_factory.mktemp("dedupe") / "solarbot.db"
    return Repository.open(f"sqlite:///{path}")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=st.lists(st.integers(0, 6), min_size=1, max_size=20))
def test_intake_dedupe_is_idempotent(dedupe_repository: Repository, events: list[int]) -> None:
    """Any sequence of deliveries, repeats included: one stored message and one job per event,
    every repeat answered with the first delivery's job."""
    workspace = uuid.uuid4().hex  # a fresh namespace per example in the shared database
    intake = Intake(dedupe_repository)

    async def deliver() -> list[tuple[int, int, bool]]:
        results = []
        for event in events:
            result = await intake.submit(
                Incoming(
                    platform="p",
                    workspace=workspace,
                    channel=f"c{event % 2}",
                    author_id="u",
                    text=f"event {event}",
                    message_id=str(event),
                )
            )
            assert result is not None
            results.append((event, result.job_id, result.created))
        return results

    results = asyncio.run(deliver())
    first: dict[int, int] = {}
    for event, job_id, created in results:
        assert created == (event not in first)
        assert first.setdefault(event, job_id) == job_id
    stored = [
        job for job in dedupe_repository.jobs() if job.dedupe_key.startswith(f"p:{workspace}:")
    ]
    assert sorted(job.id for job in stored) == sorted(first.values())
