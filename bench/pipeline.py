"""Pipeline overhead: intake -> SQLite queue -> worker -> delivery, with the fake engine.

200 channels x 20 messages (by default), run twice:
- closed loop: each simulated user sends the next message when the previous reply has landed, so
  200 conversations are in flight at once and the queue runs flat out -> messages/s;
- paced: the same 4,000 messages arrive as a Poisson process at --rate messages/s on random
  channels -> enqueue-to-delivered latency p50/p99 below saturation.
Both are compared in the same run with a baseline that has no queue and no database (the seed
tutorial's shape: on message -> generate -> post) using the same fake engine and fake platform.

Ends with:  pipeline: N messages/s, p50 X ms, p99 Y ms, lost 0, duplicated 0
(N from the closed loop, p50/p99 from the paced run, lost/duplicated over both.)

With --workers 1,2,4 [--database-url postgresql://...] it measures the queue past one process
instead: separate `solarbot worker` processes (see main_worker_processes); ends with
pipeline --workers: lost 0, duplicated 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp import web
from sqlalchemy.engine import make_url

from adapters.fake import FakeAdapter, FakeReplyStream
from bench.measure import percentile
from bot.delivery import ReplyTarget
from bot.generation.engine import GenerationRequest, SamplingParams
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.records import ConversationKey, Incoming, JobStatus
from bot.worker import Worker, WorkerOptions
from storage import database
from storage.repository import Repository
from tests.support.webhook_platform import WebhookPlatform


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


async def run_ours(
    channels: int,
    per_channel: int,
    concurrency: int,
    db: Path,
    *,
    rate: float | None = None,
    seed: int = 7,
) -> dict[str, float]:
    """Closed loop (``rate`` None): every user waits for the reply before sending the next message,
    so ``channels`` conversations are always in flight and the queue runs flat out. Paced: messages
    arrive as a Poisson process at ``rate`` per second on random channels, whether or not earlier
    ones were answered; latency then shows the pipeline's overhead below saturation."""
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
    total = channels * per_channel

    async def send(channel: int, n: int) -> None:
        text = f"c{channel} m{n}"
        delivered = adapter.expect(text)
        sent = time.perf_counter()
        await adapter.receive(channel=f"c{channel}", text=text, message_id=f"{channel}-{n}")
        await delivered.wait()
        latencies.append(adapter.delivered[text] - sent)

    async def user(channel: int) -> None:
        for n in range(per_channel):
            await send(channel, n)

    started = time.perf_counter()
    try:
        async with asyncio.timeout(600):
            if rate is None:
                await asyncio.gather(*(user(c) for c in range(channels)))
            else:
                await _paced(send, channels, per_channel, rate, seed)
    except TimeoutError:
        print("pipeline: gave up waiting after 600 s", file=sys.stderr)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.2)  # anything delivered twice would show up now
    await worker.stop(drain_seconds=5)
    await worker_task
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
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * percentile(latencies, 0.99) if latencies else float("nan"),
        "lost": lost,
        "duplicated": doubled,
        "stored_turns": stored,
    }


async def run_baseline(
    channels: int, per_channel: int, *, rate: float | None = None, seed: int = 7
) -> dict[str, float]:
    """No queue, no database: each message is generated and posted inline, in memory.
    Same closed-loop / paced shapes as ``run_ours``."""
    engine = FakeEngine()
    await engine.start()
    adapter = FakeAdapter(platform="bench")
    tokenizer = engine.tokenizer
    histories: dict[int, list[dict[str, str]]] = {c: [] for c in range(channels)}
    locks = {c: asyncio.Lock() for c in range(channels)}  # one reply at a time per channel
    latencies: list[float] = []
    counter = 0

    async def send(channel: int, n: int) -> None:
        nonlocal counter
        text = f"c{channel} m{n}"
        sent = time.perf_counter()
        async with locks[channel]:
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

    async def user(channel: int) -> None:
        for n in range(per_channel):
            await send(channel, n)

    started = time.perf_counter()
    if rate is None:
        await asyncio.gather(*(user(c) for c in range(channels)))
    else:
        await _paced(send, channels, per_channel, rate, seed)
    elapsed = time.perf_counter() - started
    total = channels * per_channel
    return {
        "messages": total,
        "seconds": elapsed,
        "rate": total / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
    }


async def _paced(
    send: Callable[[int, int], Awaitable[None]],
    channels: int,
    per_channel: int,
    rate: float,
    seed: int,
) -> None:
    """Messages arrive as a Poisson process at ``rate``/s on random channels."""
    rng = random.Random(seed)
    order = [c for c in range(channels) for _ in range(per_channel)]
    rng.shuffle(order)
    sent_per_channel = [0] * channels
    tasks = []
    for channel in order:
        await asyncio.sleep(rng.expovariate(rate))
        tasks.append(asyncio.create_task(send(channel, sent_per_channel[channel])))
        sent_per_channel[channel] += 1
    await asyncio.gather(*tasks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20, help="messages per channel")
    parser.add_argument("--concurrency", type=int, default=64, help="worker concurrency")
    parser.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="offered load (messages/s) of the latency run (default: 200)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--workers",
        help="comma-separated worker process counts (e.g. 1,2,4): run separate `solarbot worker`"
        " processes on a shared database instead (see main_worker_processes)",
    )
    parser.add_argument(
        "--database-url",
        help="with --workers: the database to run them on (emptied!) besides the SQLite reference",
    )
    args = parser.parse_args(argv)
    if args.workers is not None:
        return main_worker_processes(args)
    logging.basicConfig(level=logging.ERROR)

    baseline = asyncio.run(run_baseline(args.channels, args.messages))
    baseline_paced = asyncio.run(run_baseline(args.channels, args.messages, rate=args.rate))
    with tempfile.TemporaryDirectory() as tmp:
        flat_out = asyncio.run(
            run_ours(args.channels, args.messages, args.concurrency, Path(tmp) / "closed.db")
        )
        paced = asyncio.run(
            run_ours(
                args.channels,
                args.messages,
                args.concurrency,
                Path(tmp) / "paced.db",
                rate=args.rate,
            )
        )

    print(f"{args.channels} channels x {args.messages} messages, fake engine (instant replies)")
    print(f"{'run':<52} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    rows = [
        ("baseline: inline, no queue, no DB (closed loop)", baseline),
        ("solarbot: intake+SQLite+worker (closed loop)", flat_out),
        (f"baseline: paced at {args.rate:.0f} msgs/s", baseline_paced),
        (f"solarbot: paced at {args.rate:.0f} msgs/s (latency run)", paced),
    ]
    for name, figures in rows:
        print(
            f"{name:<52} {figures['rate']:>8.0f} {figures['p50_ms']:>8.1f} {figures['p99_ms']:>8.1f}"
        )
    print(
        f"durable path vs. inline baseline: {flat_out['rate'] / baseline['rate']:.3f}x the rate; "
        f"latency overhead at {args.rate:.0f} msgs/s: "
        f"+{paced['p50_ms'] - baseline_paced['p50_ms']:.1f} ms p50, "
        f"+{paced['p99_ms'] - baseline_paced['p99_ms']:.1f} ms p99"
    )
    lost = flat_out["lost"] + paced["lost"]
    doubled = flat_out["duplicated"] + paced["duplicated"]
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "baseline_closed_loop": baseline,
                    "baseline_paced": baseline_paced,
                    "closed_loop": flat_out,
                    "paced": paced,
                },
                indent=2,
            )
        )
    print(
        f"pipeline: {flat_out['rate']:.0f} messages/s, p50 {paced['p50_ms']:.0f} ms, "
        f"p99 {paced['p99_ms']:.0f} ms, lost {lost:.0f}, duplicated {doubled:.0f}"
    )
    return 0 if lost == 0 and doubled == 0 else 1


# ---------------------------------------------------------------------------------------------
# --workers: separate `solarbot worker` processes on a shared database (issue 17)
#
# The bench process enqueues (as an adapters process would) into SQLite or PostgreSQL; N real
# `solarbot worker --engine fake` processes claim, generate and deliver through the webhook
# platform to a loopback receiver (tests/support/webhook_platform.py) that this process runs. Closed loop:
# each channel sends its next message when the previous reply has landed on the receiver.


class TimedPlatform(WebhookPlatform):
    """The loopback receiver, noting when each job's reply first shows its complete text."""

    def __init__(self) -> None:
        super().__init__()
        self.expected: dict[int, str] = {}
        self.landed: dict[int, float] = {}
        self.waiters: dict[int, asyncio.Event] = {}

    def expect(self, job_id: int, text: str) -> asyncio.Event:
        self.expected[job_id] = text
        event = self.waiters.setdefault(job_id, asyncio.Event())
        self._note(job_id)
        return event

    def _note(self, job_id: int) -> None:
        parts = self.replies().get(job_id, [])
        if job_id in self.expected and "".join(m.text for m in parts) == self.expected[job_id]:
            self.landed.setdefault(job_id, time.perf_counter())
            self.waiters.setdefault(job_id, asyncio.Event()).set()

    async def _post(self, request: web.Request) -> web.Response:
        response = await super()._post(request)
        self._note_all()
        return response

    async def _patch(self, request: web.Request) -> web.Response:
        response = await super()._patch(request)
        self._note_all()
        return response

    def _note_all(self) -> None:
        for job_id in self.expected.keys() - self.landed.keys():
            self._note(job_id)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fresh_database(url: str) -> None:
    """Every solarbot table dropped (migrating down) and created again: a clean queue."""
    engine = database.create_db_engine(url)
    try:
        database.upgrade(engine)
        database.downgrade(engine, "base")
        database.upgrade(engine)
    finally:
        engine.dispose()


def _worker_environment(database_url: str, platform_url: str, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLARBOT_")}
    env.update(
        {
            "SOLARBOT_DATABASE_URL": database_url,
            "SOLARBOT_WEBHOOK_URL": platform_url,
            "SOLARBOT_METRICS_PORT": str(metrics_port),
            "SOLARBOT_POLL_SECONDS": "0.05",
            "SOLARBOT_EDIT_INTERVAL_SECONDS": "0.05",
            "SOLARBOT_LOG_LEVEL": "WARNING",
        }
    )
    return env


async def _wait_ready(ports: list[int], processes: list[subprocess.Popen[bytes]]) -> None:
    async with aiohttp.ClientSession() as http:
        for port, process in zip(ports, processes, strict=True):
            async with asyncio.timeout(180):
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"a worker exited with {process.returncode}")
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)


def _start_workers(
    database_url: str, platform_url: str, ports: list[int], log_path: Path
) -> list[subprocess.Popen[bytes]]:
    """One `solarbot worker --engine fake` process per metrics port."""
    processes = []
    with log_path.open("ab") as log:
        for port in ports:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bot.cli", "worker", "--engine", "fake"],
                    cwd=Path(__file__).resolve().parents[1],
                    env=_worker_environment(database_url, platform_url, port),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return processes


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def run_worker_processes(
    database_url: str, workers: int, channels: int, messages: int, log_path: Path
) -> dict[str, float]:
    """Closed loop over ``channels`` x ``messages`` with ``workers`` `solarbot worker` processes."""
    _fresh_database(database_url)
    repository = Repository.open(database_url)
    platform = TimedPlatform()
    platform_url = await platform.start()
    ports = [_free_port() for _ in range(workers)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes = _start_workers(database_url, platform_url, ports, log_path)
        await _wait_ready(ports, processes)
        sent: dict[int, float] = {}
        expected: dict[int, tuple[str, str]] = {}
        order: dict[str, list[int]] = {}

        async def user(channel: int) -> None:
            name = f"ch{channel}"
            for n in range(messages):
                text = f"w{workers} c{channel} m{n}"
                began = time.perf_counter()
                result = await asyncio.to_thread(
                    repository.enqueue,
                    Incoming(
                        platform="webhook",
                        channel=name,
                        author_id=f"u{channel}",
                        text=text,
                        message_id=f"{name}-{n}",
                    ),
                )
                sent[result.job_id] = began
                reply = f"You said: {text}"
                expected[result.job_id] = (name, reply)
                order.setdefault(name, []).append(result.job_id)
                await platform.expect(result.job_id, reply).wait()

        began = time.perf_counter()
        try:
            async with asyncio.timeout(600):
                await asyncio.gather(*(user(c) for c in range(channels)))
        except TimeoutError:
            print("pipeline --workers: gave up waiting after 600 s", file=sys.stderr)
        elapsed = time.perf_counter() - began
        await asyncio.sleep(0.5)  # a duplicate would be posted now, if ever
        verdict = platform.check(expected, order)
        latencies = [platform.landed[j] - sent[j] for j in sent if j in platform.landed]
        done = await asyncio.to_thread(repository.count_jobs, statuses=(JobStatus.DONE,))
        total = channels * messages
        return {
            "workers": workers,
            "messages": total,
            "rate": len(latencies) / elapsed,
            "p50_ms": 1000 * percentile(latencies, 0.50) if latencies else float("nan"),
            "p99_ms": 1000 * percentile(latencies, 0.99) if latencies else float("nan"),
            "lost": total - len(latencies) + (total - done) + verdict.lost,
            "duplicated": verdict.doubled,
            "out_of_order": verdict.out_of_order,
        }
    finally:
        await asyncio.to_thread(_stop, processes)
        await platform.stop()
        repository.close()


def _hidden(url: str) -> str:
    return str(make_url(url).render_as_string(hide_password=True))


def main_worker_processes(args: argparse.Namespace) -> int:
    """``--workers 1,2,4 [--database-url postgresql://...]``: SQLite with one worker process, then
    the given database (its solarbot tables are dropped and created again) with each count."""
    counts = [int(n) for n in args.workers.split(",")]
    runs: list[tuple[str, str, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        runs.append(("SQLite", f"sqlite:///{Path(tmp) / 'queue.db'}", 1))
        if args.database_url:
            kind = make_url(args.database_url).get_backend_name()
            runs.extend((kind, args.database_url, n) for n in counts)
        else:
            runs.extend(("SQLite", f"sqlite:///{Path(tmp) / 'queue.db'}", n) for n in counts[1:])
        results = []
        for kind, url, workers in runs:
            figures = asyncio.run(
                run_worker_processes(
                    url, workers, args.channels, args.messages, Path(tmp) / "workers.log"
                )
            )
            results.append({"database": kind, **figures})
    print(
        f"{args.channels} channels x {args.messages} messages, closed loop, separate "
        f"`solarbot worker --engine fake` processes"
        + (f", {_hidden(args.database_url)}" if args.database_url else "")
    )
    print(
        f"{'database':<12} {'workers':>7} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5} {'dup':>5}"
    )
    for row in results:
        print(
            f"{row['database']:<12} {row['workers']:>7.0f} {row['rate']:>8.1f} "
            f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['lost']:>5.0f} "
            f"{row['duplicated']:>5.0f}"
        )
    first = [r for r in results[1:] if r["workers"] == min(counts)]
    last = [r for r in results[1:] if r["workers"] == max(counts)]
    if first and last and len(counts) > 1:
        print(
            f"{max(counts)} workers vs {min(counts)}: "
            f"{last[0]['rate'] / first[0]['rate']:.2f}x the messages/s"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    lost = sum(r["lost"] for r in results)
    doubled = sum(r["duplicated"] for r in results)
    print(f"pipeline --workers: lost {lost:.0f}, duplicated {doubled:.0f}")
    return 0 if lost == 0 and doubled == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
