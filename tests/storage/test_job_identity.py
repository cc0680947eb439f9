"""A job id, and every key made from it that reaches a platform, belongs to one job forever.

The defect (issue 13, item 1): on SQLite the next job took the id of the newest job after
``forget`` deleted it, and the webhook platform, seeing the idempotency key ``job-<id>-part-0``
again, handed back the forgotten user's message, which was then edited with someone else's
answer. Through the real worker, the webhook adapter over HTTP and the loopback platform, on
SQLite and PostgreSQL; then as a property over many forget/enqueue sequences."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect

from adapters.discord import DiscordAdapter, DiscordOptions, reply_nonce
from adapters.webhook import WebhookAdapter, WebhookOptions
from bot.delivery import ReplyTarget
from bot.generation.engine import SamplingParams
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.records import ConversationKey, Incoming, JobStatus, Rating
from bot.worker import WorkerOptions
from storage import database
from storage.repository import Repository
from tests.support.discord_fake import FakeDiscord
from tests.support.rig import ServiceRig
from tests.support.webhook_platform import WebhookPlatform


@dataclass(kw_only=True)
class Rig(ServiceRig[WebhookAdapter, FakeEngine]):
    platform: WebhookPlatform

    async def ask(self, *, author: str, channel: str, text: str, message_id: str) -> int:
        result = await self.intake.submit(
            Incoming(
                platform="webhook",
                channel=channel,
                author_id=author,
                text=text,
                message_id=message_id,
            )
        )
        assert result is not None and result.created
        return result.job_id

    async def until(
        self, condition: Callable[[], bool], *, within: float = 20.0, poll: float = 0.02
    ) -> None:
        await super().until(condition, within=within, poll=poll)


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    platform = WebhookPlatform()
    url = await platform.start()
    rig = await Rig.start(
        WebhookAdapter(WebhookOptions(url=url, timeout=2.0, edit_interval=0.0)),
        repository=Repository.open(database_url),
        engine=FakeEngine(),
        options=WorkerOptions(
            system_prompt="test",
            max_new_tokens=200,
            sampling=SamplingParams(temperature=0.0),
            lease_seconds=5.0,
            poll_seconds=0.02,
        ),
        platform=platform,
    )
    yield rig
    await rig.stop(drain=1)
    await rig.engine.close()
    await platform.stop()
    rig.close()


async def test_after_forget_a_new_job_never_gets_an_old_id_nor_an_old_message(rig: Rig) -> None:
    used: set[int] = set()
    earlier = await rig.ask(author="carol", channel="c0", text="first", message_id="m0")
    alice = await rig.ask(author="alice", channel="ca", text="my secret", message_id="m1")
    used |= {earlier, alice}
    await rig.until(lambda: rig.repository.count_jobs() == 0)
    (alice_reply,) = rig.platform.replies()[alice]
    assert alice_reply.text == "You said: my secret"
    alice_history = list(alice_reply.history)

    # alice's conversation holds the newest job; forgetting it deletes that job's row.
    assert rig.repository.forget_user(platform="webhook", workspace=None, author_id="alice") == 1
    bob = await rig.ask(author="bob", channel="cb", text="hello", message_id="m1")
    await rig.until(lambda: rig.repository.count_jobs() == 0)

    assert bob not in used and bob > max(used)
    assert rig.platform.replayed_keys == 0  # no key was ever sent twice
    assert alice_reply.text == "You said: my secret"  # alice's message was left alone
    assert alice_reply.history == alice_history  # not even an edit
    (bob_reply,) = rig.platform.replies()[bob]
    assert bob_reply.id != alice_reply.id and bob_reply.channel == "cb"
    assert bob_reply.text == "You said: hello"
    # Every key the worker sent carries its job's key, and no two jobs share one.
    shapes = [re.fullmatch(r"job-(\d+)-([0-9a-f]{16})-part-0", key) for key in rig.platform.keys]
    assert all(shapes) and len(shapes) == 3
    assert len({m.group(2) for m in shapes if m}) == 3


async def test_forgetting_a_channel_then_asking_again_gets_new_ids_and_new_messages(
    rig: Rig,
) -> None:
    """The same event delivered again after ``forget`` (same dedupe key) is a new job: new id,
    new keys, a new message."""
    first = await rig.ask(author="alice", channel="ca", text="again?", message_id="m1")
    await rig.until(lambda: rig.repository.count_jobs() == 0)
    rig.repository.forget_channel(platform="webhook", workspace="", channel="ca")
    second = await rig.ask(author="alice", channel="ca", text="again?", message_id="m1")
    await rig.until(lambda: rig.repository.count_jobs() == 0)
    assert second > first
    assert rig.platform.replayed_keys == 0
    assert len([m for m in rig.platform.messages.values() if m.kind == "reply"]) == 2


# One database for all examples: ids and keys must stay unique across the whole history.
Step = tuple[str, int]
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("ask"), st.integers(0, 3)),
        st.tuples(st.just("forget_channel"), st.integers(0, 3)),
        st.tuples(st.just("forget_user"), st.integers(0, 3)),
        st.tuples(st.just("work"), st.just(0)),
    ),
    min_size=1,
    max_size=12,
)


@dataclass
class Seen:
    """Everything handed out so far, over every example run against one database."""

    ids: set[int] = field(default_factory=set)
    keys: dict[int, str] = field(default_factory=dict)
    asked: int = 0


@pytest.fixture
def seen() -> Seen:
    return Seen()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=STEPS)
def test_ids_and_job_keys_are_never_reused_over_any_forget_and_enqueue_sequence(
    repository: Repository, seen: Seen, steps: list[Step]
) -> None:
    for kind, n in steps:
        if kind == "ask":
            seen.asked += 1
            result = repository.enqueue(
                Incoming(
                    platform="webhook",
                    channel=f"c{n}",
                    author_id=f"u{n}",
                    text="hi",
                    message_id=f"m{seen.asked % 3}",  # the same events come again
                )
            )
            assert result is not None
            if result.created:
                assert result.job_id not in seen.ids, "a job id was handed out twice"
                assert result.job_id > max(seen.ids, default=0)
                seen.ids.add(result.job_id)
        elif kind == "forget_channel":
            repository.forget_channel(platform="webhook", workspace="", channel=f"c{n}")
        elif kind == "forget_user":
            repository.forget_user(platform="webhook", workspace=None, author_id=f"u{n}")
        else:
            for job in repository.claim(worker_id="w", limit=50, lease_seconds=30):
                known = seen.keys.setdefault(job.id, job.job_key)
                assert known == job.job_key  # the same in every attempt
                repository.complete(
                    job, reply_text="ok", reply_message_ids=[f"p{job.id}"], token_count=1
                )
        keys = list(seen.keys.values())
        assert len(set(keys)) == len(keys), "two jobs share a key"


def test_discord_nonces_differ_per_job_for_the_same_trigger_and_fit_25_characters() -> None:
    conversation = ConversationKey(platform="discord", workspace="1", channel="2")
    trigger = {"channel_id": "2", "message_id": str(2**63 - 1)}
    one = ReplyTarget(job_id=1, conversation=conversation, reply_target=trigger, job_key="a" * 16)
    two = ReplyTarget(job_id=1, conversation=conversation, reply_target=trigger, job_key="b" * 16)
    nonces = {reply_nonce(target, part) for target in (one, two) for part in range(1000)}
    assert None not in nonces and len(nonces) == 2000
    assert max(len(str(nonce)) for nonce in nonces) <= 25
    bare = ReplyTarget(job_id=1, conversation=conversation, reply_target=trigger)
    assert reply_nonce(bare, 0) is None  # outside a job: a one-off random nonce


async def test_two_jobs_answering_the_same_discord_message_post_two_messages(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """The nonce no longer comes from the trigger message: a job answering a message that an
    earlier (forgotten) job answered posts its own message instead of getting the old one."""
    fake = FakeDiscord()
    fake.add_guild(10, "home")
    fake.add_channel(10, 100, "general")
    await fake.start()
    fake.point_discord_py_here(monkeypatch)
    repository = Repository.open(sqlite_url)
    adapter = DiscordAdapter(DiscordOptions(token=fake.token, ingress=False, edit_interval=0.0))
    await adapter.start(Intake(repository))
    try:
        conversation = ConversationKey(platform="discord", workspace="10", channel="100")
        for job_key, text in (("1" * 16, "the first answer"), ("2" * 16, "the second answer")):
            target = ReplyTarget(
                job_id=7,
                conversation=conversation,
                reply_target={"channel_id": "100", "message_id": "555"},
                job_key=job_key,
            )
            stream = await adapter.open_reply(target)
            await stream.finish(text)
        contents = [m["content"] for m in fake.bot_messages(100)]
        assert contents == ["the first answer", "the second answer"]
    finally:
        await adapter.stop()
        await fake.close()
        repository.close()


def test_migration_0006_stops_sqlite_reusing_job_ids_and_keeps_every_row(
    database_url: str, tmp_path: Path
) -> None:
    engine = database.create_db_engine(database_url)
    try:
        # Answered by today's code (it needs today's schema), then the schema taken to 0005.
        database.upgrade(engine)
        repository = Repository(engine)
        ids = [
            _answered(repository, channel=f"c{i}", message_id=f"m{i}", part=f"p{i}")
            for i in range(3)
        ]
        database.downgrade(engine, "0005")
        with engine.begin() as connection:  # a rating stored before the upgrade
            connection.exec_driver_sql(
                "INSERT INTO feedback (job_id, user_id, rating, platform_message_id, created_at)"
                f" VALUES ({ids[2]}, 'u', 'up', 'p2', '2026-12-01 10:00:00')"
            )

        database.upgrade(engine)
        assert [job.id for job in repository.jobs()] == ids
        assert [(f.user_id, f.rating) for f in repository.feedback_for(ids[2])] == [
            ("u", Rating.UP)
        ]
        assert {i["name"] for i in inspect(engine).get_indexes("jobs")} >= {
            "ix_jobs_status_available_at",
            "ix_jobs_conversation_id_status",
        }
        repository.forget_channel(platform="webhook", workspace="", channel="c2")
        new = _answered(repository, channel="c9", message_id="m9", part="p9")
        assert new > ids[2]
        if engine.dialect.name == "sqlite":
            path = engine.url.database
            assert path is not None
            with sqlite3.connect(path) as raw:
                (sql,) = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()
            assert "AUTOINCREMENT" in sql

        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO feedback (job_id, user_id, rating, platform_message_id, created_at)"
                f" VALUES ({new}, 'u', 'down', 'p9', '2026-12-01 10:00:00')"
            )
        database.downgrade(engine, "0005")
        assert [job.id for job in repository.jobs()] == [ids[0], ids[1], new]
        assert [f.rating for f in repository.feedback_for(new)] == [Rating.DOWN]
        database.upgrade(engine)
        assert repository.job(new) is not None
    finally:
        engine.dispose()


def _answered(repository: Repository, *, channel: str, message_id: str, part: str) -> int:
    result = repository.enqueue(
        Incoming(
            platform="webhook", channel=channel, author_id="u", text="q", message_id=message_id
        )
    )
    assert result is not None and result.created
    (job,) = repository.claim(worker_id="w", limit=10, lease_seconds=30)
    assert job.id == result.job_id
    assert repository.complete(job, reply_text="a", reply_message_ids=[part], token_count=1)
    record = repository.job(job.id)
    assert record is not None and record.status is JobStatus.DONE
    return job.id
