"""What the buttons under an answer need from the core: the reply a button names
(``Repository.answer_of``, SQLite and PostgreSQL) and a handoff asked without the keyword
(``Intake.ask_for_human``). The Discord buttons themselves are tested end to end in
tests/platforms/test_discord_buttons.py."""

from __future__ import annotations

from adapters.fake import FakeAdapter
from bot.delivery import ReplyTarget
from bot.intake import Intake
from bot.records import ConversationKey, Incoming, JobStatus
from storage.repository import Repository


class HandingOffAdapter(FakeAdapter):
    """The shipped fake adapter, plus the optional ``HandoffNotifier`` part of the contract."""

    def __init__(self, *, platform: str) -> None:
        super().__init__(platform=platform)
        self.handoffs: list[ReplyTarget] = []

    async def post_handoff(self, target: ReplyTarget) -> None:
        self.handoffs.append(target)

    async def ping_support(self, target: ReplyTarget, text: str) -> None:
        self.handoffs.append(target)


def question(message_id: str, *, platform: str = "discord", text: str = "hi") -> Incoming:
    return Incoming(
        platform=platform,
        workspace="G1",
        channel="C1",
        thread="T1",
        author_id="U1",
        text=text,
        message_id=message_id,
    )


def test_answer_of_names_the_conversation_the_asker_and_the_messages(
    repository: Repository,
) -> None:
    assert repository.enqueue(question("q1")) is not None
    (job,) = repository.claim(worker_id="w", limit=1, lease_seconds=60)
    assert repository.answer_of(job.id) is not None
    assert repository.answer_of(job.id).message_ids == ()  # type: ignore[union-attr]
    repository.record_reply_progress(job, reply_message_ids=("m1",))
    assert repository.answer_of(job.id).message_ids == ("m1",)  # type: ignore[union-attr]
    assert repository.complete(
        job, reply_text="hello", reply_message_ids=("m1", "m2"), token_count=1
    )
    answer = repository.answer_of(job.id)
    assert answer is not None
    assert answer.conversation == ConversationKey(
        platform="discord", workspace="G1", channel="C1", thread="T1"
    )
    assert (answer.job_id, answer.asker_id, answer.message_ids) == (job.id, "U1", ("m1", "m2"))
    assert repository.answer_of(job.id + 1) is None
    assert repository.answer_of(0) is None


async def test_asking_for_a_human_hands_over_like_the_keyword_once_per_event(
    repository: Repository,
) -> None:
    adapter = HandingOffAdapter(platform="discord")
    console = FakeAdapter(platform="console")
    intake = Intake(repository, handoff_keywords=("talk to a human",))
    intake.register(adapter)
    intake.register(console)

    result = await intake.ask_for_human(question("click-1", text="(the button)"))
    assert result is not None and result.created and result.handoff
    record = repository.job(result.job_id)
    assert record is not None and record.status is JobStatus.CANCELLED
    assert repository.handoffs_waiting() == 1 and len(adapter.handoffs) == 1

    again = await intake.ask_for_human(question("click-1", text="(the button)"))
    assert again is not None and not again.created and again.job_id == result.job_id
    later = await intake.ask_for_human(question("click-2", text="(the button)"))
    assert later is not None and not later.created and later.handoff  # waiting already
    assert len(adapter.handoffs) == 1 and len(repository.jobs()) == 1

    # A platform that never hands over (no one to ping): an ordinary question.
    plain = await intake.ask_for_human(question("c-1", platform="console", text="hello"))
    assert plain is not None and plain.created and not plain.handoff
    assert repository.count_jobs() == 1
