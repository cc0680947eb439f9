"""adapters.streaming.StreamedReply over a recording fake platform, with a controllable clock."""

from __future__ import annotations

import pytest

from adapters.streaming import MessageGone, StreamedReply
from bot.delivery import ReplyStream, ReplyTarget
from bot.errors import DeliveryError
from bot.records import ConversationKey
from bot.splitting import split_message


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class RateLimited(Exception):
    pass


class Recorder(StreamedReply):
    """A platform that keeps messages in a dict and logs every call."""

    def __init__(self, target: ReplyTarget, clock: Clock, *, limit: int = 50, **kw: float) -> None:
        super().__init__(target, limit=limit, clock=clock, sleep=clock.sleep, **kw)
        self.clock = clock
        self.messages: dict[str, str] = {f"old{n}": "old" for n in range(5)}
        self.calls: list[tuple[str, str, str]] = []
        self.fail: list[Exception] = []
        self.counter = 0

    def _maybe_fail(self) -> None:
        if self.fail:
            raise self.fail.pop(0)

    async def post(self, text: str) -> str:
        self._maybe_fail()
        assert len(text) <= self.limit
        self.counter += 1
        message_id = f"m{self.counter}"
        self.messages[message_id] = text
        self.calls.append(("post", message_id, text))
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        self._maybe_fail()
        assert len(text) <= self.limit
        if message_id not in self.messages:
            raise MessageGone(message_id)
        self.messages[message_id] = text
        self.calls.append(("edit", message_id, text))

    async def discard(self, message_id: str) -> None:
        self.messages.pop(message_id)
        self.calls.append(("delete", message_id, ""))

    def delivery_error(self, exc: Exception) -> DeliveryError:
        retry = 3.0 if isinstance(exc, RateLimited) else None
        return DeliveryError(str(exc), retry_after=retry)


def target(existing: tuple[str, ...] = ()) -> ReplyTarget:
    return ReplyTarget(
        job_id=7,
        conversation=ConversationKey(platform="test", channel="c"),
        reply_target={},
        existing_message_ids=existing,
    )


def shown(reply: Recorder) -> list[str]:
    return [reply.messages[i] for i in reply.message_ids]


async def test_placeholder_then_throttled_edits_then_final_text() -> None:
    clock = Clock()
    reply = Recorder(target(), clock, min_interval=1.0)
    assert isinstance(reply, ReplyStream)
    await reply.start("Thinking…")
    assert reply.calls == [("post", "m1", "Thinking…")]
    await reply.update("Hel")  # within a second of the placeholder: skipped
    clock.now += 1.0
    await reply.update("Hello")
    await reply.update("Hello wor")  # skipped again
    clock.now += 0.4
    ids = await reply.finish("Hello world")
    assert clock.slept == [pytest.approx(0.6)]  # finish waits out the interval, then delivers
    assert ids == ("m1",)
    assert [c[2] for c in reply.calls] == ["Thinking…", "Hello", "Hello world"]
    await reply.update("late")  # after finish: ignored
    assert len(reply.calls) == 3


async def test_long_reply_finishes_earlier_chunks_and_posts_follow_ups() -> None:
    clock = Clock()
    reply = Recorder(target(), clock, min_interval=0.0, limit=50)
    text = " ".join(f"word{n}" for n in range(40))
    for end in range(5, len(text) + 1, 7):
        await reply.update(text[:end])
    await reply.finish(text)
    assert shown(reply) == split_message(text, limit=50)
    # Every message only ever grew, and a finished chunk was edited at most once afterwards.
    edits_per_id = {i: sum(1 for c in reply.calls if c[1] == i) for i in reply.message_ids}
    assert len(reply.message_ids) >= 4 and all(n >= 1 for n in edits_per_id.values())
    assert "".join(shown(reply)) == text


async def test_existing_messages_from_an_earlier_attempt_are_edited_not_reposted() -> None:
    clock = Clock()
    reply = Recorder(target(("old0", "old1", "old2")), clock, min_interval=0.0, limit=50)
    await reply.start("Thinking…")  # an earlier attempt's message is there: nothing posted
    ids = await reply.finish("short answer")
    assert ids == ("old0",)
    assert reply.calls == [
        ("edit", "old0", "short answer"),
        ("delete", "old1", ""),
        ("delete", "old2", ""),
    ]


async def test_a_deleted_message_is_reposted() -> None:
    clock = Clock()
    reply = Recorder(target(("gone",)), clock, min_interval=0.0)
    ids = await reply.finish("answer")
    assert ids == ("m1",) and reply.messages["m1"] == "answer"


async def test_platform_errors_become_delivery_errors_and_the_next_call_recovers() -> None:
    clock = Clock()
    reply = Recorder(target(), clock, min_interval=0.0)
    reply.fail.append(RateLimited("429 Too Many Requests"))
    with pytest.raises(DeliveryError) as caught:
        await reply.update("Hello")
    assert caught.value.retry_after == 3.0
    reply.fail.append(OSError("connection reset"))
    with pytest.raises(DeliveryError, match="connection reset"):
        await reply.finish("Hello")
    assert await reply.finish("Hello") == ("m1",)
    assert reply.messages == {**{f"old{n}": "old" for n in range(5)}, "m1": "Hello"}


async def test_status_text_replaces_only_an_untouched_placeholder() -> None:
    clock = Clock()
    reply = Recorder(target(), clock, min_interval=0.0)
    await reply.start("Queued (position 2)…")
    await reply.show_status("Queued (position 1)…")
    await reply.show_status("Queued (position 1)…")  # unchanged: no request
    await reply.update("The answer")
    await reply.show_status("Thinking…")  # reply text is showing: left alone
    assert [c[2] for c in reply.calls] == [
        "Queued (position 2)…",
        "Queued (position 1)…",
        "The answer",
    ]


async def test_blank_updates_are_not_sent() -> None:
    clock = Clock()
    reply = Recorder(target(), clock, min_interval=0.0)
    await reply.update("   ")
    assert reply.calls == []
