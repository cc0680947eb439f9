"""Pipeline overhead: intake -> SQLite queue -> worker -> delivery, with the fake engine.

200 channels x 20 messages (by default). Each simulated user sends their next message when the
previous reply has been delivered, so 200 conversations are always in flight. Measured in the same
run against a baseline with no queue and no database (the seed tutorial's shape: on message ->
generate -> post), using the same fake engine and fake platform.

Ends with:  pipeline: N messages/s, p50 X ms, p99 Y ms, lost 0, duplicated 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.fake import FakeAdapter, FakeReplyStream
from bot.delivery import ReplyTarget
from bot.generation.engine import GenerationRequest, SamplingParams
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.models import ConversationKey
from bot.worker import Worker, WorkerOptions
from storage.repository import Repository


class TimedAdapter(FakeAdapter):
    """Records when each reply (by its trigger text) was completely delivered."""

    def __init__(self) -> None:
        super().__init__(platform="bench")
        self.delivered: dict[str, float] = {}
        self.events: dict[str, asyncio.Event] = {}
        self.finished: Counter[str] = Counter()

    def expect(self, text: str) -> asyncio.Event:
        event = asyncio.Event()
        self.events[text] = event
        return event

    def done(self, reply: str) -> None:
        said = reply.removeprefix("You said: ")
        self.finished[said] += 1
        self.delivered.setdefault(said, time.perf_counter())
        self.events[said].set()

    async def open_reply(self, target: ReplyTarget) -> FakeReplyStream:
        adapter = self

        class Stream(FakeReplyStream):
            async def finish(self, text: str) -> tuple[str, ...]:
                ids = await super().finish(text)
                adapter.done(text)
                return tuple(ids)

        return Stream(self, target)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_ours(channels: int, per_channel: int, concurrency: int, db: Path) -> dict[str, float]:
    repository = Repository.open(f"sqlite:///{db}")
    engine = FakeEngine()
    await engine.start()
    adapter = TimedAdapter()
    intake = Intake(repository)
    await adapter.start(intake)
    worker = Worker(
        repository=repository,
        engine=engine,
        adapters={"bench": adapter},
        options=WorkerOptions(
            system_prompt="bench",
            max_new_tokens=64,
            sampling=SamplingParams(temperature=0.0),
            concurrency=concurrency,
            poll_seconds=0.5,
        ),
    )
    intake.on_enqueued(worker.wake)
    worker_task = asyncio.create_task(worker.run())
    latencies: list[float] = []

    async def user(channel: int) -> None:
        for n in range(per_channel):
            text = f"c{channel} m{n}"
            delivered = adapter.expect(text)
            sent = time.perf_counter()
            await adapter.receive(channel=f"c{channel}", text=text, message_id=f"{channel}-{n}")
            await delivered.wait()
            latencies.append(adapter.delivered[text] - sent)

    started = time.perf_counter()
    await asyncio.gather(*(user(c) for c in range(channels)))
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.2)  # anything delivered twice would show up now
    await worker.stop(drain_seconds=5)
    await worker_task
    total = channels * per_channel
    lost = sum(
        1
        for c in range(channels)
        for n in range(per_channel)
        if adapter.finished[f"c{c} m{n}"] == 0
    )
    doubled = sum(1 for count in adapter.finished.values() if count > 1)
    stored = sum(
        len(repository.messages(ConversationKey(platform="bench", channel=f"c{c}")))
        for c in range(channels)
    )
    repository.close()
    return {
        "messages": total,
        "seconds": elapsed,
        "rate": total / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "lost": lost,
        "duplicated": doubled,
        "stored_turns": stored,
    }


async def run_baseline(channels: int, per_channel: int) -> dict[str, float]:
    """No queue, no database: each message is generated and posted inline, in memory."""
    engine = FakeEngine()
    await engine.start()
    adapter = FakeAdapter(platform="bench")
    tokenizer = engine.tokenizer
    histories: dict[int, list[dict[str, str]]] = {c: [] for c in range(channels)}
    latencies: list[float] = []
    counter = 0

    async def user(channel: int) -> None:
        nonlocal counter
        for n in range(per_channel):
            text = f"c{channel} m{n}"
            sent = time.perf_counter()
            histories[channel].append({"role": "user", "content": text})
            prompt = tokenizer.render_chat(
                [{"role": "system", "content": "bench"}, *histories[channel]],
                add_generation_prompt=True,
            )
            counter += 1
            request = GenerationRequest(
                request_id=str(counter),
                prompt_ids=tokenizer.encode(prompt, add_bos=True),
                max_new_tokens=64,
                sampling=SamplingParams(temperature=0.0),
            )
            target = ReplyTarget(
                job_id=counter,
                conversation=ConversationKey(platform="bench", channel=f"c{channel}"),
                reply_target={},
            )
            stream = await adapter.open_reply(target)
            reply = ""
            async for delta in engine.stream(request):
                reply += delta
                await stream.update(reply)
            await stream.finish(reply)
            histories[channel].append({"role": "assistant", "content": reply})
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(user(c) for c in range(channels)))
    elapsed = time.perf_counter() - started
    total = channels * per_channel
    return {
        "messages": total,
        "seconds": elapsed,
        "rate": total / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20, help="messages per channel")
    parser.add_argument("--concurrency", type=int, default=64, help="worker concurrency")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    baseline = asyncio.run(run_baseline(args.channels, args.messages))
    with tempfile.TemporaryDirectory() as tmp:
        ours = asyncio.run(
            run_ours(args.channels, args.messages, args.concurrency, Path(tmp) / "bench.db")
        )

    print(f"{'path':<36} {'msgs/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    print(
        f"{'baseline (inline, no queue, no DB)':<36} {baseline['rate']:>9.0f} "
        f"{baseline['p50_ms']:>9.1f} {baseline['p99_ms']:>9.1f}"
    )
    print(
        f"{'solarbot (intake+SQLite+worker)':<36} {ours['rate']:>9.0f} "
        f"{ours['p50_ms']:>9.1f} {ours['p99_ms']:>9.1f}"
    )
    print(
        f"overhead of durability: {ours['rate'] / baseline['rate']:.2f}x the baseline's rate, "
        f"+{ours['p50_ms'] - baseline['p50_ms']:.1f} ms p50; "
        f"{ours['stored_turns']:.0f} turns stored"
    )
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "ours": ours}, indent=2))
    print(
        f"pipeline: {ours['rate']:.0f} messages/s, p50 {ours['p50_ms']:.0f} ms, "
        f"p99 {ours['p99_ms']:.0f} ms, lost {ours['lost']:.0f}, duplicated {ours['duplicated']:.0f}"
    )
    return 0 if ours["lost"] == 0 and ours["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
