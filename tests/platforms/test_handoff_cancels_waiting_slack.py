"""End to end on Slack (slack-bolt/slack_sdk against tests/support/slack_fake.py, the real
Service, SQLite queue and worker, the shipped FakeEngine): a thread's questions waiting behind
the one being answered are never answered once someone there asks for a human; the answer being
written finishes, other threads go on, and the waiting questions stay in the thread's history.
The same rule for every handoff path is tested in the core (tests/core/test_handoff_cancels_waiting.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.generation.fake import FakeEngine
from bot.records import JobStatus
from tests.support.slack_fake import FakeSlack
from tests.support.slack_rig import mention, start_rig

THREAD = "1690003000.000001"
LONG = "first question " + " ".join(f"word{n}" for n in range(40))


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    await fake.start()
    yield fake
    await fake.stop()


async def test_asking_for_a_human_cancels_the_threads_waiting_questions(
    tmp_path: Path, slack: FakeSlack
) -> None:
    engine = FakeEngine(delay_per_chunk=0.03)
    async with start_rig(tmp_path, slack, engine=engine, support_group="S0SUPPORT") as rig:
        await rig.event(mention(LONG, ts=THREAD))
        await rig.until(lambda: len(engine.requests) == 1)  # being written
        await rig.event(mention("second question", ts="1690003000.000002", thread_ts=THREAD))
        await rig.event(mention("third question", ts="1690003000.000003", thread_ts=THREAD))
        await rig.event(mention("human please", ts="1690003000.000004", thread_ts=THREAD))
        await rig.until(
            lambda: any("asked for a human" in m.text for m in rig.fake.thread("C0GENERAL", THREAD))
        )
        await rig.event(mention("elsewhere", ts="1690003000.000005"))
        await rig.until(lambda: rig.jobs_done(2))  # the answer being written, and the other thread
        await asyncio.sleep(0.3)
        texts = [m.text for m in rig.fake.thread("C0GENERAL", THREAD)]
        assert texts[0] == f"You said: Alice: {LONG}"  # finished, whole
        assert not any("second question" in t or "third question" in t for t in texts)
        assert sum("asked for a human" in t for t in texts) == 1
        assert [p for p in engine.prompts if "second question" in p or "third question" in p] == []
        assert rig.repository.jobs(status=JobStatus.QUEUED) == []
        # Nothing lost: the thread's history keeps every question.
        asked = [text for role, text in rig.stored("C0GENERAL", THREAD) if role == "user"]
        assert asked == [LONG, "second question", "third question", "human please"]
        statuses = sorted(job.status.value for job in rig.repository.jobs())
        assert statuses == ["cancelled", "cancelled", "cancelled", "done", "done"]
