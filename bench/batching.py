"""Batching: do questions that arrive together all start generating together?

--questions (64) people ask at once, each in their own channel, through the whole path: intake ->
SQLite queue -> worker -> engine -> fake platform adapter. The fake engine models a batched GPU:
up to --capacity requests generate together, one decode step (--token-delay seconds, however many
requests share it) gives each its next word, and every reply is --tokens words long.

The same burst is run twice in one process: with the worker's default concurrency (unset: as many
jobs as the engine batches) and with the old fixed default of 8. Reported per run: time to first
token (from the question's arrival to the first text on the platform) p50/p95/max; the decode
steps between the first and the last question's first token (0 or 1 = one scheduling round);
how many questions got their first token before any reply was complete; the time to answer all.

Ends with:
  batching: N questions, first tokens within S step(s) (default) vs T (8);
  TTFT p95 X ms vs Y ms, lost 0
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.fake import FakeAdapter, FakeReplyStream
from bench.measure import percentile
from bot.delivery import ReplyTarget
from bot.generation.engine import SamplingParams
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.worker import Worker, WorkerOptions
from storage.repository import Repository

OLD_DEFAULT_CONCURRENCY = 8


class FirstTokenAdapter(FakeAdapter):
    """Records, per channel, when the first text and the complete reply reached the platform."""

    def __init__(self) -> None:
        super().__init__(platform="bench")
        self.first_text: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.replies: dict[str, int] = {}
        self.all_done = asyncio.Event()
        self.expected = 0

    async def open_reply(self, target: ReplyTarget) -> FakeReplyStream:
        adapter = self
        channel = target.conversation.channel

        class Stream(FakeReplyStream):
            async def update(self, text: str) -> None:
                await super().update(text)
                adapter.first_text.setdefault(channel, time.perf_counter())

            async def finish(self, text: str) -> tuple[str, ...]:
                ids = await super().finish(text)
                adapter.first_text.setdefault(channel, time.perf_counter())
                adapter.finished.setdefault(channel, time.perf_counter())
                adapter.replies[channel] = adapter.replies.get(channel, 0) + 1
                if len(adapter.finished) >= adapter.expected:
                    adapter.all_done.set()
                return tuple(ids)

        return Stream(self, target)


async def run_burst(
    *,
    questions: int,
    tokens: int,
    token_delay: float,
    capacity: int,
    concurrency: int | None,
    db: Path,
) -> dict[str, Any]:
    """All ``questions`` arrive at once while the worker runs; returns the figures."""
    repository = Repository.open(f"sqlite:///{db}")
    words = " ".join(f"w{n}" for n in range(tokens - 1))
    engine = FakeEngine(
        script=lambda _prompt: f"{words} end",
        token_delay=token_delay,
        batch_capacity=capacity,
    )
    await engine.start()
    adapter = FirstTokenAdapter()
    adapter.expected = questions
    intake = Intake(repository)
    await adapter.start(intake)
    worker = Worker(
        repository=repository,
        engine=engine,
        adapters={"bench": adapter},
        options=WorkerOptions(
            system_prompt="bench",
            max_new_tokens=tokens,
            sampling=SamplingParams(temperature=0.0),
            concurrency=concurrency,
            poll_seconds=0.5,
        ),
    )
    intake.on_enqueued(worker.wake)
    worker_task = asyncio.create_task(worker.run())
    sent: dict[str, float] = {}

    async def ask(n: int) -> None:
        channel = f"c{n}"
        sent[channel] = time.perf_counter()
        await adapter.receive(
            channel=channel, text=f"question {n}", message_id=str(n), author_id=f"u{n}"
        )

    started = time.perf_counter()
    try:
        async with asyncio.timeout(600):
            await asyncio.gather(*(ask(n) for n in range(questions)))
            await adapter.all_done.wait()
    except TimeoutError:
        print("batching: gave up waiting after 600 s", file=sys.stderr)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.2)  # anything delivered twice would show up now
    await worker.stop(drain_seconds=5)
    await worker_task
    repository.close()
    ttft = [1000 * (adapter.first_text[c] - sent[c]) for c in adapter.first_text]
    first_steps = list(engine.first_token_step.values())
    first_done = min(adapter.finished.values(), default=float("inf"))
    return {
        "concurrency": worker.concurrency,
        "questions": questions,
        "seconds": elapsed,
        "ttft_p50_ms": statistics.median(ttft) if ttft else float("nan"),
        "ttft_p95_ms": percentile(ttft, 0.95) if ttft else float("nan"),
        "ttft_max_ms": max(ttft, default=float("nan")),
        "first_token_step_spread": max(first_steps) - min(first_steps) if first_steps else -1,
        "started_before_first_reply_done": sum(
            1 for t in adapter.first_text.values() if t < first_done
        ),
        "peak_batch": engine.peak_active,
        "lost": sum(1 for n in range(questions) if f"c{n}" not in adapter.finished),
        "duplicated": sum(1 for count in adapter.replies.values() if count > 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=64, help="arriving at once")
    parser.add_argument("--tokens", type=int, default=64, help="words per reply")
    parser.add_argument(
        "--token-delay", type=float, default=0.03, help="seconds per decode step (default: 0.03)"
    )
    parser.add_argument("--capacity", type=int, default=128, help="the engine's batch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, concurrency in (("default", None), ("fixed 8", OLD_DEFAULT_CONCURRENCY)):
            runs[name] = asyncio.run(
                run_burst(
                    questions=args.questions,
                    tokens=args.tokens,
                    token_delay=args.token_delay,
                    capacity=args.capacity,
                    concurrency=concurrency,
                    db=Path(tmp) / f"{name.replace(' ', '-')}.db",
                )
            )

    print(
        f"{args.questions} questions at once, replies of {args.tokens} words, fake batched engine "
        f"({args.token_delay * 1000:.0f} ms per step, batch of {args.capacity})"
    )
    header = (
        f"{'worker concurrency':<22} {'TTFT p50':>9} {'p95':>9} {'max':>9} "
        f"{'1st-token spread':>17} {'started early':>14} {'all done':>9}"
    )
    print(header)
    for name, r in runs.items():
        print(
            f"{name + ' (' + str(r['concurrency']) + ')':<22} "
            f"{r['ttft_p50_ms']:>7.0f}ms {r['ttft_p95_ms']:>7.0f}ms {r['ttft_max_ms']:>7.0f}ms "
            f"{r['first_token_step_spread']:>11} steps "
            f"{r['started_before_first_reply_done']:>8}/{r['questions']:<5} "
            f"{r['seconds']:>8.2f}s"
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    new, old = runs["default"], runs["fixed 8"]
    lost = new["lost"] + old["lost"]
    doubled = new["duplicated"] + old["duplicated"]
    print(
        f"batching: {args.questions} questions, first tokens within "
        f"{new['first_token_step_spread']} step(s) (default) vs {old['first_token_step_spread']} (8); "
        f"TTFT p95 {new['ttft_p95_ms']:.0f} ms vs {old['ttft_p95_ms']:.0f} ms, "
        f"lost {lost}, duplicated {doubled}"
    )
    return 0 if lost == 0 and doubled == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
