"""Answering from a knowledge base end to end, through the real clients and the local fakes:
discord.py against tests/discord_fake.py and slack-bolt/slack_sdk against tests/slack_fake.py, the
real intake, queue (SQLite and PostgreSQL for Discord) and worker, and the shipped FakeEngine.

A channel gets the Tidewater collection (tests/kb_corpus.py) from an admin in chat; a question's
prompt holds the passages the search ranks, numbered in that order; the reply's citations become
links, an invented [9] is gone; a strict channel says it does not know an off-topic question
without asking the engine; an admin's 📚 on a person's message teaches the channel, and taking
the 📚 away forgets it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from sqlalchemy import text

from adapters.discord import DiscordAdapter, DiscordOptions
from adapters.slack import SlackAdapter, SlackOptions
from bot import answering, texts
from bot.generation.engine import SamplingParams
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.kb.embeddings import load_embedder
from bot.records import JobStatus, KnowledgeMode
from bot.service import Service
from bot.settings import load_settings
from bot.worker import Worker, WorkerOptions
from storage.repository import Repository
from storage.repository.knowledge import QueryVector
from tests.support import kb_corpus
from tests.support.discord_fake import BOT_ID, FakeDiscord
from tests.support.kb_support import build_tiny_embedder
from tests.support.slack_fake import (
    BOT_TOKEN,
    BOT_USER,
    SIGNING_SECRET,
    TEAM,
    FakeSlack,
    command_body,
    event_body,
    signed_post,
)

QUESTION = "how do I install the agent on Windows?"
OFF_TOPIC = "what is the capital of Australia?"
ANSWER = "Run TidewaterSetup.msi as an administrator [1]. It starts at boot [1][9]."
CHECKED = "Run TidewaterSetup.msi as an administrator [1]. It starts at boot [1]."
HANDOFF = "talk to a human"


def expected_order(repository: Repository, question: str) -> list[str]:
    """The "[n] title › heading" lines the prompt must hold, in the search's order."""
    hits = repository.search_passages(collections=[kb_corpus.COLLECTION], query=question)
    return [f"[{n}] {hit.title} › {' › '.join(hit.heading_path)}" for n, hit in enumerate(hits, 1)]


def assert_passages_in_order(prompt: str, lines: list[str]) -> None:
    positions = [prompt.find(line) for line in lines]
    assert all(p >= 0 for p in positions), (lines, prompt)
    assert positions == sorted(positions)
    system = prompt.split("### User:", 1)[0]
    assert all(line in system for line in lines)  # in the system turn
    assert texts.KB_RULE_STRICT not in system or texts.KB_RULE_ASSIST not in system


# ---------------------------------------------------------------------------- Discord

GUILD, GENERAL = 10, 100
ADMIN_ROLE, MEMBER_ROLE = 21, 20
ADMIN_USER, MEMBER_USER = 600, 500
MENTION = f"<@{BOT_ID}>"


@dataclass
class DiscordRig:
    fake: FakeDiscord
    repository: Repository
    engine: FakeEngine
    adapter: DiscordAdapter
    worker: Worker
    task: asyncio.Task[None]

    async def until(self, condition: Callable[[], bool], *, within: float = 15.0) -> None:
        async with asyncio.timeout(within):
            while not condition():
                await asyncio.sleep(0.01)

    def done(self, count: int) -> bool:
        return len(self.repository.jobs(status=JobStatus.DONE)) >= count

    def replies(self) -> list[str]:
        return [m["content"] for m in self.fake.bot_messages(GENERAL)]

    async def admin_says(self, text: str) -> str:
        before = len(self.replies())
        await self.fake.user_message(
            GENERAL,
            f"{MENTION} {text}",
            mentions=(BOT_ID,),
            author_id=ADMIN_USER,
            roles=(ADMIN_ROLE,),
        )
        await self.until(lambda: len(self.replies()) > before)
        return self.replies()[-1]


@pytest.fixture
async def discord_rig(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> AsyncIterator[DiscordRig]:
    fake = FakeDiscord()
    fake.add_guild(GUILD, "home", roles={MEMBER_ROLE: "members", ADMIN_ROLE: "admins"})
    fake.add_channel(GUILD, GENERAL, "general")
    await fake.start()
    fake.point_discord_py_here(monkeypatch)
    repository = Repository.open(database_url)
    kb_corpus.fill(repository)
    engine = FakeEngine(delay_per_chunk=0.002)
    await engine.start()
    adapter = DiscordAdapter(
        DiscordOptions(
            token=fake.token,
            admin_roles=frozenset({ADMIN_ROLE}),
            edit_interval=0.02,
            typing_interval=0.2,
            status_poll=0.05,
            guild_ready_timeout=0.01,
            queue_notice_after=0.0,
        )
    )
    intake = Intake(repository, handoff_keywords=(HANDOFF,))
    intake.register(adapter)
    await adapter.start(intake)
    worker = Worker(
        repository=repository,
        engine=engine,
        adapters={"discord": adapter},
        options=WorkerOptions(
            system_prompt="You are a test bot.",
            max_new_tokens=1000,
            sampling=SamplingParams(temperature=0.0),
            poll_seconds=0.05,
            handoff_keyword=HANDOFF,
            concurrency=1,
            retry_base_seconds=0.01,
            retry_max_seconds=0.05,
        ),
    )
    intake.on_enqueued(worker.wake)
    rig = DiscordRig(fake, repository, engine, adapter, worker, asyncio.create_task(worker.run()))
    yield rig
    await worker.stop(drain_seconds=2)
    await rig.task
    await adapter.stop()
    await fake.close()
    repository.close()


async def test_discord_answers_from_the_collection_with_checked_linked_citations(
    discord_rig: DiscordRig,
) -> None:
    rig = discord_rig
    assert "`tidewater` (assist mode)" in await rig.admin_says("!kb tidewater")
    rig.engine._replies = [ANSWER]
    await rig.fake.user_message(GENERAL, f"{MENTION} {QUESTION}", mentions=(BOT_ID,))
    await rig.until(lambda: rig.done(1))

    lines = expected_order(rig.repository, QUESTION)
    assert lines[0] == "[1] Installing the Tidewater agent › Windows"
    assert_passages_in_order(rig.engine.prompts[0], lines)
    assert texts.KB_RULE_ASSIST in rig.engine.prompts[0]
    reply = rig.replies()[-1]
    assert reply == (
        f"{CHECKED}\n\n{texts.KB_SOURCES}\n"
        "[1] [Installing the Tidewater agent](<https://docs.tidewater.example/install>)"
    )
    [job] = rig.repository.jobs(status=JobStatus.DONE)
    assert job.reply_text == reply
    hits = rig.repository.search_passages(collections=[kb_corpus.COLLECTION], query=QUESTION)
    assert rig.repository.job_chunk_ids(job.id) == tuple(hit.chunk_id for hit in hits)


async def test_discord_a_reply_whose_delivery_failed_is_retried_checked_without_generating_again(
    discord_rig: DiscordRig,
) -> None:
    rig = discord_rig
    await rig.admin_says("!kb tidewater")
    rig.engine._replies = [ANSWER]
    rig.fake.fail_next("PATCH", rf"/channels/{GENERAL}/messages/\d+", status=403)
    await rig.fake.user_message(GENERAL, f"{MENTION} {QUESTION}", mentions=(BOT_ID,))
    await rig.until(lambda: rig.done(1))
    [job] = rig.repository.jobs(status=JobStatus.DONE)
    assert job.attempts == 2 and len(rig.engine.requests) == 1
    assert rig.replies()[-1] == job.reply_text
    assert job.reply_text is not None and job.reply_text.startswith(f"{CHECKED}\n\n")
    assert "[9]" not in job.reply_text and "(<https://docs.tidewater.example/install>)" in (
        job.reply_text
    )


async def test_discord_a_queued_question_shows_source_links_until_its_answer_replaces_them(
    discord_rig: DiscordRig,
) -> None:
    rig = discord_rig
    await rig.admin_says("!kb tidewater")
    long_answer = " ".join(f"word{n}" for n in range(200))
    rig.engine._replies = [long_answer, ANSWER]
    await rig.fake.user_message(GENERAL, f"{MENTION} tell me everything", mentions=(BOT_ID,))
    await rig.fake.user_message(GENERAL, f"{MENTION} {QUESTION}", mentions=(BOT_ID,))
    await rig.until(lambda: rig.done(2))
    # The second question waited behind the first: its placeholder showed its position and the
    # top documents at once, and became the answer.
    [answer] = [m for m in rig.fake.bot_messages(GENERAL) if m["content"].startswith(CHECKED)]
    shown = rig.fake.edits[int(answer["id"])]
    waiting = shown[0]
    assert waiting.startswith("Queued (position 1)…\nWhile I write an answer, these may help: ")
    links = re.findall(r"\[([^\]]+)\]\(<(https://[^>]+)>\)", waiting)
    assert links[0] == ("Installing the Tidewater agent", kb_corpus.link("install"))
    assert 1 <= len(links) <= 3 and len({url for _, url in links}) == len(links)
    assert answer["content"].startswith(CHECKED)


async def test_discord_strict_mode_says_it_does_not_know_without_the_engine(
    discord_rig: DiscordRig,
) -> None:
    rig = discord_rig
    await rig.admin_says("!kb tidewater")
    assert await rig.admin_says("!kb mode strict") == texts.KB_MODE_SET["strict"]
    await rig.fake.user_message(GENERAL, f"{MENTION} {OFF_TOPIC}", mentions=(BOT_ID,))
    await rig.until(lambda: rig.done(1))
    assert rig.replies()[-1] == answering.dont_know(HANDOFF)
    assert f'"{HANDOFF}"' in rig.replies()[-1]
    assert rig.engine.requests == []
    # An on-topic question in the same strict channel is answered from the sources.
    rig.engine._replies = [ANSWER]
    await rig.fake.user_message(GENERAL, f"{MENTION} {QUESTION}", mentions=(BOT_ID,))
    await rig.until(lambda: rig.done(2))
    assert texts.KB_RULE_STRICT in rig.engine.prompts[0]
    assert rig.replies()[-1].startswith(CHECKED)
    # Strict: only the passages relevant enough are given (here not the schedules one).
    hits = rig.repository.search_passages(collections=[kb_corpus.COLLECTION], query=QUESTION)
    relevant = [h for h in hits if answering.relevance(QUESTION, h) >= 0.5]
    assert 0 < len(relevant) < len(hits)
    system = rig.engine.prompts[0].split("### User:")[0]
    assert f"[{len(relevant)}] " in system and f"[{len(relevant) + 1}] " not in system
    [job] = [
        j for j in rig.repository.jobs(status=JobStatus.DONE) if j.reply_text == rig.replies()[-1]
    ]
    assert rig.repository.job_chunk_ids(job.id) == tuple(h.chunk_id for h in relevant)


async def test_discord_an_admins_books_reaction_teaches_the_channel(
    discord_rig: DiscordRig,
) -> None:
    rig = discord_rig
    await rig.admin_says("!kb tidewater")
    said = await rig.fake.user_message(
        GENERAL,
        "To move the agent to a new server, run tidewater migrate --to NEWHOST.",
        author_id=MEMBER_USER,
        roles=(MEMBER_ROLE,),
    )
    message_id = int(said["id"])
    uri = f"chat:discord:{GUILD}:{GENERAL}:{message_id}"

    def learned() -> list[str]:
        documents = rig.repository.documents(collection=kb_corpus.COLLECTION)
        return [d.source_uri for d in documents if d.source_uri.startswith("chat:")]

    # A member's 📚 is only a reaction.
    await rig.fake.user_reaction(message_id, "📚", user_id=MEMBER_USER, roles=(MEMBER_ROLE,))
    await asyncio.sleep(0.3)
    assert learned() == []
    await rig.fake.user_reaction(message_id, "📚", user_id=ADMIN_USER, roles=(ADMIN_ROLE,))
    await rig.until(lambda: learned() == [uri])
    [hit] = rig.repository.search_passages(
        collections=[kb_corpus.COLLECTION], query="migrate agent new server", limit=1
    )
    assert hit.link == f"https://discord.com/channels/{GUILD}/{GENERAL}/{message_id}"
    assert "tidewater migrate" in hit.text and hit.title.startswith("Ana in chat:")
    # The member taking their 📚 back changes nothing; the admin taking theirs back forgets it.
    await rig.fake.user_reaction(message_id, "📚", user_id=MEMBER_USER, added=False)
    await asyncio.sleep(0.3)
    assert learned() == [uri]
    await rig.fake.user_reaction(message_id, "📚", user_id=ADMIN_USER, added=False)
    await rig.until(lambda: learned() == [])


# ---------------------------------------------------------------------------- Slack

ADMIN = "U0ADMIN"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@dataclass
class SlackRig:
    fake: FakeSlack
    engine: FakeEngine
    repository: Repository
    session: aiohttp.ClientSession
    url: str

    async def command(self, text: str, *, user: str = ADMIN) -> None:
        before = len(self.fake.responses)
        body = command_body(text, response_url=self.fake.response_url("r"), user=user)
        status, _ = await signed_post(self.session, self.url, body, content_type=FORM)
        assert status == 200
        await self.fake.wait_for(lambda: len(self.fake.responses) > before)

    async def event(self, event: dict[str, Any]) -> None:
        status, _ = await signed_post(self.session, self.url, event_body(event), content_type=JSON)
        assert status == 200

    async def until(self, condition: Callable[[], bool], *, within: float = 15.0) -> None:
        await self.fake.wait_for(condition, within=within)

    def done(self, count: int) -> bool:
        return len(self.repository.jobs(status=JobStatus.DONE)) >= count


@contextlib.asynccontextmanager
async def running_slack_rig(
    tmp_path: Path, *, embeddings: Path | None = None, streaming: str = "edit"
) -> AsyncIterator[SlackRig]:
    """The service with the Slack adapter against the fake; ``embeddings``: a model folder for
    hybrid retrieval (SOLARBOT_KB_EMBEDDINGS), whose vectors the collection then holds;
    ``streaming``: answers are checked in mrkdwn (``edit``) unless ``native`` is asked for (more
    on that path in test_slack_native_stream.py)."""
    fake = FakeSlack()
    await fake.start()
    settings = load_settings(
        environ={
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_ENGINE": "fake",
            "SOLARBOT_POLL_SECONDS": "0.05",
            "SOLARBOT_HANDOFF_KEYWORDS": HANDOFF,
            "SOLARBOT_KB_PASSAGES": "3",
            "SOLARBOT_WORKER_CONCURRENCY": "1",  # a second question waits in the queue
            **({"SOLARBOT_KB_EMBEDDINGS": str(embeddings)} if embeddings else {}),
        }
    )
    repository = Repository.open(settings.resolved_database_url())
    kb_corpus.fill(repository, embedder=load_embedder(settings.kb_embeddings))
    engine = FakeEngine(delay_per_chunk=0.002)
    slack = SlackAdapter(
        SlackOptions(
            bot_token=BOT_TOKEN,
            signing_secret=SIGNING_SECRET,
            host="127.0.0.1",
            port=0,
            api_url=fake.api_url,
            admin_users=frozenset({ADMIN}),
            model_id="fake-solar",
            default_system_prompt=settings.system_prompt,
            edit_interval=0.02,
            streaming="native" if streaming == "native" else "edit",
        )
    )
    service = Service(
        settings=settings, repository=repository, engine=engine, adapters=[slack], drain_seconds=2
    )
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(10):
        while service.worker is None:
            await asyncio.sleep(0.01)
    session = aiohttp.ClientSession()
    try:
        yield SlackRig(
            fake, engine, repository, session, f"http://127.0.0.1:{slack.http_port}/slack/events"
        )
    finally:
        await session.close()
        service.stopping.set()
        async with asyncio.timeout(10):
            await task
        repository.close()
        await fake.stop()


@pytest.fixture
async def slack_rig(tmp_path: Path) -> AsyncIterator[SlackRig]:
    async with running_slack_rig(tmp_path) as rig:
        yield rig


def mention(text: str, ts: str) -> dict[str, Any]:
    return {
        "type": "app_mention",
        "user": "U0ALICE",
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
        "channel": "C0GENERAL",
        "event_ts": ts,
    }


async def test_slack_answers_from_the_collection_with_checked_linked_citations(
    slack_rig: SlackRig,
) -> None:
    rig = slack_rig
    await rig.command("kb tidewater")
    assert "tidewater" in rig.fake.responses[-1]["text"]
    rig.engine._replies = [ANSWER]
    await rig.event(mention(QUESTION, "1690000000.000001"))
    await rig.until(lambda: rig.done(1))

    lines = expected_order(rig.repository, QUESTION)[:3]  # SOLARBOT_KB_PASSAGES=3
    assert_passages_in_order(rig.engine.prompts[0], lines)
    assert "[4]" not in rig.engine.prompts[0].split("### User:")[0]
    [answer] = rig.fake.thread("C0GENERAL", "1690000000.000001")
    assert answer.text == (
        f"{CHECKED}\n\n*Sources:*\n"
        "[1] <https://docs.tidewater.example/install|Installing the Tidewater agent>"
    )
    assert "[9]" not in "".join(answer.history[-1:])


def slack_links(text: str) -> list[tuple[str, str]]:
    return [(title, url) for url, title in re.findall(r"<(https://[^|>]+)\|([^>]+)>", text)]


def assert_waiting_links(text: str) -> None:
    """``text`` is a placeholder with the top documents for QUESTION as Slack links."""
    assert f"{texts.SLACK_THINKING}\nWhile I write an answer, these may help: " in text
    links = slack_links(text)
    assert links[0] == ("Installing the Tidewater agent", kb_corpus.link("install"))
    assert 1 <= len(links) <= answering.WAITING_LINKS
    assert len({url for _, url in links}) == len(links)


async def test_slack_a_queued_mention_shows_source_links_until_its_answer_replaces_them(
    slack_rig: SlackRig,
) -> None:
    rig = slack_rig
    await rig.command("kb tidewater")
    rig.engine._replies = [" ".join(f"word{n}" for n in range(200)), ANSWER]
    await rig.event(mention("tell me everything", "1690000000.000011"))
    await rig.event(mention(QUESTION, "1690000000.000012"))
    await rig.until(lambda: rig.done(2))
    # The first question did not wait: its answer came without links.
    [first] = rig.fake.thread("C0GENERAL", "1690000000.000011")
    assert not any("While I write" in text for text in first.history)
    # The second waited behind it: one message, the links placeholder, which became the answer.
    [answer] = rig.fake.thread("C0GENERAL", "1690000000.000012")
    assert_waiting_links(answer.history[0])
    assert answer.text.startswith(CHECKED)
    assert "While I write" not in answer.text


async def test_slack_native_a_queued_mention_shows_source_links_until_its_answer_replaces_them(
    tmp_path: Path,
) -> None:
    """Streaming natively, the links placeholder (an ordinary message) is taken over too: the
    answer edits it in standard Markdown, one message, sources linked, buttons under it."""
    async with running_slack_rig(tmp_path, streaming="native") as rig:
        await rig.command("kb tidewater")
        rig.engine._replies = [" ".join(f"word{n}" for n in range(200)), ANSWER]
        await rig.event(mention("tell me everything", "1690000000.000021"))
        await rig.event(mention(QUESTION, "1690000000.000022"))
        await rig.until(lambda: rig.done(2))
        [answer] = rig.fake.thread("C0GENERAL", "1690000000.000022")
        assert_waiting_links(answer.history[0])
        assert answer.text.startswith(CHECKED), answer.text
        assert "While I write" not in answer.text and "[9]" not in answer.text
        assert "(https://docs.tidewater.example/install)" in answer.text
        started = [c.params.get("thread_ts") for c in rig.fake.calls_to("chat.startStream")]
        assert "1690000000.000021" in started  # the first answer streamed natively
        assert "1690000000.000022" not in started  # the second took its placeholder over


async def test_slack_a_queued_solar_question_shows_source_links_until_its_answer_replaces_them(
    slack_rig: SlackRig,
) -> None:
    rig = slack_rig
    await rig.command("kb tidewater")
    rig.engine._replies = [" ".join(f"word{n}" for n in range(200)), ANSWER]
    for question in ("tell me everything", QUESTION):
        body = command_body(question, response_url=rig.fake.response_url("q"))
        status, _ = await signed_post(rig.session, rig.url, body, content_type=FORM)
        assert status == 200
    await rig.until(lambda: rig.done(2))
    placeholders = rig.fake.thread("C0GENERAL", None)
    [asked] = [m for m in placeholders if QUESTION in m.history[0]]
    header = asked.history[0].split("\n\n")[0]
    assert header == f"<@U0ALICE> asked: {QUESTION}"
    # The placeholder quoting the question got the links while it waited, then the answer.
    [with_links] = [text for text in asked.history if "While I write" in text]
    assert with_links.startswith(f"{header}\n\n")
    assert_waiting_links(with_links)
    assert asked.text.startswith(f"{header}\n\n{CHECKED}")
    [first] = [m for m in placeholders if "tell me everything" in m.history[0]]
    assert not any("While I write" in text for text in first.history)


async def test_slack_a_queued_question_in_a_channel_without_a_knowledge_base_gets_no_links(
    slack_rig: SlackRig,
) -> None:
    rig = slack_rig
    rig.engine._replies = [" ".join(f"word{n}" for n in range(200)), ANSWER]
    await rig.event(mention("tell me everything", "1690000000.000021"))
    await rig.event(mention(QUESTION, "1690000000.000022"))
    await rig.until(lambda: rig.done(2))
    [answer] = rig.fake.thread("C0GENERAL", "1690000000.000022")
    assert not any("While I write" in text for text in answer.history)


async def test_slack_hybrid_retrieval_finds_passages_for_a_question_no_keyword_matches(
    tmp_path: Path,
) -> None:
    """With SOLARBOT_KB_EMBEDDINGS the worker embeds the question and fuses the nearest passages
    with the keyword ranking: a question sharing no word with the docs still gets passages."""
    words = " ".join(title for title, _ in kb_corpus.PAGES.values()).lower().split()
    model = build_tiny_embedder(tmp_path / "embedder", words)
    unknown = "qqqq xyzzy?"
    async with running_slack_rig(tmp_path / "service", embeddings=model) as rig:
        assert (
            rig.repository.search_passages(collections=[kb_corpus.COLLECTION], query=unknown) == []
        )
        await rig.command("kb tidewater")
        rig.engine._replies = ["An answer."]
        await rig.event(mention(unknown, "1690000000.000041"))
        await rig.until(lambda: rig.done(1))
    system = rig.engine.prompts[0].split("### User:", 1)[0]
    titles = {title for title, _ in kb_corpus.PAGES.values()}
    assert "[1] " in system and "[3] " in system and "[4] " not in system  # SOLARBOT_KB_PASSAGES=3
    assert any(f"[1] {title}" in system for title in titles)


async def test_slack_strict_mode_says_it_does_not_know_and_offers_the_handoff(
    slack_rig: SlackRig,
) -> None:
    rig = slack_rig
    await rig.command("kb tidewater")
    await rig.command("kb mode strict")
    await rig.event(mention(OFF_TOPIC, "1690000000.000002"))
    await rig.until(lambda: rig.done(1))
    [answer] = rig.fake.thread("C0GENERAL", "1690000000.000002")
    assert answer.text == answering.dont_know(HANDOFF)
    assert rig.engine.requests == []
    assert (
        rig.repository.channel_config(platform="slack", workspace=TEAM, channel="C0GENERAL").kb_mode
        is KnowledgeMode.STRICT
    )


def books(ts: str, *, user: str, added: bool = True) -> dict[str, Any]:
    return {
        "type": "reaction_added" if added else "reaction_removed",
        "user": user,
        "reaction": "books",
        "item_user": "U0CAROL",
        "item": {"type": "message", "channel": "C0GENERAL", "ts": ts},
        "event_ts": f"{time.time():.6f}",
    }


async def test_slack_an_admins_books_reaction_teaches_the_channel(slack_rig: SlackRig) -> None:
    rig = slack_rig
    await rig.command("kb tidewater")
    ts = "1690000500.000100"
    rig.fake.add_user_message(
        "C0GENERAL",
        ts,
        "Carol here: *restarts* fix most agent hangs after an upgrade.",
        user="U0CAROL",
    )
    uri = f"chat:slack:{TEAM}:C0GENERAL:{ts}"

    def learned() -> list[str]:
        documents = rig.repository.documents(collection=kb_corpus.COLLECTION)
        return [d.source_uri for d in documents if d.source_uri.startswith("chat:")]

    await rig.event(books(ts, user="U0ALICE"))  # not an admin: only a reaction
    await asyncio.sleep(0.3)
    assert learned() == []
    await rig.event(books(ts, user=ADMIN))
    await rig.until(lambda: learned() == [uri])
    [hit] = rig.repository.search_passages(
        collections=[kb_corpus.COLLECTION], query="agent hangs after upgrade", limit=1
    )
    assert hit.link == "https://test.slack.com/archives/C0GENERAL/p1690000500000100"
    assert hit.title.startswith("Carol in chat: Carol here:")
    await rig.event(books(ts, user="U0ALICE", added=False))
    await asyncio.sleep(0.3)
    assert learned() == [uri]
    await rig.event(books(ts, user=ADMIN, added=False))
    await rig.until(lambda: learned() == [])


async def test_discord_a_queued_ask_shows_source_links_until_its_answer_replaces_them(
    discord_rig: DiscordRig,
) -> None:
    """The same for ``/ask``: its deferred response shows the position and the top documents."""
    rig = discord_rig
    await rig.admin_says("!kb tidewater")
    rig.engine._replies = [" ".join(f"word{n}" for n in range(200)), ANSWER]
    await rig.fake.user_message(GENERAL, f"{MENTION} tell me everything", mentions=(BOT_ID,))
    await rig.until(lambda: len(rig.repository.jobs()) == 1)
    payload = await rig.fake.slash(GENERAL, "ask", question=QUESTION)
    await rig.until(lambda: rig.done(2))
    (answer,) = rig.fake.interaction_messages(int(payload["id"]))
    waiting = rig.fake.edits[int(answer["id"])][1]  # after Discord's own "thinking…"
    assert waiting.startswith("Queued (position 1)…\nWhile I write an answer, these may help: ")
    links = re.findall(r"\[([^\]]+)\]\(<(https://[^>]+)>\)", waiting)
    assert links[0] == ("Installing the Tidewater agent", kb_corpus.link("install"))
    await rig.until(lambda: answer["content"].startswith(CHECKED))


async def test_slack_a_learned_message_gets_vectors_with_hybrid_retrieval_on(
    tmp_path: Path,
) -> None:
    """With SOLARBOT_KB_EMBEDDINGS an admin's 📚 stores the message with a vector per chunk, as
    `kb add` does, so a question no keyword matches can find it; taking the 📚 back removes
    them."""
    carol = "Carol here: restarts fix most agent hangs after an upgrade."
    words = " ".join(title for title, _ in kb_corpus.PAGES.values()).lower().split()
    model = build_tiny_embedder(tmp_path / "embedder", [*words, *carol.lower().split()])
    ts = "1690000500.000200"
    uri = f"chat:slack:{TEAM}:C0GENERAL:{ts}"
    async with running_slack_rig(tmp_path / "service", embeddings=model) as rig:
        await rig.command("kb tidewater")
        rig.fake.add_user_message("C0GENERAL", ts, carol, user="U0CAROL")
        embedder = load_embedder(model)
        assert embedder is not None

        def learned_vectors() -> list[bytes]:
            with rig.repository.engine.connect() as connection:
                return [
                    bytes(row[0])
                    for row in connection.execute(
                        text(
                            "SELECT v.vector FROM kb_chunks c "
                            "JOIN kb_documents d ON d.id = c.document_id "
                            "JOIN kb_vectors v ON v.chunk_id = c.id "
                            "WHERE d.source_uri = :uri AND v.model = :model"
                        ),
                        {"uri": uri, "model": embedder.model_id},
                    )
                ]

        await rig.event(books(ts, user=ADMIN))
        await rig.until(lambda: len(learned_vectors()) == 1)
        [row] = learned_vectors()
        vector = QueryVector(
            model=embedder.model_id, vector=np.frombuffer(row, dtype=np.float32).tolist()
        )
        [hit] = rig.repository.search_passages(
            collections=[kb_corpus.COLLECTION], query="qqqq xyzzy", query_vector=vector, limit=1
        )
        assert hit.link == "https://test.slack.com/archives/C0GENERAL/p1690000500000200"
        await rig.event(books(ts, user=ADMIN, added=False))
        await rig.until(lambda: learned_vectors() == [])
