"""Hostile MESSAGE_CREATE payloads through the Discord gateway of tests/support/discord_fake.py, fuzzed with
hypothesis, into the real discord.py client, adapter, intake and SQLite/PostgreSQL store."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import texts
from bot.records import ConversationKey
from bot.storable import FIELD_LIMITS, text_problem
from tests.support.discord_fake import BOT_ID, FakeDiscord
from tests.support.discord_rig import (
    ADMIN_ROLE,
    GENERAL,
    GUILD,
    MANAGE_GUILD,
    MENTION,
    THREAD,
    Rig,
    command,
    start_rig,
)
from tests.support.ingress_fuzz import LoopThread, hostile_text, tracebacks_at_error

UNKNOWN_CHANNEL = 555


@pytest.fixture
def hosted(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LoopThread, FakeDiscord, Rig]]:
    thread = LoopThread()
    fake = FakeDiscord()
    fake.add_guild(GUILD, "home")
    fake.add_channel(GUILD, GENERAL, "general")
    fake.add_thread(GUILD, GENERAL, THREAD, "a thread")
    thread.run(fake.start())
    fake.point_discord_py_here(monkeypatch)
    rig = thread.run(start_rig(fake, database_url))
    try:
        yield thread, fake, rig
    finally:
        thread.run(rig.stop())
        thread.run(fake.close())
        thread.close()


def odd_fields() -> st.SearchStrategy[dict[str, Any]]:
    """Fields a real Discord message may carry that the adapter must not trip over."""
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from([0, 7, 19, 20, 46]),
            "flags": st.sampled_from([0, 1 << 6, 1 << 12]),
            "referenced_message": st.none(),
            "mention_everyone": st.booleans(),
            "nonce": hostile_text,
            "webhook_id": st.just("900000000000000077"),
            "member_nick": hostile_text,
        },
    )


@pytest.mark.slow
def test_fuzzed_messages_never_log_a_traceback_store_the_unstorable_or_stop_the_bot(
    hosted: tuple[LoopThread, FakeDiscord, Rig], caplog: pytest.LogCaptureFixture
) -> None:
    thread, fake, rig = hosted
    caplog.set_level(logging.INFO)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        content=hostile_text,
        author=hostile_text,
        mention=st.booleans(),
        channel=st.sampled_from([GENERAL, THREAD, UNKNOWN_CHANNEL]),
        attachments=st.lists(st.tuples(hostile_text, hostile_text), max_size=2),
        odd=odd_fields(),
    )
    def one_message(
        content: str,
        author: str,
        mention: bool,
        channel: int,
        attachments: list[tuple[str, str]],
        odd: dict[str, Any],
    ) -> None:
        async def send() -> dict[str, Any]:
            text = f"{MENTION} {content}" if mention else content
            payload = await fake.user_message(
                channel,
                text,
                author_name=author,
                mentions=(BOT_ID,) if mention else (),
                attachments=tuple(attachments),
            )
            if odd:  # the same message again, replayed with odd fields (a gateway replay)
                nick = odd.pop("member_nick", None)
                changed = {**payload, **odd}
                if nick is not None and "member" in changed:
                    changed["member"] = {**changed["member"], "nick": nick}
                await fake.dispatch_message(changed)
            await asyncio.sleep(0.03)
            return payload

        renamed = "member_nick" in odd  # a replay under a nickname: another author name
        payload = thread.run(send())
        # What the client receives: JSON joins an escaped surrogate pair into one character.
        content, author = json.loads(json.dumps([content, author]))
        unstorable = text_problem(content) or text_problem(author)
        too_long = len(author.capitalize()) > FIELD_LIMITS["author_name"]
        if not renamed and (unstorable or too_long):
            seen = rig.repository.job_for_event(f"discord:{payload['id']}")
            assert seen is None, unstorable  # refused: nothing stored
        assert tracebacks_at_error(caplog.records) == [], caplog.text[-3000:]
        assert fake.connections == 1  # the gateway connection survived
        caplog.clear()

    one_message()
    # Nothing unstorable was stored anywhere.
    stored = thread.run(asyncio.to_thread(all_stored_text, rig))
    assert [text for text in stored if text_problem(text)] == []
    # ...and the bot still answers.
    thread.run(fake.user_message(GENERAL, f"{MENTION} still there?", mentions=(BOT_ID,)))
    thread.run(rig.until(lambda: any("still there?" in reply for reply in rig.replies(GENERAL))))


def all_stored_text(rig: Rig) -> list[str]:
    texts: list[str] = []
    for channel, thread in ((GENERAL, ""), (GENERAL, str(THREAD)), (THREAD, "")):
        key = ConversationKey(
            platform="discord", workspace=str(GUILD), channel=str(channel), thread=thread
        )
        texts += [m.text for m in rig.repository.messages(key)]
        texts += [m.author_name for m in rig.repository.messages(key)]
    return texts


async def test_an_off_channel_gets_not_even_the_empty_mention_hint(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    fake = FakeDiscord()
    fake.add_guild(
        GUILD, "home", roles={ADMIN_ROLE: "admins"}, permissions={ADMIN_ROLE: MANAGE_GUILD}
    )
    fake.add_channel(GUILD, GENERAL, "general")
    await fake.start()
    fake.point_discord_py_here(monkeypatch)
    rig = await start_rig(fake, sqlite_url)
    try:
        assert texts.DISCORD_EMPTY_MENTION in await command(rig, GENERAL, "")  # on: the hint
        assert "I'm off" in await command(rig, GENERAL, "!off", roles=(ADMIN_ROLE,))
        replies = len(rig.replies(GENERAL))
        await fake.user_message(GENERAL, MENTION, mentions=(BOT_ID,))
        # An admin's status still answers (messages are handled in order: this is a barrier).
        assert "replies off" in await command(rig, GENERAL, "!status", roles=(ADMIN_ROLE,))
        assert len(rig.replies(GENERAL)) == replies + 1
        assert texts.DISCORD_EMPTY_MENTION not in rig.replies(GENERAL)[replies:]
    finally:
        await rig.stop()
        rig.repository.close()
        await fake.close()
