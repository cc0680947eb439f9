"""Business hours and reminders for handoffs: the schedule (properties over zones and instants), the
held pings and reminders in the database (claimed once, by concurrent senders too, on SQLite and
PostgreSQL), and the whole path through the real Slack adapter and the local fake Slack with a
clock the test moves, across a restart."""

from __future__ import annotations

import asyncio
import threading
import zoneinfo
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.discord import DiscordAdapter, DiscordOptions
from bot import texts
from bot.errors import ConfigError
from bot.handoff_followups import FollowupPolicy, HandoffFollowups
from bot.intake import Intake
from bot.limits import Limits, LimitSettings
from bot.records import FollowupKind, Incoming
from bot.settings import load_settings
from bot.support_hours import SupportHours, parse_support_hours
from storage import database
from storage.repository import Repository
from tests.support.discord_fake import BOT_ID, FakeDiscord
from tests.support.hours_rig import ASKED, BERLIN, Clock, serving, settle
from tests.support.slack_fake import FakeSlack
from tests.support.slack_rig import mention

SUPPORT = "<!subteam^S0SUPPORT>"

# ------------------------------------------------------------------------- the schedule

ZONES = ["UTC", "Europe/Berlin", "America/Santiago", "Australia/Lord_Howe", "Asia/Kolkata"]


@st.composite
def schedules(draw: st.DrawFn) -> SupportHours:
    days = draw(st.sets(st.integers(0, 6), min_size=1))
    start = draw(st.integers(0, 20 * 60))
    end = draw(st.integers(start + 120, 24 * 60))
    zone = zoneinfo.ZoneInfo(draw(st.sampled_from(ZONES)))
    return SupportHours(days=frozenset(days), start=start, end=end, zone=zone)


instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2050, 1, 1), timezones=st.just(UTC)
)


@given(hours=schedules(), now=instants)
def test_the_next_opening_is_open_and_nothing_before_it_is(
    hours: SupportHours, now: datetime
) -> None:
    opening = hours.next_opening(now)
    assert now <= opening < now + timedelta(days=8)
    assert hours.is_open(opening)
    if opening > now:
        # Closed from now until the opening: checked every 20 minutes and just before it.
        probe = now
        while probe < opening:
            assert not hours.is_open(probe), (probe, opening)
            probe += timedelta(minutes=20)
        assert not hours.is_open(opening - timedelta(seconds=1))
    else:
        assert hours.is_open(now)


@given(hours=schedules(), now=instants)
def test_open_means_a_listed_day_between_the_hours_on_the_local_clock(
    hours: SupportHours, now: datetime
) -> None:
    local = now.astimezone(hours.zone)
    minute = local.hour * 60 + local.minute + local.second / 60
    expected = local.weekday() in hours.days and hours.start <= minute < hours.end
    assert hours.is_open(now) is expected


def test_schedules_are_read_per_workspace_with_a_default() -> None:
    schedule = parse_support_hours(
        "Mon-Fri 09:00-17:00 Europe/Berlin; T0NY = Mon,Wed-Thu,Sat 08:30-24:00 America/New_York"
    )
    assert schedule.default is not None and schedule.default.days == frozenset(range(5))
    new_york = schedule.hours_for("T0NY")
    assert new_york is not None and new_york.days == frozenset({0, 2, 3, 5})
    assert (new_york.start, new_york.end) == (8 * 60 + 30, 24 * 60)
    assert schedule.hours_for("T0OTHER") is schedule.default
    assert parse_support_hours("").hours_for("T0OTHER") is None  # always staffed
    assert parse_support_hours("T1=Sat-Sun 10:00-12:00 UTC").hours_for("T2") is None


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("Mon-Fry 09:00-17:00 Europe/Berlin", "'mon-fry' is not a day"),
        ("Mon-Fri 09:00-17:00 Europe/Berlyn", "unknown time zone 'Europe/Berlyn'"),
        ("Mon-Fri 17:00-09:00 UTC", "end after they start"),
        ("Mon-Fri 09:00-25:00 UTC", "not a time of day"),
        ("Fri-Mon 09:00-17:00 UTC", "runs backwards"),
        ("weekdays 9 to 5", "DAYS HH:MM-HH:MM ZONE"),
        ("Mon 09:00-10:00 UTC; Tue 09:00-10:00 UTC", "more than one schedule"),
    ],
)
def test_a_bad_schedule_fails_at_start_naming_the_setting(value: str, said: str) -> None:
    with pytest.raises(ConfigError, match="SOLARBOT_SUPPORT_HOURS") as error:
        load_settings(environ={"SOLARBOT_SUPPORT_HOURS": value})
    assert said in str(error.value)
    with pytest.raises(ConfigError, match="SOLARBOT_HANDOFF_REMINDER_MINUTES"):
        load_settings(environ={"SOLARBOT_HANDOFF_REMINDER_MINUTES": "-1"})


# --------------------------------------------------------- follow-ups in the database


def handoff(repository: Repository, *, user: str = "U1", thread: str = "t1") -> int:
    asked = Incoming(
        platform="slack",
        workspace="T1",
        channel="C1",
        thread=thread,
        author_id=user,
        text="talk to a human",
        message_id=f"m-{thread}",
    )
    result = repository.enqueue(asked, handoff=True)
    assert result is not None and result.handoff and result.created
    return result.job_id


def test_a_due_follow_up_is_claimed_by_exactly_one_of_many_concurrent_senders(
    database_url: str,
) -> None:
    repository = Repository.open(database_url)
    try:
        due = datetime.now(UTC)
        jobs = [handoff(repository, thread=f"t{n}") for n in range(6)]
        for job_id in jobs:
            assert repository.schedule_followup(
                job_id=job_id, kind=FollowupKind.PING, due_at=due, asked_at=due
            )
        claims: list[int] = []
        lock = threading.Lock()
        start = threading.Barrier(8)

        def sender() -> None:
            start.wait()
            for _ in range(3):
                got = repository.claim_due_followups(lease_seconds=60, now=due)
                for followup in got:
                    assert repository.finish_followup(followup, now=due)
                with lock:
                    claims.extend(f.job_id for f in got)

        threads = [threading.Thread(target=sender) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(claims) == sorted(jobs)  # each once, none lost
        assert repository.claim_due_followups(lease_seconds=60, now=due + timedelta(days=1)) == []
    finally:
        repository.close()


def test_a_claim_that_dies_is_taken_over_after_its_lease_and_the_old_one_is_fenced(
    repository: Repository,
) -> None:
    job_id = handoff(repository)
    now = datetime.now(UTC)
    assert repository.schedule_followup(
        job_id=job_id, kind=FollowupKind.PING, due_at=now, asked_at=now
    )
    [first] = repository.claim_due_followups(lease_seconds=30, now=now)
    assert repository.claim_due_followups(lease_seconds=30, now=now + timedelta(seconds=10)) == []
    [second] = repository.claim_due_followups(lease_seconds=30, now=now + timedelta(seconds=31))
    assert second.id == first.id and second.reply_target == first.reply_target
    assert not repository.finish_followup(first)  # the dead claim can no longer mark it
    assert repository.finish_followup(second)
    assert repository.claim_due_followups(lease_seconds=30, now=now + timedelta(hours=1)) == []


def test_not_due_resumed_and_answered_follow_ups_are_not_sent(repository: Repository) -> None:
    now = datetime.now(UTC)
    later = handoff(repository, thread="later")
    resumed = handoff(repository, thread="resumed")
    answered = handoff(repository, thread="answered")
    asker_only = handoff(repository, thread="asker")
    plan = [
        (later, FollowupKind.PING, now + timedelta(hours=1)),
        (resumed, FollowupKind.PING, now),
        (answered, FollowupKind.REMINDER, now),
        (asker_only, FollowupKind.REMINDER, now),
    ]
    for job_id, kind, due in plan:
        assert repository.schedule_followup(job_id=job_id, kind=kind, due_at=due, asked_at=now)
    assert repository.resume_channel(platform="slack", workspace="T1", channel="C1") == 4
    # Handed off anew: the resumed handoff's follow-ups are stale, the new one's are not.
    for thread in ("later", "answered", "asker"):
        again = Incoming(
            platform="slack",
            workspace="T1",
            channel="C1",
            thread=thread,
            author_id="U1",
            text="talk to a human",
            message_id=f"again-{thread}",
        )
        result = repository.enqueue(again, handoff=True)
        assert result is not None and result.handoff
        assert repository.schedule_followup(
            job_id=result.job_id, kind=FollowupKind.REMINDER, due_at=now, asked_at=now
        )
    key = Incoming(
        platform="slack",
        workspace="T1",
        channel="C1",
        thread="answered",
        author_id="x",
        text="x",
        message_id="x",
    ).conversation
    # Both its reminders go: the new handoff's and the stale one of the resumed handoff.
    assert repository.human_wrote_in_handoff(key, author_id="U0AGENT") == 2
    asker = Incoming(
        platform="slack",
        workspace="T1",
        channel="C1",
        thread="asker",
        author_id="x",
        text="x",
        message_id="x",
    ).conversation
    assert repository.human_wrote_in_handoff(asker, author_id="U1") == 0  # the asker: no human
    due = repository.claim_due_followups(lease_seconds=60, now=now)
    assert sorted(f.conversation.thread for f in due) == ["asker", "later"]
    assert (
        repository.schedule_followup(
            job_id=resumed, kind=FollowupKind.PING, due_at=now, asked_at=now
        )
        is False
    )


def test_migration_0013_adds_the_follow_ups_and_goes_down(database_url: str) -> None:
    from sqlalchemy import inspect

    engine = database.create_db_engine(database_url)
    try:
        database.upgrade(engine)
        repository = Repository(engine)
        job_id = handoff(repository)
        assert repository.schedule_followup(
            job_id=job_id,
            kind=FollowupKind.PING,
            due_at=datetime.now(UTC),
            asked_at=datetime.now(UTC),
        )
        database.downgrade(engine, "0012")
        assert "handoff_followups" not in inspect(engine).get_table_names()
        assert len(repository.jobs()) == 1
        database.upgrade(engine)
        assert database.current_revision(engine) == database.head_revision()
        assert repository.claim_due_followups(lease_seconds=1) == []  # gone with the table
    finally:
        engine.dispose()


# ------------------------------------------------ the whole path: Slack, a clock, a restart


async def test_after_hours_the_asker_is_told_when_and_the_ping_waits_for_the_hours_across_a_restart(
    tmp_path: Path, slack_fake: FakeSlack
) -> None:
    # Saturday 10:00 in Berlin: the team is back Monday 09:00, in 47 hours.
    clock = Clock(datetime(2026, 12, 5, 10, 0, tzinfo=BERLIN).astimezone(UTC))
    async with serving(tmp_path, slack_fake, clock) as rig:
        await rig.event(mention("talk to a human please", ts=ASKED))
        await slack_fake.wait_for(lambda: bool(rig.thread()), within=10)
        [told] = rig.thread()
        back = "Mon 09:00 Europe/Berlin time, in 47 h 00 min"
        assert told == texts.HANDOFF_AFTER_HOURS.format(back=back)
        assert SUPPORT not in told
        clock.now += timedelta(hours=20)  # Sunday: still closed
        await settle(rig)
        assert rig.thread() == [told]

    # The process restarts; Monday 09:00:30 comes.
    clock.now = datetime(2026, 12, 7, 9, 0, 30, tzinfo=BERLIN).astimezone(UTC)
    async with serving(tmp_path, slack_fake, clock) as rig:
        await slack_fake.wait_for(lambda: len(rig.thread()) == 2, within=10)
        ping = rig.thread()[1]
        assert ping == f"{SUPPORT} " + texts.HANDOFF_HELD_PING.format(ago="47 h 01 min")
        await settle(rig)
        assert len(rig.thread()) == 2  # once

        # Nobody answers for 30 minutes: one reminder.
        clock.now += timedelta(minutes=29)
        await settle(rig)
        assert len(rig.thread()) == 2
        clock.now += timedelta(minutes=2)
        await slack_fake.wait_for(lambda: len(rig.thread()) == 3, within=10)
        assert rig.thread()[2] == f"{SUPPORT} " + texts.HANDOFF_REMINDER.format(ago="47 h 32 min")
        clock.now += timedelta(hours=3)
        await settle(rig)
        assert len(rig.thread()) == 3  # reminded once


async def test_in_hours_the_ping_is_at_once_and_an_agent_writing_cancels_the_reminder(
    tmp_path: Path, slack_fake: FakeSlack
) -> None:
    clock = Clock(datetime(2026, 12, 7, 11, 0, tzinfo=BERLIN).astimezone(UTC))  # Monday 11:00
    async with serving(tmp_path, slack_fake, clock) as rig:
        await rig.event(mention("talk to a human please", ts=ASKED))
        await slack_fake.wait_for(lambda: bool(rig.thread()), within=10)
        [notice] = rig.thread()
        assert notice.startswith(f"{SUPPORT} Someone here asked for a human")
        # An agent writes in the conversation (the bot stays quiet; the reminder is off).
        agent = mention("I'm on it", ts="1690002000.000002", thread_ts=ASKED)
        agent["user"] = "U0AGENT"
        await rig.event(agent)
        clock.now += timedelta(hours=1)
        await settle(rig)
        assert rig.thread() == [notice]
        assert rig.repository.claim_due_followups(lease_seconds=1, now=clock.now) == []


def test_the_follow_up_table_cascades_with_forget(repository: Repository) -> None:
    job_id = handoff(repository)
    now = datetime.now(UTC)
    assert repository.schedule_followup(
        job_id=job_id, kind=FollowupKind.PING, due_at=now, asked_at=now
    )
    assert repository.forget_channel(platform="slack", workspace="T1", channel="C1") == 1
    assert repository.claim_due_followups(lease_seconds=1, now=now) == []


# ------------------------------------------------- Discord: the support role, pinged later

GUILD, GENERAL, THREAD = 10, 100, 102
MEMBER_ROLE, SUPPORT_ROLE = 20, 21
TOKYO = zoneinfo.ZoneInfo("Asia/Tokyo")


@pytest.fixture
async def discord_fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    fake.add_guild(GUILD, "home", roles={MEMBER_ROLE: "members", SUPPORT_ROLE: "support"})
    fake.add_channel(GUILD, GENERAL, "general")
    fake.add_thread(GUILD, GENERAL, THREAD, "a thread")
    await fake.start()
    fake.point_discord_py_here(monkeypatch)
    yield fake
    await fake.close()


async def test_discord_holds_the_role_ping_until_the_guilds_hours_and_reminds_once(
    discord_fake: FakeDiscord, sqlite_url: str
) -> None:
    """The guild's own schedule (Tokyo); a handoff on Sunday is told Monday 09:00, the role is
    pinged (that role only, as a reply to the asker) when Monday comes, and reminded once 15
    minutes later; a handoff in hours pings at once and is reminded once too."""
    clock = Clock(datetime(2026, 12, 6, 15, 0, tzinfo=TOKYO).astimezone(UTC))  # Sunday
    policy = FollowupPolicy(
        schedule=parse_support_hours(
            f"Sat 10:00-11:00 UTC; {GUILD}=Mon-Fri 09:00-18:00 Asia/Tokyo"
        ),
        reminder_minutes=15,
        clock=clock,
    )
    repository = Repository.open(sqlite_url)
    adapter = DiscordAdapter(
        DiscordOptions(
            token=discord_fake.token,
            support_role=SUPPORT_ROLE,
            guild_ready_timeout=0.01,
            ready_timeout=10.0,
        )
    )
    intake = Intake(repository, handoff_keywords=("talk to a human",), followups=policy)
    intake.register(adapter)
    await adapter.start(intake)
    followups = HandoffFollowups(repository, {"discord": adapter}, policy=policy)

    async def posted(channel: int, count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(10):
            while len(discord_fake.bot_messages(channel)) < count:
                await asyncio.sleep(0.01)
        return discord_fake.bot_messages(channel)

    try:
        asked = await discord_fake.user_message(
            THREAD, f"<@{BOT_ID}> I need to talk to a human", mentions=(BOT_ID,)
        )
        [told] = await posted(THREAD, 1)
        back = "Mon 09:00 Asia/Tokyo time, in 18 h 00 min"
        assert told["content"] == texts.HANDOFF_AFTER_HOURS.format(back=back)
        pinged = told["allowed_mentions"]
        assert not pinged.get("roles") and pinged["parse"] == []  # nobody pinged at night
        assert await followups.send_due() == 0

        clock.now = datetime(2026, 12, 7, 9, 0, tzinfo=TOKYO).astimezone(UTC)
        assert await followups.send_due() == 1
        assert await followups.send_due() == 0
        ping = (await posted(THREAD, 2))[1]
        assert ping["content"] == f"<@&{SUPPORT_ROLE}> " + texts.HANDOFF_HELD_PING.format(
            ago="18 h 00 min"
        )
        assert [str(r) for r in ping["allowed_mentions"]["roles"]] == [str(SUPPORT_ROLE)]
        assert ping["message_reference"]["message_id"] == asked["id"]

        # In hours: pinged at once; nobody answers; one reminder each, 15 minutes on.
        await discord_fake.user_message(
            GENERAL, f"<@{BOT_ID}> talk to a human please", mentions=(BOT_ID,)
        )
        [notice] = await posted(GENERAL, 1)
        assert notice["content"].startswith(f"<@&{SUPPORT_ROLE}> Someone here asked for a human")
        clock.now += timedelta(minutes=14)
        assert await followups.send_due() == 0
        clock.now += timedelta(minutes=2)
        assert await followups.send_due() == 2
        assert (await posted(THREAD, 3))[2]["content"].endswith(
            texts.HANDOFF_REMINDER.format(ago="18 h 16 min")
        )
        assert (await posted(GENERAL, 2))[1]["content"] == (
            f"<@&{SUPPORT_ROLE}> " + texts.HANDOFF_REMINDER.format(ago="16 min")
        )
        clock.now += timedelta(hours=5)
        assert await followups.send_due() == 0
    finally:
        await adapter.stop()
        repository.close()


async def test_a_night_of_requests_is_not_a_morning_of_pings(
    discord_fake: FakeDiscord, sqlite_url: str
) -> None:
    """The ping limits (one per asker within the cooldown) count held pings: Ana asking for a
    human in two conversations at night is told both times, and the role is pinged once."""
    clock = Clock(datetime(2026, 12, 6, 15, 0, tzinfo=TOKYO).astimezone(UTC))  # Sunday
    policy = FollowupPolicy(
        schedule=parse_support_hours("Mon-Fri 09:00-18:00 Asia/Tokyo"), clock=clock
    )
    repository = Repository.open(sqlite_url)
    adapter = DiscordAdapter(
        DiscordOptions(
            token=discord_fake.token, support_role=SUPPORT_ROLE, guild_ready_timeout=0.01
        )
    )
    intake = Intake(
        repository,
        limits=Limits(LimitSettings()),
        handoff_keywords=("talk to a human",),
        followups=policy,
    )
    intake.register(adapter)
    await adapter.start(intake)
    try:
        for channel in (THREAD, GENERAL):
            await discord_fake.user_message(
                channel, f"<@{BOT_ID}> talk to a human", mentions=(BOT_ID,)
            )
            async with asyncio.timeout(10):
                while not discord_fake.bot_messages(channel):
                    await asyncio.sleep(0.01)
            [told] = discord_fake.bot_messages(channel)
            assert told["content"].startswith(texts.HANDOFF_AFTER_HOURS.split("(")[0])
        clock.now = datetime(2026, 12, 7, 9, 0, tzinfo=TOKYO).astimezone(UTC)
        followups = HandoffFollowups(repository, {"discord": adapter}, policy=policy)
        assert await followups.send_due() == 1
        assert await followups.send_due() == 0
        pings = [
            m
            for channel in (THREAD, GENERAL)
            for m in discord_fake.bot_messages(channel)
            if m["content"].startswith(f"<@&{SUPPORT_ROLE}>")
        ]
        assert len(pings) == 1 and pings[0]["channel_id"] == str(THREAD)
    finally:
        await adapter.stop()
        repository.close()


async def test_a_ping_slack_refuses_is_tried_again_when_its_claim_runs_out_and_sent_once(
    tmp_path: Path, slack_fake: FakeSlack
) -> None:
    clock = Clock(datetime(2026, 12, 5, 10, 0, tzinfo=BERLIN).astimezone(UTC))  # Saturday
    async with serving(tmp_path, slack_fake, clock) as rig:
        await rig.event(mention("talk to a human please", ts=ASKED))
        await slack_fake.wait_for(lambda: bool(rig.thread()), within=10)
        slack_fake.fail("chat.postMessage", "internal_error")
        clock.now = datetime(2026, 12, 7, 9, 0, tzinfo=BERLIN).astimezone(UTC)
        await slack_fake.wait_for(lambda: len(slack_fake.calls_to("chat.postMessage")) >= 2)
        await settle(rig)
        assert len(rig.thread()) == 1  # refused, and not hammered: one try per claim
        tries = len(slack_fake.calls_to("chat.postMessage"))
        clock.now += timedelta(seconds=61)
        await slack_fake.wait_for(lambda: len(rig.thread()) == 2, within=10)
        await settle(rig)
        assert len(slack_fake.calls_to("chat.postMessage")) == tries + 1
        assert rig.thread()[1].startswith(f"{SUPPORT} Someone asked for a human here 47 h")


def test_a_process_claims_only_the_follow_ups_of_its_own_platforms(
    repository: Repository,
) -> None:
    now = datetime.now(UTC)
    job_id = handoff(repository)  # a Slack conversation
    assert repository.schedule_followup(
        job_id=job_id, kind=FollowupKind.PING, due_at=now, asked_at=now
    )
    assert repository.claim_due_followups(lease_seconds=60, platforms=["discord"], now=now) == []
    [claimed] = repository.claim_due_followups(lease_seconds=60, platforms=["slack"], now=now)
    assert claimed.conversation.platform == "slack"
