"""Usage quotas: tokens per user and day recorded from the job trace, the daily per-user quota
(SOLARBOT_USER_DAILY_TOKENS) refused at intake through the real Slack adapter and the local fake
Slack, `solarbot usage` as a subprocess, the accounting against a model of it (SQLite and the real
PostgreSQL), the usage day in every time zone, and migration 0012 up and down."""

from __future__ import annotations

import asyncio
import re
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, inspect

from adapters.fake import FakeAdapter
from bot import quota, texts
from bot.errors import ConfigError
from bot.intake import Intake
from bot.limits import Limits, LimitSettings
from bot.records import Incoming, JobTrace
from bot.settings import load_settings
from storage import database
from storage.repository import Repository
from tests.support.processes import solarbot
from tests.support.slack_fake import TEAM, FakeSlack
from tests.support.slack_rig import mention
from tests.support.slack_rig import start_rig as start_slack_rig

# ----------------------------------------------------------------------------- helpers


def answer(
    repository: Repository,
    incoming: Incoming,
    *,
    tokens_in: int,
    tokens_out: int,
    at: datetime | None = None,
) -> int:
    """Store ``incoming`` (enqueued at ``at``) and its reply, with the trace a worker records."""
    created = repository.enqueue(incoming, now=at)
    assert created is not None and created.created
    [job] = repository.claim(
        worker_id="w", limit=1, lease_seconds=60, now=at, platforms=[incoming.platform]
    )
    assert job.id == created.job_id
    trace = JobTrace(prompt_tokens=tokens_in, generation_ms=1, model_id="m")
    assert repository.complete(
        job, reply_text="r", reply_message_ids=["p"], token_count=tokens_out, trace=trace
    )
    return created.job_id


def message(
    *, platform: str = "slack", workspace: str = "T1", channel: str = "C1", user: str = "U1"
) -> Incoming:
    return Incoming(
        platform=platform,
        workspace=workspace,
        channel=channel,
        author_id=user,
        text="a question",
        message_id=uuid.uuid4().hex,
    )


# ------------------------------------------------------------ the quota on the real Slack rig


async def test_a_user_over_the_daily_quota_is_refused_privately_once_with_the_time_until_reset(
    tmp_path: Path, slack_fake: FakeSlack
) -> None:
    """Alice's first answers cost more than the 150 tokens a day allowed: her next mention is
    refused in private (chat.postEphemeral) saying when the allowance resets, her later ones
    and a `/solar` question silently (told once), nothing of them is stored; Bob is answered."""
    environ = {
        "SOLARBOT_USER_DAILY_TOKENS": "150",
        "SOLARBOT_USAGE_TIMEZONE": "Europe/Berlin",
        "SOLARBOT_USER_RATE_PER_MINUTE": "0",
    }
    async with start_slack_rig(tmp_path, slack_fake, environ=environ) as rig:
        await rig.event(mention("hello there", ts="1690000000.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        [first] = rig.repository.jobs()
        [alice] = rig.repository.usage(since=datetime.now(UTC) - timedelta(days=1)).users
        assert (alice.who, alice.replies) == ("U0ALICE", 1)
        assert alice.tokens_in == first.prompt_tokens and alice.tokens_in > 0
        assert alice.tokens_out == len("You said: Alice: hello there")  # 1 char = 1 token
        assert alice.tokens < 150  # under the quota: the next one is answered too
        await rig.event(mention("and now?", ts="1690000000.000002"))
        await rig.until(lambda: rig.jobs_done(2))
        used = rig.repository.tokens_used(
            platform="slack",
            workspace=TEAM,
            author_id="U0ALICE",
            since=quota.day_start(datetime.now(UTC), zoneinfo.ZoneInfo("Europe/Berlin")),
        )
        [alice] = rig.repository.usage(since=datetime.now(UTC) - timedelta(days=1)).users
        assert used == alice.tokens and alice.replies == 2
        assert used >= 150

        for n in range(3, 6):
            await rig.event(mention(f"one more {n}", ts=f"1690000000.00000{n}"))
        await rig.command("a question by command", name="cmd")
        bob = mention("hi from bob", ts="1690000000.000009")
        bob["user"] = "U0BOB"
        await rig.event(bob)
        await rig.until(lambda: rig.jobs_done(3))
        await asyncio.sleep(0.3)

        [told] = slack_fake.ephemerals
        assert told["user"] == "U0ALICE"
        wait = re.fullmatch(
            re.escape(texts.LIMIT_DAILY_TOKENS.split("{wait}")[0].format(quota=150))
            + r"((\d+) h (\d\d) min|(\d+) min)"
            + re.escape(" (at midnight, Europe/Berlin time)."),
            told["text"],
        )
        assert wait is not None, told["text"]
        now = datetime.now(UTC)
        reset = quota.next_reset(now, zoneinfo.ZoneInfo("Europe/Berlin"))
        minutes = (
            int(wait.group(2)) * 60 + int(wait.group(3)) if wait.group(2) else int(wait.group(4))
        )
        assert abs(minutes * 60 - (reset - now).total_seconds()) <= 120
        # Nothing of the refused messages was stored; the command's ack said nothing either.
        assert len(rig.repository.jobs()) == 3
        assert not [r for r in slack_fake.responses if r["_name"] == "cmd"]
        public = [m.text for m in slack_fake.messages.values() if not m.deleted]
        assert "You said: Bob: hi from bob" in public
        assert not any("one more" in text or "by command" in text for text in public)


# ------------------------------------------------ the bound: a burst, and what is in flight


async def test_a_burst_exceeds_the_quota_by_at_most_the_jobs_in_flight_when_it_was_reached(
    sqlite_url: str,
) -> None:
    """Tokens are known once a reply is generated: a burst admitted while the user was under the
    quota (no worker yet: all of it in flight) is answered, and the overshoot is at most those
    in-flight jobs; once their cost is recorded, every later message is refused."""
    repository = Repository.open(sqlite_url)
    adapter = FakeAdapter(platform="slack")
    limits = Limits(
        LimitSettings(user_daily_tokens=1000, user_rate_per_minute=0, channel_rate_per_minute=0)
    )
    intake = Intake(repository, limits=limits)
    intake.register(adapter)
    try:
        answer(repository, message(), tokens_in=600, tokens_out=300)  # 900 < 1000: still open
        burst = [message() for _ in range(8)]
        results = await asyncio.gather(*(intake.submit(m) for m in burst))
        assert all(r is not None and r.created for r in results)  # all in flight, none priced
        trace = JobTrace(prompt_tokens=60, generation_ms=1, model_id="m")
        while claimed := repository.claim(worker_id="w", limit=100, lease_seconds=60):
            for job in claimed:  # one at a time: they are in one conversation
                assert repository.complete(
                    job, reply_text="r", reply_message_ids=["p"], token_count=40, trace=trace
                )
        used = repository.tokens_used(
            platform="slack", workspace="T1", author_id="U1", since=datetime.now(UTC) - timedelta(1)
        )
        assert used == 900 + 8 * 100
        assert used - 1000 <= len(burst) * 100  # the overshoot: the in-flight jobs' cost
        later = await asyncio.gather(*(intake.submit(message()) for _ in range(5)))
        assert all(r is not None and r.refused == "daily_tokens" for r in later)
        assert len(adapter.notices) == 1  # told once
        other = await intake.submit(message(user="U2"))
        assert other is not None and other.created
    finally:
        repository.close()


# --------------------------------------------------------------- the accounting, as a model


@dataclass(frozen=True)
class Spent:
    user: str
    workspace: str
    channel: str
    thread: str
    day: int  # days before today
    tokens_in: int | None  # None: not generated (no trace)
    tokens_out: int


spent_jobs = st.lists(
    st.builds(
        Spent,
        user=st.sampled_from(["U1", "U2", "U3"]),
        workspace=st.sampled_from(["T1", "T2"]),
        channel=st.sampled_from(["C1", "C2"]),
        thread=st.sampled_from(["", "1.5"]),
        day=st.integers(0, 3),
        tokens_in=st.none() | st.integers(0, 5000),
        tokens_out=st.integers(0, 2000),
    ),
    max_size=14,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(jobs=spent_jobs, days=st.integers(1, 4))
def test_tokens_used_and_the_usage_report_add_up_what_the_traces_say(
    repository: Repository, jobs: list[Spent], days: int
) -> None:
    """Whatever jobs there are (users, workspaces, channels and threads, days, replies generated
    or not), the quota's sum and the report's rows equal a plain sum over the traces."""
    platform = f"p{uuid.uuid4().hex[:10]}"  # each example on a platform of its own
    today = quota.day_start(datetime.now(UTC), UTC)
    # The replies generated first: a job left queued would hold its conversation's later ones.
    ordered = sorted(jobs, key=lambda job: job.tokens_in is None)
    for index, job in enumerate(ordered):
        incoming = Incoming(
            platform=platform,
            workspace=job.workspace,
            channel=job.channel,
            thread=job.thread,
            author_id=job.user,
            text="q",
            message_id=str(index),
        )
        at = today - timedelta(days=job.day) + timedelta(hours=1)
        if job.tokens_in is None:
            assert repository.enqueue(incoming, now=at) is not None
        else:
            answer(repository, incoming, tokens_in=job.tokens_in, tokens_out=job.tokens_out, at=at)
    since = today - timedelta(days=days - 1)
    counted = [j for j in jobs if j.tokens_in is not None and j.day < days]
    for user in ("U1", "U2", "U3"):
        for workspace in ("T1", "T2"):
            expected = sum(
                (j.tokens_in or 0) + j.tokens_out
                for j in counted
                if j.user == user and j.workspace == workspace
            )
            used = repository.tokens_used(
                platform=platform, workspace=workspace, author_id=user, since=since
            )
            assert used == expected
    report = repository.usage(since=since, platform=platform)

    def totals(key: str) -> dict[tuple[str, str], tuple[int, int, int]]:
        out: dict[tuple[str, str], tuple[int, int, int]] = {}
        for j in counted:
            who = (j.workspace, j.user if key == "user" else j.channel)
            n, i, o = out.get(who, (0, 0, 0))
            out[who] = (n + 1, i + (j.tokens_in or 0), o + j.tokens_out)
        return out

    assert {(r.workspace, r.who): (r.replies, r.tokens_in, r.tokens_out) for r in report.users} == (
        totals("user")
    )
    assert {
        (r.workspace, r.who): (r.replies, r.tokens_in, r.tokens_out) for r in report.channels
    } == totals("channel")
    for rows in (report.users, report.channels):
        assert [r.tokens for r in rows] == sorted((r.tokens for r in rows), reverse=True)
        assert all(r.platform == platform for r in rows)


# ------------------------------------------------------------------------ the usage day

ZONES = sorted(zoneinfo.available_timezones())


@given(
    instant=st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
    ),
    zone_name=st.sampled_from(["UTC", "Europe/Berlin", "America/Santiago", "Asia/Kolkata", *ZONES]),
)
def test_a_usage_day_contains_the_instant_and_ends_where_the_next_begins(
    instant: datetime, zone_name: str
) -> None:
    zone = quota.usage_zone(zone_name)
    start, reset = quota.day_start(instant, zone), quota.next_reset(instant, zone)
    assert start <= instant < reset
    assert quota.day_start(reset, zone) == reset  # days tile the time line, no gap, no overlap
    assert timedelta(hours=20) <= reset - start <= timedelta(hours=28)
    assert quota.days_start(instant, zone, 1) == start
    assert quota.days_start(instant, zone, 2) == quota.day_start(start - timedelta(seconds=1), zone)


@given(seconds=st.floats(min_value=0, max_value=3 * 86_400, allow_nan=False))
def test_the_wait_is_said_in_whole_minutes_never_less_than_what_is_left(seconds: float) -> None:
    said = quota.describe_wait(seconds)
    found = re.fullmatch(r"(?:(\d+) h (\d\d) min|(\d+) min)", said)
    assert found is not None, said
    minutes = int(found[1]) * 60 + int(found[2]) if found[1] else int(found[3])
    assert minutes * 60 >= seconds and (minutes - 1) * 60 < max(seconds, 60)


def test_the_quota_refusal_says_the_wait_until_midnight_in_the_zone() -> None:
    zone = zoneinfo.ZoneInfo("America/New_York")
    now = datetime(2026, 3, 8, 4, 30, tzinfo=UTC)  # 23:30 on the 7th in New York
    limits = Limits(LimitSettings(user_daily_tokens=10, usage_zone=zone), wall_clock=lambda: now)
    assert limits.check_quota(9, now=now) is None
    refusal = limits.check_quota(10, now=now)
    assert refusal is not None and refusal.reason == "daily_tokens"
    assert refusal.retry_after == 30 * 60
    assert "resets in 30 min (at midnight, America/New_York time)" in refusal.notice
    off = Limits(LimitSettings(user_daily_tokens=0))
    assert off.check_quota(10**9, now=now) is None


def test_bad_quota_settings_fail_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="SOLARBOT_USAGE_TIMEZONE") as error:
        load_settings(environ={"SOLARBOT_USAGE_TIMEZONE": "Mars/Olympus_Mons"})
    assert "Europe/Berlin" in str(error.value)
    with pytest.raises(ConfigError, match="SOLARBOT_USER_DAILY_TOKENS"):
        load_settings(environ={"SOLARBOT_USER_DAILY_TOKENS": "-5"})
    ok = load_settings(environ={"SOLARBOT_USAGE_TIMEZONE": "Asia/Tokyo"})
    assert ok.usage_timezone == "Asia/Tokyo" and ok.user_daily_tokens == 0


# ------------------------------------------------------------------ `solarbot usage` (CLI)


def test_solarbot_usage_prints_users_and_channels_over_the_days_asked(tmp_path: Path) -> None:
    repository = Repository.open(f"sqlite:///{tmp_path / 'solarbot.db'}")
    now = datetime.now(UTC)
    try:
        answer(repository, message(user="U1", channel="C1"), tokens_in=100, tokens_out=20)
        answer(repository, message(user="U1", channel="C2"), tokens_in=50, tokens_out=5)
        answer(repository, message(user="U2", channel="C1"), tokens_in=7, tokens_out=3)
        answer(
            repository,
            message(platform="discord", workspace="G1", channel="D1", user="U9"),
            tokens_in=1000,
            tokens_out=1,
        )
        answer(
            repository,
            message(user="U3", channel="C3"),
            tokens_in=400,
            tokens_out=4,
            at=now - timedelta(days=3),
        )
    finally:
        repository.close()
    env = {"SOLARBOT_DATA_DIR": str(tmp_path)}

    result = solarbot("usage", "--platform", "slack", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Tokens replies cost since ") and "(UTC; 1 day(s)" in lines[0]
    rows = [line.split() for line in lines]
    assert ["slack", "T1", "U1", "2", "150", "25", "175"] in rows
    assert ["slack", "T1", "U2", "1", "7", "3", "10"] in rows
    assert ["slack", "T1", "C1", "2", "107", "23", "130"] in rows
    assert ["total", "3", "157", "28", "185"] in rows  # users' total = channels' total
    assert rows.count(["total", "3", "157", "28", "185"]) == 2
    assert "U3" not in result.stdout and "discord" not in result.stdout

    week = solarbot("usage", "--days", "7", env=env)
    assert week.returncode == 0, week.stderr
    rows = [line.split() for line in week.stdout.splitlines()]
    assert ["slack", "T1", "U3", "1", "400", "4", "404"] in rows
    assert ["discord", "G1", "U9", "1", "1000", "1", "1001"] in rows
    # Most tokens first.
    users = [row[2] for row in rows if row and row[0] in ("slack", "discord")][:4]
    assert users == ["U9", "U3", "U1", "U2"]

    bad = solarbot("usage", "--days", "0", env=env)
    assert bad.returncode == 2 and "--days" in bad.stderr


def test_solarbot_usage_on_an_empty_database_says_so(tmp_path: Path) -> None:
    result = solarbot("usage", env={"SOLARBOT_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(texts.USAGE_NONE) == 2


# ------------------------------------------------------------------------- migration 0012


def test_migration_0012_adds_the_usage_indexes_and_goes_down_keeping_the_data(
    database_url: str,
) -> None:
    names = {"ix_jobs_created_at", "ix_messages_author_id_created_at", "ix_messages_reply_to_id"}

    def indexes(engine: Engine) -> set[str]:
        found = inspect(engine)
        return {str(i["name"]) for table in ("jobs", "messages") for i in found.get_indexes(table)}

    engine = database.create_db_engine(database_url)
    try:
        database.upgrade(engine)
        repository = Repository(engine)
        answer(repository, message(), tokens_in=10, tokens_out=4)
        assert names <= indexes(engine)
        database.downgrade(engine, "0011")
        assert not names & indexes(engine)
        assert len(repository.jobs()) == 1

        database.upgrade(engine)
        assert database.current_revision(engine) == database.head_revision()
        assert names <= indexes(engine)
        since = datetime.now(UTC) - timedelta(days=1)
        used = repository.tokens_used(platform="slack", workspace="T1", author_id="U1", since=since)
        assert used == 14  # the data survived both ways
    finally:
        engine.dispose()
