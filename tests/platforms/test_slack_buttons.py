"""The buttons under Slack answers (adapters/slack_buttons.py) end to end: the real slack-bolt
receiving signed ``block_actions`` payloads, the real Service and SQLite, the fake Slack. Clicks
are stored exactly like reactions (same table, same report), once however often they are repeated
or replayed; the handoff button hands over like the keyword, only for the asker or an admin."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.slack_buttons import FEEDBACK_ACTION, HANDOFF_ACTION, NEGATIVE, POSITIVE
from bot import texts
from bot.records import ConversationKey, Rating
from tests.support.slack_fake import (
    APP_TOKEN,
    TEAM,
    FakeMessage,
    FakeSlack,
    action_body,
    command_body,
    event_body,
    signed_post,
)
from tests.support.slack_rig import ADMIN, Rig, mention, start_rig

FORM = "application/x-www-form-urlencoded"
SUPPORT = "S0SUPPORT"
THREAD = "1690000000.000001"


@pytest.fixture
def fake(slack_fake: FakeSlack) -> FakeSlack:
    return slack_fake


@pytest.fixture
async def rig(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[Rig]:
    async with start_rig(
        tmp_path,
        fake,
        streaming="native",
        handoff_keyword="talk to a human",
        support_group=SUPPORT,
    ) as value:
        yield value


async def click(
    rig: Rig,
    answer: FakeMessage,
    action: str,
    value: str,
    *,
    user: str,
    name: str = "click",
    **headers: str,
) -> int:
    body = action_body(
        action,
        value,
        user=user,
        channel=answer.channel,
        message_ts=answer.ts,
        thread_ts=answer.thread_ts,
        response_url=rig.fake.response_url(name),
        action_type="feedback_buttons" if action == FEEDBACK_ACTION else "button",
    )
    status, _ = await signed_post(rig.session, rig.url, body, content_type=FORM, headers=headers)
    return status


async def answered(rig: Rig, ts: str = THREAD, question: str = "what is SOLAR?") -> FakeMessage:
    count = len(rig.repository.jobs())
    await rig.event(mention(question, ts=ts))
    await rig.until(lambda: rig.jobs_done(count + 1))
    return [m for m in rig.fake.thread("C0GENERAL", ts) if not m.user][-1]


def elements(answer: FakeMessage) -> list[dict[str, Any]]:
    return [element for block in answer.blocks for element in block.get("elements", [])]


async def test_every_answer_ends_with_feedback_buttons_and_a_handoff_button(rig: Rig) -> None:
    answer = await answered(rig)
    assert answer.stream == "stopped" and answer.text == "You said: Alice: what is SOLAR?"
    assert [block["type"] for block in answer.blocks] == ["context_actions", "actions"]
    feedback, handoff = elements(answer)
    assert feedback["type"] == "feedback_buttons" and feedback["action_id"] == FEEDBACK_ACTION
    assert feedback["positive_button"]["value"] == POSITIVE
    assert feedback["negative_button"]["value"] == NEGATIVE
    assert handoff["action_id"] == HANDOFF_ACTION
    assert handoff["text"]["text"] == texts.SLACK_HANDOFF_BUTTON
    # The edit-based path (a /solar answer) ends with them too, its text in section blocks.
    body = command_body("and you?", response_url=rig.fake.response_url("cmd"))
    await signed_post(rig.session, rig.url, body, content_type=FORM)
    await rig.until(lambda: rig.jobs_done(2))
    [command_answer] = [m for m in rig.fake.thread("C0GENERAL", None) if not m.user]
    kinds = [block["type"] for block in command_answer.blocks]
    assert kinds == ["section", "context_actions", "actions"]
    assert command_answer.blocks[0]["text"]["text"] == command_answer.text
    assert command_answer.text.endswith("You said: Alice: and you?")


async def test_feedback_clicks_are_stored_like_reactions_once_despite_repeats_and_replays(
    rig: Rig,
) -> None:
    answer = await answered(rig)
    [job] = rig.repository.jobs()
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    statuses = await asyncio.gather(
        click(rig, answer, FEEDBACK_ACTION, POSITIVE, user="U0BOB"),
        click(rig, answer, FEEDBACK_ACTION, POSITIVE, user="U0BOB"),
        click(rig, answer, FEEDBACK_ACTION, POSITIVE, user="U0BOB", **retry),
        click(rig, answer, FEEDBACK_ACTION, NEGATIVE, user="U0CAROL"),
    )
    assert statuses == [200, 200, 200, 200]
    ratings = {(f.user_id, f.rating) for f in rig.repository.feedback_for(job.id)}
    assert ratings == {("U0BOB", Rating.UP), ("U0CAROL", Rating.DOWN)}
    # Bob changes his mind: the latest wins, as with reactions; a 👍 reaction keeps working.
    await click(rig, answer, FEEDBACK_ACTION, NEGATIVE, user="U0BOB")
    await rig.event(
        {
            "type": "reaction_added",
            "user": "U0DAVE",
            "reaction": "+1",
            "item_user": "U0BOT",
            "item": {"type": "message", "channel": "C0GENERAL", "ts": answer.ts},
            "event_ts": "1690000009.000001",
        }
    )
    ratings = {(f.user_id, f.rating) for f in rig.repository.feedback_for(job.id)}
    assert ratings == {("U0BOB", Rating.DOWN), ("U0CAROL", Rating.DOWN), ("U0DAVE", Rating.UP)}
    [channel] = rig.repository.feedback_report(platform="slack").channels
    assert (channel.replies, channel.up, channel.down) == (1, 1, 2)  # the same report


async def test_clicks_that_name_no_answer_of_ours_store_nothing(rig: Rig) -> None:
    answer = await answered(rig)
    rig.fake.add_user_message("C0GENERAL", "1690000000.000099", "hi", user="U0ALICE")
    question = rig.fake.messages["1690000000.000099"]
    bot = rig.fake.bot_users
    bot.add("U0OTHERBOT")
    await click(rig, question, FEEDBACK_ACTION, POSITIVE, user="U0BOB")  # not a reply
    await click(rig, answer, FEEDBACK_ACTION, "5-stars", user="U0BOB")  # not a button value
    await click(rig, answer, FEEDBACK_ACTION, POSITIVE, user="U0OTHERBOT")  # a bot
    await click(rig, question, HANDOFF_ACTION, "handoff", user="U0ALICE")
    assert rig.repository.feedback_counts() == {}
    key = ConversationKey(platform="slack", workspace=TEAM, channel="C0GENERAL", thread=THREAD)
    assert not rig.repository.stays_silent(key)


async def test_the_handoff_button_works_for_the_asker_once_and_refuses_others(rig: Rig) -> None:
    answer = await answered(rig)
    key = ConversationKey(platform="slack", workspace=TEAM, channel="C0GENERAL", thread=THREAD)
    await click(rig, answer, HANDOFF_ACTION, "handoff", user="U0BOB", name="bob")
    [refusal] = [r for r in rig.fake.responses if r["_name"] == "bob"]
    assert refusal["response_type"] == "ephemeral" and refusal["replace_original"] is False
    assert refusal["text"] == texts.SLACK_HANDOFF_NOT_YOURS.format(keyword="talk to a human")
    assert not rig.repository.stays_silent(key)

    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    await asyncio.gather(
        click(rig, answer, HANDOFF_ACTION, "handoff", user="U0ALICE"),
        click(rig, answer, HANDOFF_ACTION, "handoff", user="U0ALICE", **retry),
    )
    assert rig.repository.stays_silent(key)
    notices = [m for m in rig.fake.thread("C0GENERAL", THREAD) if f"subteam^{SUPPORT}" in m.text]
    assert len(notices) == 1  # one ping, like the keyword's
    # Stored like the typed keyword: the asker's turn, its job cancelled (no reply).
    assert rig.stored("C0GENERAL", THREAD)[-1] == ("user", "talk to a human")
    # Clicked again later: told privately that it waits for a human; nothing more stored.
    await click(rig, answer, HANDOFF_ACTION, "handoff", user="U0ALICE", name="again")
    [again] = [r for r in rig.fake.responses if r["_name"] == "again"]
    assert "waiting for a human" in again["text"]
    assert len(rig.stored("C0GENERAL", THREAD)) == 3
    assert rig.repository.handoffs_waiting() == 1


async def test_an_admin_may_hand_over_someone_elses_answer(rig: Rig) -> None:
    answer = await answered(rig)
    await click(rig, answer, HANDOFF_ACTION, "handoff", user=ADMIN)
    key = ConversationKey(platform="slack", workspace=TEAM, channel="C0GENERAL", thread=THREAD)
    assert rig.repository.stays_silent(key)


_clicks = st.lists(
    st.tuples(
        st.sampled_from(["U0BOB", "U0CAROL", "U0DAVE"]), st.sampled_from([POSITIVE, NEGATIVE])
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(clicks=_clicks, replays=st.integers(min_value=1, max_value=3))
async def test_stored_feedback_is_each_persons_last_click_however_often_replayed(
    tmp_path_factory: pytest.TempPathFactory, clicks: list[tuple[str, str]], replays: int
) -> None:
    fake = FakeSlack()
    await fake.start()
    try:
        async with start_rig(tmp_path_factory.mktemp("clicks"), fake, streaming="native") as rig:
            answer = await answered(rig)
            [job] = rig.repository.jobs()
            for user, value in clicks:  # each click delivered ``replays`` times at once
                await asyncio.gather(
                    *(click(rig, answer, FEEDBACK_ACTION, value, user=user) for _ in range(replays))
                )
            last = {user: value for user, value in clicks}
            expected = {
                (user, Rating.UP if value == POSITIVE else Rating.DOWN)
                for user, value in last.items()
            }
            stored = rig.repository.feedback_for(job.id)
            assert {(f.user_id, f.rating) for f in stored} == expected
            assert len(stored) == len(last)
    finally:
        await fake.stop()


_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["id", "ts", "team_id", "value"]), st.text(max_size=5)),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.dictionaries(
        st.sampled_from(["user", "team", "container", "channel", "message", "actions"]), _junk
    ),
    action=st.sampled_from([FEEDBACK_ACTION, HANDOFF_ACTION]),
)
async def test_malformed_clicks_get_no_5xx_and_store_nothing(
    rig: Rig, shape: dict[str, Any], action: str
) -> None:
    payload: dict[str, Any] = {
        "type": "block_actions",
        "api_app_id": "A0APP",
        "team": {"id": TEAM},
        "user": {"id": "U0BOB", "team_id": TEAM},
        "actions": [{"action_id": action, "value": POSITIVE, "type": "button"}],
        **shape,
    }
    if not isinstance(payload.get("actions"), list) or not payload["actions"]:
        payload["actions"] = [{"action_id": action}]  # bolt routes by the action id
    elif isinstance(payload["actions"][0], dict):
        payload["actions"][0]["action_id"] = action
    body = urlencode({"payload": json.dumps(payload)})
    status, _ = await signed_post(rig.session, rig.url, body, content_type=FORM)
    assert status < 500
    assert rig.repository.feedback_counts() == {} and rig.repository.jobs() == []


async def test_a_native_answer_and_its_buttons_work_over_socket_mode_too(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with start_rig(
        tmp_path,
        fake,
        mode="socket",
        signing_secret=None,
        app_token=APP_TOKEN,
        streaming="native",
        handoff_keyword="talk to a human",
    ) as rig:
        payload = json.loads(event_body(mention("over a socket", ts=THREAD)))
        await fake.send_envelope("events_api", payload)
        await rig.until(lambda: rig.jobs_done(1))
        [answer] = [m for m in fake.thread("C0GENERAL", THREAD) if not m.user]
        assert answer.stream == "stopped" and answer.text == "You said: Alice: over a socket"
        click = parse_qs(
            action_body(
                FEEDBACK_ACTION,
                NEGATIVE,
                user="U0BOB",
                channel="C0GENERAL",
                message_ts=answer.ts,
                thread_ts=THREAD,
                response_url=fake.response_url("socket"),
                action_type="feedback_buttons",
            )
        )["payload"][0]
        envelope = await fake.send_envelope("interactive", json.loads(click))
        await rig.until(lambda: any(a.get("envelope_id") == envelope for a in fake.acks))
        await rig.until(lambda: bool(rig.repository.feedback_counts()))
        [job] = rig.repository.jobs()
        assert [(f.user_id, f.rating) for f in rig.repository.feedback_for(job.id)] == [
            ("U0BOB", Rating.DOWN)
        ]
