"""Human handoff (issue 7): settings, migration 0005 up and down (SQLite and PostgreSQL), the
repository's handoff state, and keyword matching. The platforms (the ping, the silence, `resume`)
are tested end to end in tests/platforms/test_slack.py and tests/platforms/test_discord.py."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from adapters.fake import FakeAdapter
from bot.errors import ConfigError
from bot.intake import Intake
from bot.records import Incoming, JobStatus
from bot.settings import load_settings
from storage import database
from storage.repository import Repository

CHANNEL = {"platform": "slack", "workspace": "T1", "channel": "C1"}


def incoming(message_id: str, *, thread: str = "", text: str = "hi") -> Incoming:
    return Incoming(
        platform="slack",
        workspace="T1",
        channel="C1",
        thread=thread,
        author_id="U1",
        text=text,
        message_id=message_id,
    )


def test_handoff_settings() -> None:
    defaults = load_settings(environ={})
    assert defaults.handoff_keywords == ("talk to a human", "human please")
    assert defaults.slack_support_group is None and defaults.discord_support_role is None
    custom = load_settings(
        environ={
            "SOLARBOT_HANDOFF_KEYWORDS": " Agent ,  REAL   person,",
            "SOLARBOT_SLACK_SUPPORT_GROUP": "S0SUPPORT",
            "SOLARBOT_DISCORD_SUPPORT_ROLE": "123456789012345678",
        }
    )
    assert custom.handoff_keywords == ("agent", "real person")
    assert custom.slack_support_group == "S0SUPPORT"
    assert custom.discord_support_role == 123456789012345678
    assert load_settings(environ={"SOLARBOT_HANDOFF_KEYWORDS": ""}).handoff_keywords == ()


@pytest.mark.parametrize(
    ("key", "value"),
    [("SOLARBOT_SLACK_SUPPORT_GROUP", "@support"), ("SOLARBOT_DISCORD_SUPPORT_ROLE", "mods")],
)
def test_a_bad_support_setting_fails_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={key: value})
    assert str(caught.value).startswith(f"{key}: ")


def test_keywords_match_anywhere_in_any_case(sqlite_url: str) -> None:
    repository = Repository.open(sqlite_url)
    try:
        intake = Intake(repository, handoff_keywords=("Talk to a human",))
        assert intake.wants_human("Can I please TALK to a\n human?")
        assert not intake.wants_human("talk to a bot")
        assert not Intake(repository).wants_human("talk to a human")  # no keywords: off
    finally:
        repository.close()


def test_a_handoff_silences_only_its_conversation_until_the_channel_resumes(
    repository: Repository,
) -> None:
    asked = repository.enqueue(incoming("m1", thread="9.1", text="human!"), handoff=True)
    assert asked is not None and asked.created and asked.handoff
    job = repository.job(asked.job_id)
    assert job is not None and job.status is JobStatus.CANCELLED  # never answered
    again = repository.enqueue(incoming("m1", thread="9.1", text="human!"), handoff=True)
    assert again is not None and not again.created and again.job_id == asked.job_id  # redelivery

    ignored = repository.enqueue(incoming("m2", thread="9.1"))
    assert ignored is not None and ignored.handoff and not ignored.created and ignored.job_id == 0
    other = repository.enqueue(incoming("m3", thread="9.2"))
    assert other is not None and other.created and not other.handoff
    assert repository.claim(worker_id="w", limit=5, lease_seconds=60)[0].id == other.job_id
    assert repository.handoffs_in_channel(**CHANNEL) == 1

    assert repository.resume_channel(**CHANNEL) == 1
    assert repository.handoffs_in_channel(**CHANNEL) == 0
    back = repository.enqueue(incoming("m4", thread="9.1"))
    assert back is not None and back.created and not back.handoff
    assert repository.resume_channel(**CHANNEL) == 0


def test_migration_0005_adds_the_handoff_state_and_goes_down_keeping_the_data(
    database_url: str,
) -> None:
    engine = database.create_db_engine(database_url)
    try:
        database.upgrade(engine)
        repository = Repository(engine)
        assert repository.enqueue(incoming("m1"), handoff=True) is not None
        assert repository.enqueue(incoming("m2", thread="9.1")) is not None

        database.downgrade(engine, "0004")
        names = {c["name"] for c in inspect(engine).get_columns("conversations")}
        assert "handoff_at" not in names
        # Dropping the column must not rebuild the table: on SQLite that would cascade into
        # every message and job.
        assert repository.count_jobs(statuses=list(JobStatus)) == 2

        database.upgrade(engine, revision="0005")
        assert database.current_revision(engine) == "0005"
        assert repository.handoffs_in_channel(**CHANNEL) == 0  # the state went with the column
        assert len(repository.jobs()) == 2
    finally:
        engine.dispose()


async def test_platforms_without_a_handoff_announcement_never_hand_off(sqlite_url: str) -> None:
    """The console and the webhook have nobody to ping and no `resume`: a question stays one."""
    repository = Repository.open(sqlite_url)
    try:
        intake = Intake(repository, handoff_keywords=("talk to a human",))
        adapter = FakeAdapter(platform="slack")
        intake.register(adapter)
        result = await intake.submit(incoming("m1", text="can I talk to a human?"))
        assert result is not None and result.created and not result.handoff
        assert adapter.notices == []
        assert repository.handoffs_in_channel(**CHANNEL) == 0
    finally:
        repository.close()
