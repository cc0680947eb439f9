"""The buttons under every Discord answer (👍, 👎, "Talk to a human") end to end: clicks are
INTERACTION_CREATE events of component type sent by the fake Discord to the real discord.py
client, handled by the real intake and stored in a real SQLite database."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.discord import DiscordAdapter, DiscordOptions
from adapters.discord_buttons import answer_buttons, custom_id, parse_custom_id
from bot import texts
from bot.intake import Intake
from bot.records import ConversationKey
from storage.repository import Repository
from tests.support.discord_fake import BOT_ID, FakeDiscord
from tests.support.discord_rig import (
    ADMIN_ROLE,
    FAST,
    GENERAL,
    GUILD,
    MEMBER_ROLE,
    MENTION,
    RANDOM,
    THREAD,
    Rig,
    home_discord,
    start_rig,
)

EPHEMERAL = 64
ASKER, OTHER, THIRD = 500, 601, 602


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with home_discord(monkeypatch, elsewhere=False) as fake:
        yield fake


@pytest.fixture
async def rig(fake: FakeDiscord, sqlite_url: str) -> AsyncIterator[Rig]:
    rig = await start_rig(fake, sqlite_url, support_role=ADMIN_ROLE)
    yield rig
    await rig.stop()
    rig.repository.close()


def buttons_of(message: dict[str, Any]) -> list[str]:
    return [
        item["custom_id"]
        for row in message.get("components") or []
        for item in row.get("components", [])
    ]


def votes(rig: Rig, job_id: int) -> set[tuple[str, str]]:
    return {(f.user_id, f.rating.value) for f in rig.repository.feedback_for(job_id)}


async def ask(rig: Rig, channel: int, question: str, *, jobs: int) -> dict[str, Any]:
    """A mention answered; returns the last message of its answer (the one with the buttons)."""
    await rig.fake.user_message(channel, f"{MENTION} {question}", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(jobs))
    await rig.until(lambda: bool(buttons_of(rig.fake.bot_messages(channel)[-1])))
    return rig.fake.bot_messages(channel)[-1]


async def click(
    rig: Rig, message: dict[str, Any], action: str, *, user_id: int = ASKER, **kw: Any
) -> tuple[dict[str, Any], str]:
    """Click ``action`` on ``message``; returns the interaction and what the clicker was told."""
    [value] = [v for v in buttons_of(message) if v.split(":")[1] == action]
    payload = await rig.fake.click(int(message["id"]), value, user_id=user_id, **kw)
    return payload, await told(rig, payload)


async def told(rig: Rig, payload: dict[str, Any]) -> str:
    record = rig.fake.interactions[int(payload["id"])]

    def done() -> bool:
        shown = rig.fake.interaction_messages(record.id)
        return bool(shown) and not int(shown[0]["flags"]) & 128

    await rig.until(done)
    shown = rig.fake.interaction_messages(record.id)
    assert all(int(m["flags"]) & EPHEMERAL for m in shown)  # only the clicker sees it
    assert record.callbacks[0] == {"type": 5, "data": {"flags": EPHEMERAL}}  # deferred first
    return "\n".join(m["content"] for m in shown)


# ---------------------------------------------------------------------------- the buttons


def test_custom_ids_name_a_job_and_nothing_else_parses() -> None:
    for job in (1, 42, 10**18):
        for action in ("up", "down", "human"):
            assert parse_custom_id(custom_id(action, job)) == (action, job)
    for forged in (
        "solarbot:up:0",
        "solarbot:up:-1",
        "solarbot:zap:1",
        "solarbot:up:1:2",
        "solarbot:up: 1",
        "up:1",
        "solarbot:up:" + "9" * 20,
        "",
    ):
        assert parse_custom_id(forged) is None
    view = answer_buttons(7)
    assert view.timeout is None and view.is_persistent()
    assert [item.custom_id for item in view.children] == [  # type: ignore[attr-defined]
        "solarbot:up:7",
        "solarbot:down:7",
        "solarbot:human:7",
    ]


@given(value=st.text(max_size=40) | st.from_regex(r"solarbot:[a-z]{0,6}:-?[0-9]{0,21}"))
def test_a_custom_id_parses_only_when_it_is_exactly_one_of_ours(value: str) -> None:
    parsed = parse_custom_id(value)
    assert parsed is None or custom_id(*parsed) == value


async def test_every_answer_carries_the_buttons_under_its_last_part(rig: Rig) -> None:
    rig.engine._replies = ["word " * 500, "Short."]  # 2500 characters: two parts
    last = await ask(rig, GENERAL, "long?", jobs=1)
    first_part, second_part = rig.fake.bot_messages(GENERAL)
    job = rig.repository.jobs()[0].id
    assert buttons_of(first_part) == []
    assert buttons_of(second_part) == [f"solarbot:{a}:{job}" for a in ("up", "down", "human")]
    assert last == second_part and second_part["content"].split() == ["word"] * (
        len(second_part["content"].split())
    )
    (human,) = [
        item
        for row in second_part["components"]
        for item in row["components"]
        if item["custom_id"].endswith(f"human:{job}")
    ]
    assert human["label"] == texts.DISCORD_BUTTON_HUMAN

    # /ask answers carry them too (under the interaction's last message).
    payload = await rig.fake.slash(GENERAL, "ask", question="and here?")
    await rig.until(lambda: rig.jobs_done(2))
    await rig.until(lambda: bool(buttons_of(rig.fake.interaction_messages(int(payload["id"]))[-1])))
    second_job = rig.repository.jobs()[1].id
    shown = rig.fake.interaction_messages(int(payload["id"]))
    assert buttons_of(shown[-1]) == [f"solarbot:{a}:{second_job}" for a in ("up", "down", "human")]


# ---------------------------------------------------------------------------- rating


async def test_ratings_are_stored_like_reactions_once_per_person_even_when_replayed(
    rig: Rig,
) -> None:
    answer = await ask(rig, GENERAL, "rate me", jobs=1)
    job = rig.repository.jobs()[0].id

    payload, shown = await click(rig, answer, "up", user_id=OTHER)  # anyone may rate
    assert shown == texts.DISCORD_BUTTON_RATED["up"]
    assert votes(rig, job) == {(str(OTHER), "up")}
    for _ in range(2):  # the same click delivered again: acknowledged once, stored once
        await rig.fake.dispatch_interaction(payload)
    _, again = await click(rig, answer, "up", user_id=OTHER)  # a second click: no change
    assert again == texts.DISCORD_BUTTON_RATED["up"]
    await asyncio.sleep(0.2)
    assert len(rig.fake.interactions[int(payload["id"])].callbacks) == 1
    assert len(rig.repository.feedback_for(job)) == 1

    await click(rig, answer, "down", user_id=OTHER)  # another rating replaces theirs
    await click(rig, answer, "down", user_id=THIRD, roles=(MEMBER_ROLE,))
    await rig.fake.user_reaction(int(answer["id"]), "👍", user_id=ASKER)  # reactions still count
    await rig.until(lambda: len(votes(rig, job)) == 3)
    assert votes(rig, job) == {(str(OTHER), "down"), (str(THIRD), "down"), (str(ASKER), "up")}
    # The same table, the same report (`solarbot report`).
    (channel,) = rig.repository.feedback_report(platform="discord").channels
    assert (channel.channel, channel.up, channel.down) == (str(GENERAL), 1, 2)


CLICKERS = (ASKER, OTHER, THIRD)


@settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    clicks=st.lists(
        st.tuples(st.sampled_from(CLICKERS), st.sampled_from(("up", "down")), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_any_sequence_of_clicks_and_replays_stores_each_persons_last_rating(
    clicks: list[tuple[int, str, bool]],
) -> None:
    """Whatever people click, in any order, with any click delivered twice: one row per person,
    holding their last rating; every click acknowledged once and answered once."""

    async def scenario(url: str) -> None:
        fake = FakeDiscord()
        fake.add_guild(GUILD, "home")
        fake.add_channel(GUILD, GENERAL, "general")
        await fake.start()
        with pytest.MonkeyPatch.context() as monkeypatch:
            fake.point_discord_py_here(monkeypatch)
            rig = await start_rig(fake, url)
            try:
                answer = await ask(rig, GENERAL, "rate me", jobs=1)
                job = rig.repository.jobs()[0].id
                expected: dict[str, str] = {}
                for user, action, replayed in clicks:
                    payload, shown = await click(rig, answer, action, user_id=user)
                    assert shown == texts.DISCORD_BUTTON_RATED[action]
                    if replayed:
                        await fake.dispatch_interaction(payload)
                    expected[str(user)] = action
                await asyncio.sleep(0.1)
                assert votes(rig, job) == set(expected.items())
                assert len(rig.repository.feedback_for(job)) == len(expected)
                for record in fake.interactions.values():
                    assert len(record.callbacks) == 1
                    assert len(fake.interaction_messages(record.id)) == 1
            finally:
                await rig.stop()
                rig.repository.close()
                await fake.close()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(scenario(f"sqlite:///{folder}/solarbot.db"))


async def test_buttons_on_an_answer_posted_before_a_restart_still_work(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    first = await start_rig(fake, sqlite_url)
    try:
        answer = await ask(first, GENERAL, "before the restart", jobs=1)
    finally:
        await first.stop()
        first.repository.close()
    rig = await start_rig(fake, sqlite_url)  # a new client, the same database
    try:
        job = rig.repository.jobs()[0].id
        _, shown = await click(rig, answer, "down", user_id=OTHER)
        assert shown == texts.DISCORD_BUTTON_RATED["down"]
        assert votes(rig, job) == {(str(OTHER), "down")}
    finally:
        await rig.stop()
        rig.repository.close()


async def test_a_click_is_acknowledged_before_any_slow_work(rig: Rig, sqlite_url: str) -> None:
    """The database is locked by another writer: the click is acknowledged at once all the
    same, and stored once the lock is gone."""
    answer = await ask(rig, GENERAL, "quick?", jobs=1)
    job = rig.repository.jobs()[0].id
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=5)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        [value] = [v for v in buttons_of(answer) if ":up:" in v]
        payload = await rig.fake.click(int(answer["id"]), value, user_id=OTHER)
        record = rig.fake.interactions[int(payload["id"])]
        await rig.until(lambda: record.acknowledged_at is not None, within=3.0)
        assert record.acknowledged_at is not None and record.acknowledged_at - record.sent_at < 3.0
        await asyncio.sleep(0.3)
        # The work waits for the database (the test does not read it either: every
        # transaction of the repository begins by taking the write lock).
        assert rig.fake.interaction_messages(record.id)[0]["content"] == ""  # still "thinking…"
    finally:
        blocker.rollback()
        blocker.close()
    assert await told(rig, payload) == texts.DISCORD_BUTTON_RATED["up"]
    assert votes(rig, job) == {(str(OTHER), "up")}


async def test_forged_or_unknown_buttons_get_a_clear_answer_and_store_nothing(
    rig: Rig,
) -> None:
    answer = await ask(rig, GENERAL, "one", jobs=1)
    other_answer = await ask(rig, RANDOM, "two", jobs=2)
    other_job = rig.repository.jobs()[1].id
    forged = [
        "solarbot:up:999999",  # no such job
        f"solarbot:up:{other_job}",  # a real job, but not this message's
        "solarbot:zap:1",  # no such action
        "solarbot:",
        "someone-else:button",  # not ours at all
    ]
    message = rig.fake.messages[int(answer["id"])]
    message["components"] = [
        {"type": 1, "components": [{"type": 2, "style": 2, "label": "x", "custom_id": value}]}
        for value in forged
    ]
    for value in forged:
        payload = await rig.fake.click(int(answer["id"]), value, user_id=OTHER)
        record = rig.fake.interactions[int(payload["id"])]
        await rig.until(lambda record=record: bool(rig.fake.interaction_messages(record.id)))  # type: ignore[misc]
        if value.startswith("solarbot:"):
            assert await told(rig, payload) == texts.DISCORD_BUTTON_UNKNOWN
        else:  # answered in the callback itself
            assert record.callbacks[0]["data"]["content"] == texts.DISCORD_BUTTON_UNKNOWN
            assert record.callbacks[0]["data"]["flags"] == EPHEMERAL
    for job in rig.repository.jobs():
        assert rig.repository.feedback_for(job.id) == []
    assert rig.repository.handoffs_waiting() == 0
    assert buttons_of(other_answer)  # the other answer's own buttons are untouched


# ---------------------------------------------------------------------------- handoff


async def test_only_the_asker_or_an_admin_can_hand_off_and_a_replay_is_one_handoff(
    rig: Rig,
) -> None:
    answer = await ask(rig, THREAD, "I need help", jobs=1)
    here = ConversationKey(
        platform="discord", workspace=str(GUILD), channel=str(GENERAL), thread=str(THREAD)
    )

    _, refused = await click(rig, answer, "human", user_id=OTHER, roles=(MEMBER_ROLE,))
    assert refused == texts.DISCORD_BUTTON_HUMAN_ASKER_ONLY
    assert rig.repository.handoffs_waiting() == 0

    payload, notice = await click(rig, answer, "human", user_id=ASKER)
    assert notice.startswith(f"<@&{ADMIN_ROLE}> Someone here asked for a human")
    # The support role is pinged in the conversation, in reply to the answer.
    await rig.until(lambda: len(rig.fake.bot_messages(THREAD)) == 2)
    ping = rig.fake.bot_messages(THREAD)[-1]
    assert ping["content"] == notice
    assert [str(r) for r in ping["allowed_mentions"]["roles"]] == [str(ADMIN_ROLE)]
    assert ping["message_reference"]["message_id"] == answer["id"]
    for _ in range(2):
        await rig.fake.dispatch_interaction(payload)
    await asyncio.sleep(0.3)
    assert rig.repository.handoffs_waiting() == 1
    assert [t for _, t in rig.stored(GENERAL, thread=THREAD)] == [
        "I need help",
        "You said: Ana: I need help",
        texts.DISCORD_BUTTON_HUMAN_TURN,
    ]
    assert len(rig.fake.bot_messages(THREAD)) == 2  # one ping

    # The bot stays quiet there now; an admin's click on another answer hands that one off too.
    assert rig.repository.stays_silent(here)
    other = await ask(rig, GENERAL, "and here", jobs=2)
    _, by_admin = await click(rig, other, "human", user_id=THIRD, roles=(ADMIN_ROLE,))
    assert by_admin.startswith(f"<@&{ADMIN_ROLE}> ")
    assert rig.repository.handoffs_waiting() == 2


async def test_a_worker_process_answers_an_ask_with_buttons_that_the_gateway_process_handles(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    """Scale-out: the gateway process takes the ``/ask`` and the clicks; a REST-only worker
    process (no websocket, no command registration) streams the answer and adds the buttons."""
    repository = Repository.open(sqlite_url)
    ingress = DiscordAdapter(DiscordOptions(token=fake.token, **FAST))
    await ingress.start(Intake(repository))
    worker = await start_rig(fake, sqlite_url, ingress=False)
    try:
        assert len(fake.rest("PUT", r"/commands$")) == 1  # registered by the gateway process
        payload = await fake.slash(GENERAL, "ask", question="who answers?")
        await worker.until(lambda: worker.jobs_done(1))
        await worker.until(
            lambda: bool(buttons_of(fake.interaction_messages(int(payload["id"]))[-1]))
        )
        (message,) = fake.interaction_messages(int(payload["id"]))
        assert message["content"] == "You said: Ana: who answers?"
        assert fake.connections == 1 and fake.identifies == 1  # the worker opened no gateway
        _, shown = await click(worker, message, "up", user_id=OTHER)
        assert shown == texts.DISCORD_BUTTON_RATED["up"]
        assert votes(worker, worker.repository.jobs()[0].id) == {(str(OTHER), "up")}
    finally:
        await worker.stop()
        worker.repository.close()
        await ingress.stop()
        repository.close()


async def test_quick_clicks_count_in_the_order_they_were_made_however_slow_the_acks(
    rig: Rig,
) -> None:
    """👍 then 👎 at once, the 👍 acknowledged last by Discord: the 👎 stands, as it was the
    latest."""
    answer = await ask(rig, GENERAL, "rate me quickly", jobs=1)
    job = rig.repository.jobs()[0].id
    up, down = (v for v in buttons_of(answer) if ":up:" in v or ":down:" in v)
    slow = rig.fake.snowflake()
    rig.fake.callback_delays[slow] = 0.3
    first = await rig.fake.click(int(answer["id"]), up, user_id=OTHER, interaction_id=slow)
    second = await rig.fake.click(int(answer["id"]), down, user_id=OTHER)
    assert await told(rig, second) == texts.DISCORD_BUTTON_RATED["down"]
    assert await told(rig, first) == texts.DISCORD_BUTTON_RATED["up"]
    assert votes(rig, job) == {(str(OTHER), "down")}
