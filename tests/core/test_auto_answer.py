"""Auto-answer channels in the core (bot/auto_answer.py through the real Intake and Repository, on
SQLite and PostgreSQL): the mode setting and its command, which messages without a mention are
answered, the implicit handoff when someone else writes in an auto thread, replays, reminders
cancelled by any person's message, and migration 0015 up and down. The platforms are tested end
to end in tests/platforms/test_auto_answer_slack.py and test_auto_answer_discord.py."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect

from bot import texts
from bot.auto_answer import Route
from bot.commands import CommandContext, CommandName, Commands, parse_command, parse_prefixed
from bot.handoff_followups import FollowupPolicy
from bot.intake import Intake
from bot.records import AnswerMode, ChannelConfig, FollowupKind, Incoming, JobStatus
from storage import database
from storage.repository import Repository

CHANNEL = {"platform": "slack", "workspace": "T1", "channel": "C1"}
ASKER, AGENT, OTHER = "U0ASKER", "U0AGENT", "U0OTHER"


def message(ts: str, *, author: str = ASKER, thread: str = "", text: str = "hi") -> Incoming:
    return Incoming(
        platform="slack",
        workspace="T1",
        channel="C1",
        thread=thread,
        author_id=author,
        author_name=author.removeprefix("U0").capitalize(),
        text=text,
        message_id=ts,
        reply_target={"channel": "C1", "thread_ts": thread or ts},
    )


def set_mode(repository: Repository, mode: AnswerMode, **changes: object) -> None:
    repository.update_channel_config(**CHANNEL, changes={"answer_mode": mode, **changes})


async def ask(intake: Intake, ts: str, *, author: str = ASKER) -> Route:
    """A top-level message: routed, and submitted in its own thread when it is a question (what
    the adapters do)."""
    route = await intake.unaddressed(message(ts, author=author), top_level=True)
    if route is Route.QUESTION:
        await intake.submit(message(ts, author=author, thread=ts))
    return route


async def follow_up(intake: Intake, ts: str, thread: str, *, author: str = ASKER) -> Route:
    route = await intake.unaddressed(message(ts, author=author, thread=thread), top_level=False)
    if route is Route.QUESTION:
        await intake.submit(message(ts, author=author, thread=thread))
    return route


def queued(repository: Repository) -> list[str]:
    """The message ids of the jobs that will be answered, oldest first."""
    return [job.dedupe_key.rsplit(":", 1)[1] for job in repository.jobs(status=JobStatus.QUEUED)]


# ------------------------------------------------------------------------------ the setting


def test_the_mode_is_a_channel_setting_that_defaults_to_mention(repository: Repository) -> None:
    assert repository.channel_config(**CHANNEL).answer_mode is AnswerMode.MENTION
    set_mode(repository, AnswerMode.AUTO, language="German")
    config = repository.channel_config(**CHANNEL)
    assert config == ChannelConfig(answer_mode=AnswerMode.AUTO, language="German")
    # Other settings leave it alone; threads of other channels are not affected.
    repository.update_channel_config(**CHANNEL, changes={"max_reply_chars": 500})
    assert repository.channel_config(**CHANNEL).answer_mode is AnswerMode.AUTO
    other = {**CHANNEL, "channel": "C2"}
    assert repository.channel_config(**other).answer_mode is AnswerMode.MENTION
    repository.set_channel_config(**CHANNEL, config=ChannelConfig())
    assert repository.channel_config(**CHANNEL).answer_mode is AnswerMode.MENTION


def test_migration_0015_adds_the_mode_and_goes_down_keeping_the_other_settings(
    database_url: str,
) -> None:
    engine = database.create_db_engine(database_url)
    try:
        database.upgrade(engine)
        repository = Repository(engine)
        set_mode(repository, AnswerMode.AUTO, system_prompt="Be brief.")
        assert repository.enqueue(message("1.0")) is not None

        database.downgrade(engine, "0014")
        names = {c["name"] for c in inspect(engine).get_columns("channel_settings")}
        assert "answer_mode" not in names and "system_prompt" in names
        assert repository.count_jobs() == 1

        database.upgrade(engine, revision="0015")
        assert database.current_revision(engine) == "0015"
        # The mode went with the column (back to the default); the prompt stayed.
        assert repository.channel_config(**CHANNEL) == ChannelConfig(system_prompt="Be brief.")
        set_mode(repository, AnswerMode.AUTO)
        assert repository.channel_config(**CHANNEL).answer_mode is AnswerMode.AUTO
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ the command


@pytest.mark.parametrize(
    ("typed", "name", "argument"),
    [
        ("mode", CommandName.MODE, ""),
        ("mode auto", CommandName.MODE, "auto"),
        ("MODE Mention", CommandName.MODE, "Mention"),
        ("mode of transport to the office?", CommandName.ASK, "mode of transport to the office?"),
        ("mode automatic", CommandName.ASK, "mode automatic"),
    ],
)
def test_mode_is_a_sub_command_only_with_a_mode_or_alone(
    typed: str, name: CommandName, argument: str
) -> None:
    parsed = parse_command(typed)
    assert (parsed.name, parsed.argument) == (name, argument)


def context(*, admin: bool, platform: str = "slack") -> CommandContext:
    return CommandContext(
        platform=platform,
        workspace="T1",
        channel="C1",
        user_id=AGENT if admin else OTHER,
        is_admin=admin,
        admins_configured=True,
    )


def commands(repository: Repository, **options: bool) -> Commands:
    return Commands(
        repository,
        command="/solar",
        model_id="fake",
        default_system_prompt="x",
        admin_setting="SOLARBOT_SLACK_ADMIN_USERS",
        **options,
    )


async def test_only_admins_change_the_mode_and_status_shows_it(repository: Repository) -> None:
    run = commands(repository).run
    assert "only admins" in await run(parse_command("mode auto"), context(admin=False))
    assert repository.channel_config(**CHANNEL).answer_mode is AnswerMode.MENTION
    shown = await run(parse_command("mode"), context(admin=False))  # anyone may look
    assert shown == texts.MODE_SHOW.format(state=texts.MODE_STATE["mention"])

    said = await run(parse_command("mode auto"), context(admin=True))
    assert said.startswith("Mode auto") and "`/solar resume`" in said
    assert repository.channel_config(**CHANNEL).answer_mode is AnswerMode.AUTO
    status = await run(parse_command("status"), context(admin=False))
    assert "**Mode:** auto (every new question here gets an answer in its own thread)" in status
    assert "mode auto" in await run(parse_command("help"), context(admin=False))

    assert "only admins" in await run(parse_command("mode mention"), context(admin=False))
    await run(parse_command("mode mention"), context(admin=True))
    assert repository.channel_config(**CHANNEL).answer_mode is AnswerMode.MENTION
    # ``!mode sometimes`` (prefixed: the word decides) gets the valid values, changes nothing.
    prefixed = parse_prefixed("!mode sometimes")
    assert prefixed is not None and prefixed.name is CommandName.MODE
    assert "takes `auto` or `mention`" in await run(prefixed, context(admin=True))
    assert repository.channel_config(**CHANNEL).answer_mode is AnswerMode.MENTION


async def test_a_platform_without_threads_says_mode_is_not_for_it(repository: Repository) -> None:
    run = commands(repository, auto_threads=False).run
    assert await run(parse_command("mode auto"), context(admin=True)) == texts.MODE_NOT_HERE
    assert repository.channel_config(**CHANNEL).answer_mode is AnswerMode.MENTION


# ------------------------------------------------------------------------------ routing


async def test_mention_channels_ignore_messages_without_a_mention(repository: Repository) -> None:
    intake = Intake(repository)
    assert await ask(intake, "1.0") is Route.NOT_AUTO
    assert await follow_up(intake, "1.1", "1.0") is Route.NOT_AUTO
    assert repository.jobs() == []


async def test_auto_answers_the_asker_in_the_thread_until_someone_else_writes_there(
    repository: Repository,
) -> None:
    set_mode(repository, AnswerMode.AUTO)
    intake = Intake(repository)
    assert await ask(intake, "1.0") is Route.QUESTION
    assert await ask(intake, "2.0", author=OTHER) is Route.QUESTION  # every new question
    assert await follow_up(intake, "1.1", "1.0") is Route.QUESTION
    # A thread nobody asked solarbot in (no stored conversation) is not solarbot's business.
    assert await follow_up(intake, "3.1", "3.0") is Route.NOT_AUTO
    assert queued(repository) == ["1.0", "2.0", "1.1"]

    # A worker takes the first question: being answered, it is not cancelled by what follows.
    (taken,) = repository.claim(worker_id="w", limit=1, lease_seconds=60)
    assert repository.job(taken.id).dedupe_key.endswith(":1.0")  # type: ignore[union-attr]

    # An agent writes in the first thread: it is handed to a human, recorded as a handoff is, and
    # the thread's question nobody started on is not answered any more (the agent has it).
    assert await follow_up(intake, "1.2", "1.0", author=AGENT) is Route.HANDED_OFF
    assert repository.handoffs_in_channel(**CHANNEL) == 1
    key = message("1.2", thread="1.0").conversation
    assert [(m.author_id, m.text) for m in repository.messages(key)][-1] == (AGENT, "hi")
    handoff_job = repository.job_for_event(message("1.2").dedupe_key)
    assert handoff_job is not None and repository.job(handoff_job.job_id).status is (  # type: ignore[union-attr]
        JobStatus.CANCELLED
    )
    # From now on the thread is quiet, for the asker too; the other thread goes on.
    assert await follow_up(intake, "1.3", "1.0") is Route.QUIET
    assert await follow_up(intake, "1.4", "1.0", author=OTHER) is Route.QUIET
    assert await follow_up(intake, "2.1", "2.0", author=OTHER) is Route.QUESTION
    assert queued(repository) == ["2.0", "2.1"]
    statuses = {job.dedupe_key.rsplit(":", 1)[1]: job.status for job in repository.jobs()}
    assert statuses["1.0"] is JobStatus.RUNNING and statuses["1.1"] is JobStatus.CANCELLED

    # ``resume`` brings the bot back in the thread (and a new agent message hands it over again).
    assert repository.resume_channel(**CHANNEL) == 1
    assert await follow_up(intake, "1.5", "1.0") is Route.QUESTION
    assert queued(repository)[-1] == "1.5"
    assert await follow_up(intake, "1.6", "1.0", author=OTHER) is Route.HANDED_OFF


async def test_a_switched_off_channel_or_mention_mode_stops_auto_answers(
    repository: Repository,
) -> None:
    set_mode(repository, AnswerMode.AUTO)
    intake = Intake(repository)
    assert await ask(intake, "1.0") is Route.QUESTION
    repository.update_channel_config(**CHANNEL, changes={"enabled": False})
    assert await ask(intake, "2.0") is Route.NOT_AUTO
    assert await follow_up(intake, "1.1", "1.0", author=AGENT) is Route.NOT_AUTO
    repository.update_channel_config(**CHANNEL, changes={"enabled": True})
    set_mode(repository, AnswerMode.MENTION)
    assert await ask(intake, "3.0") is Route.NOT_AUTO
    assert await follow_up(intake, "1.2", "1.0") is Route.NOT_AUTO
    assert await follow_up(intake, "1.3", "1.0", author=AGENT) is Route.NOT_AUTO
    assert queued(repository) == ["1.0"] and repository.handoffs_in_channel(**CHANNEL) == 0


async def test_replayed_and_concurrent_duplicates_answer_once_and_hand_off_once(
    repository: Repository,
) -> None:
    set_mode(repository, AnswerMode.AUTO)
    intake = Intake(repository)
    await asyncio.gather(*(ask(intake, "1.0") for _ in range(4)))
    await asyncio.gather(*(follow_up(intake, "1.1", "1.0") for _ in range(4)))
    assert queued(repository) == ["1.0", "1.1"]
    assert len(repository.jobs()) == 2
    routes = await asyncio.gather(
        *(follow_up(intake, "1.2", "1.0", author=AGENT) for _ in range(4))
    )
    assert routes.count(Route.HANDED_OFF) == 1 and set(routes) == {Route.HANDED_OFF, Route.QUIET}
    key = message("1.2", thread="1.0").conversation
    assert [m.author_id for m in repository.messages(key)].count(AGENT) == 1


# One event of a thread's life: who writes, and whether Slack/Discord delivers it twice.
events = st.lists(
    st.tuples(st.sampled_from([ASKER, ASKER, AGENT, OTHER]), st.booleans()), max_size=8
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(events=events)
def test_the_asker_is_answered_until_the_first_other_person_writes(
    tmp_path: Path, events: list[tuple[str, bool]]
) -> None:
    """The model: the top-level question and each asker message before the first message of
    someone else are answered, once each, replays included; after that nothing is, and the
    thread counts as handed off exactly when someone else wrote."""
    url = f"sqlite:///{tmp_path / f'prop-{next(_runs)}.db'}"
    repository = Repository.open(url)
    try:
        set_mode(repository, AnswerMode.AUTO)

        answered: list[str] = []

        def answer_all() -> None:  # a worker answering everything waiting, between messages
            for job in repository.claim(worker_id="w", limit=50, lease_seconds=60):
                record = repository.job(job.id)
                assert record is not None
                answered.append(record.dedupe_key.rsplit(":", 1)[1])
                assert repository.complete(
                    job, reply_text="ok", reply_message_ids=["r"], token_count=1
                )

        async def run() -> None:
            intake = Intake(repository)
            await ask(intake, "1.0")
            answer_all()
            for index, (author, replayed) in enumerate(events, start=1):
                for _ in range(2 if replayed else 1):
                    await follow_up(intake, f"1.{index}", "1.0", author=author)
                    answer_all()

        asyncio.run(run())
        expected = ["1.0"]
        for index, (author, _) in enumerate(events, start=1):
            if author != ASKER:
                break
            expected.append(f"1.{index}")
        assert answered == expected
        handed = any(author != ASKER for author, _ in events)
        assert repository.handoffs_in_channel(**CHANNEL) == int(handed)
    finally:
        repository.close()


_runs = itertools.count()


# ------------------------------------------------------------------------------ reminders


async def test_any_persons_message_in_a_handed_off_conversation_cancels_its_reminder(
    repository: Repository,
) -> None:
    """Reminders on: someone asked for a human in a thread of a mention channel; the asker's own
    unaddressed messages leave the reminder, anyone else's cancels it (adapters see them all)."""
    now = datetime.now(UTC)
    intake = Intake(repository, followups=FollowupPolicy(reminder_minutes=15))
    asked = repository.enqueue(message("1.0", thread="1.0", text="human please"), handoff=True)
    assert asked is not None and asked.created
    assert repository.schedule_followup(
        job_id=asked.job_id,
        kind=FollowupKind.REMINDER,
        due_at=now + timedelta(minutes=15),
        asked_at=now,
    )
    later = now + timedelta(minutes=16)
    assert await follow_up(intake, "1.1", "1.0") is Route.QUIET
    assert len(repository.claim_due_followups(lease_seconds=0.01, now=later)) == 1
    assert await follow_up(intake, "1.2", "1.0", author=AGENT) is Route.QUIET
    assert repository.claim_due_followups(lease_seconds=1, now=later + timedelta(seconds=1)) == []
