"""``Repository.reply_origin`` (what a button under a reply identifies, SQLite and PostgreSQL): a
reply is found by any of its posted messages, within its platform, workspace and channel, only once
it is finished; never by anything a client could name instead."""

from __future__ import annotations

from bot.records import ConversationKey, Incoming
from storage.repository import Repository


def test_a_reply_is_found_by_any_of_its_messages_with_its_conversation_and_asker(
    repository: Repository,
) -> None:
    where = {"channel": "C1", "thread_ts": "100.1", "user": "U1"}
    result = repository.enqueue(
        Incoming(
            platform="slack",
            workspace="T1",
            channel="C1",
            thread="100.1",
            author_id="U1",
            text="question",
            message_id="100.1",
            reply_target=where,
        )
    )
    assert result is not None
    (job,) = repository.claim(worker_id="w", limit=1, lease_seconds=60)
    assert repository.reply_origin(platform="slack", workspace="T1", message_id="200.1") is None
    repository.record_reply_progress(job, reply_message_ids=["200.1"])
    # Still being answered: no buttons exist yet, nothing to find.
    assert repository.reply_origin(platform="slack", workspace="T1", message_id="200.1") is None
    assert repository.complete(
        job, reply_text="answer", reply_message_ids=["200.1", "200.2"], token_count=1
    )
    key = ConversationKey(platform="slack", workspace="T1", channel="C1", thread="100.1")
    for message in ("200.1", "200.2"):
        origin = repository.reply_origin(
            platform="slack", workspace="T1", channel="C1", message_id=message
        )
        assert origin is not None
        assert (origin.job_id, origin.conversation, origin.asker_id) == (job.id, key, "U1")
        assert dict(origin.reply_target) == where
    # The question itself, another channel, workspace or platform: not a reply of ours.
    for kwargs in (
        {"platform": "slack", "workspace": "T1", "channel": "C1", "message_id": "100.1"},
        {"platform": "slack", "workspace": "T1", "channel": "C2", "message_id": "200.1"},
        {"platform": "slack", "workspace": "T2", "channel": "C1", "message_id": "200.1"},
        {"platform": "discord", "workspace": "T1", "channel": "C1", "message_id": "200.1"},
        {"platform": "slack", "workspace": "T1", "channel": "C1", "message_id": '200.1"'},
    ):
        assert repository.reply_origin(**kwargs) is None
