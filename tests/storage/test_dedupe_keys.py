"""Dedupe keys name exactly one event (issue 13, item 3): ``bot.dedupe.dedupe_key`` is the one
function every adapter uses, distinct component tuples never share a key, and keys stored by
earlier versions keep matching their redeliveries (migration 0007), on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.dedupe import KEY_LIMIT, dedupe_key
from bot.intake import Intake
from bot.records import Incoming
from storage import database
from storage.repository import Repository

MIGRATION = (
    Path(__file__).parents[2] / "storage/migrations/versions/0007_dedupe_keys.py"
).resolve()

# Text that likes the characters the old scheme tripped on, and sometimes runs long.
COMPONENT = st.one_of(
    st.text(alphabet=st.sampled_from(":%3Aa25h"), max_size=8),
    st.text(max_size=12),
    st.text(alphabet=st.sampled_from(":a%"), min_size=60, max_size=140),
)
TUPLE = st.lists(COMPONENT, min_size=1, max_size=5).map(tuple)


@given(st.lists(TUPLE, min_size=2, max_size=12, unique=True))
def test_distinct_component_tuples_never_give_equal_keys(tuples: list[tuple[str, ...]]) -> None:
    keys = [dedupe_key(*components) for components in tuples]
    assert len(set(keys)) == len(tuples)
    assert all(len(key) <= KEY_LIMIT for key in keys)


@given(TUPLE)
def test_a_key_splits_back_into_its_components_unless_hashed(components: tuple[str, ...]) -> None:
    key = dedupe_key(*components)
    assert dedupe_key(*components) == key  # deterministic: a redelivery finds it
    if key.startswith("%h"):
        assert len(":".join(components)) > KEY_LIMIT // 3  # only long tuples are hashed
        return
    decoded = tuple(p.replace("%3A", ":").replace("%25", "%") for p in key.split(":"))
    assert decoded == components


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters=":%")), min_size=1, max_size=4))
def test_plain_components_keep_the_old_spelling(components: list[str]) -> None:
    """Discord and Slack ids have neither ':' nor '%': keys stored before stay valid."""
    if len(":".join(components)) <= KEY_LIMIT:
        assert dedupe_key(*components) == ":".join(components)


def _migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migration_0007", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@given(TUPLE)
def test_the_migration_encodes_exactly_as_bot_dedupe(components: tuple[str, ...]) -> None:
    assert _migration().encoded_key(components) == dedupe_key(*components)


async def test_the_reported_collision_stores_both_messages(database_url: str) -> None:
    """Workspace ``a:b``/channel ``c`` and workspace ``a``/channel ``b:c``, same message id: two
    messages, both answered; each one's redelivery is still recognised."""
    repository = Repository.open(database_url)
    try:
        intake = Intake(repository)
        first, second = (
            Incoming(
                platform="webhook",
                workspace=workspace,
                channel=channel,
                author_id="u",
                text="hi",
                message_id="7",
            )
            for workspace, channel in (("a:b", "c"), ("a", "b:c"))
        )
        one = await intake.submit(first)
        two = await intake.submit(second)
        assert one is not None and one.created and two is not None and two.created
        assert one.job_id != two.job_id
        again = await intake.submit(second)
        assert again is not None and not again.created and again.job_id == two.job_id
        # Long ids full of colons still fit the column (PostgreSQL enforces VARCHAR(255)).
        long_one = Incoming(
            platform="webhook",
            workspace=":" * 128,
            channel="%" * 128,
            author_id="u",
            text="hi",
            message_id=":%" * 64,
        )
        stored = repository.enqueue(long_one)
        assert stored is not None and stored.created
        assert repository.job_for_event(long_one.dedupe_key) is not None
    finally:
        repository.close()


def test_migration_0007_rewrites_old_keys_so_redeliveries_are_recognised(
    database_url: str,
) -> None:
    engine = database.create_db_engine(database_url)
    try:
        database.upgrade(engine, revision="0006")
        repository = Repository(engine)
        events = [
            ("T1", "C1", "1700000000.000100"),  # a Slack message: the same key in both schemes
            ("ws:1", "chan", "m1"),  # webhook ids with the characters the old scheme mishandled
            ("ws", "100%", "m:2"),
        ]
        stored = {}
        for workspace, channel, message_id in events:
            incoming = Incoming(
                platform="webhook",
                workspace=workspace,
                channel=channel,
                author_id="u",
                text="q",
                message_id=message_id,
                dedupe_key=f"webhook:{workspace}:{channel}:{message_id}",  # as stored before
            )
            result = repository.enqueue(incoming)
            assert result is not None and result.created
            stored[(workspace, channel, message_id)] = result.job_id
        command = Incoming(
            platform="slack",
            workspace="T1",
            channel="C9",
            author_id="u",
            text="q",
            message_id="https://hooks.slack.com/commands/T1/1",
            dedupe_key="slack:T1:command:https://hooks.slack.com/commands/T1/1",
        )
        command_job = repository.enqueue(command)
        assert command_job is not None and command_job.created

        database.upgrade(engine)
        for (workspace, channel, message_id), job_id in stored.items():
            redelivered = Incoming(
                platform="webhook",
                workspace=workspace,
                channel=channel,
                author_id="u",
                text="q",
                message_id=message_id,
            )
            again = repository.enqueue(redelivered)
            assert again is not None and not again.created and again.job_id == job_id
        again = repository.job_for_event(
            dedupe_key("slack", "T1", "command", "https://hooks.slack.com/commands/T1/1")
        )
        assert again is not None and again.job_id == command_job.job_id

        database.downgrade(engine, "0006")
        keys = {job.id: job.dedupe_key for job in repository.jobs()}
        for (workspace, channel, message_id), job_id in stored.items():
            assert keys[job_id] == f"webhook:{workspace}:{channel}:{message_id}"
        assert keys[command_job.job_id] == command.dedupe_key
        database.upgrade(engine)
    finally:
        engine.dispose()


def test_a_key_needs_a_component() -> None:
    with pytest.raises(ValueError, match="at least one component"):
        dedupe_key()
