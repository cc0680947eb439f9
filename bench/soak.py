"""Soak with fault injection: the real intake -> SQLite queue -> worker process -> platform path.

Messages go through the real ``Intake`` into a SQLite file; a real ``solarbot worker --engine fake``
subprocess delivers the replies over HTTP (``adapters.webhook``) to a loopback fake platform
(``tests/support/webhook_platform.py``). While messages flow, at random (seeded) moments:

- the worker process is killed with SIGKILL and restarted (stale leases are reclaimed on start-up
  and when they expire);
- the platform has an outage: 503s, 429s with Retry-After, or requests hanging past the client's
  timeout; and some POSTs create their message and then answer 500 anyway;
- another connection holds SQLite's write lock (``BEGIN IMMEDIATE``) for a while: the busy
  timeout must absorb it.

Then the faults stop, the queue drains, and the invariants are checked from the platform's records
and the database: every accepted message has exactly one complete reply, in order within each
channel, nothing is left ``running`` or unfinished, no reply was posted twice. The last line is

    soak: N messages, F faults, lost 0, doubled 0, out-of-order 0, stuck 0

and the exit status is 0 only when lost, doubled, out-of-order and stuck are all 0.
Run: ``.venv/bin/python bench/soak.py`` (2,000 messages over 100 channels; see --help).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.intake import Intake  # noqa: E402
from bot.records import ConversationKey, Incoming, JobStatus, Role  # noqa: E402
from storage.repository import Repository  # noqa: E402
from tests.support.webhook_platform import FAULT_KINDS, WebhookPlatform  # noqa: E402

# Plain words and Unicode (accents, CJK, Arabic, an emoji ZWJ sequence) that must round-trip.
WORDS = [
    *["alpha", "beta", "gamma", "delta", "queue", "lease", "retry", "worker", "reply", "token"],
    *["Grüße", "東京", "مرحبا", "👩\u200d💻", "café", "naïve", "Ωmega"],
]


@dataclass
class Counters:
    kills: int = 0
    outages: Counter[str] = field(default_factory=Counter)
    lock_holds: int = 0
    log: list[str] = field(default_factory=list)


class WorkerProcess:
    """``solarbot worker --engine fake`` against the soak's database and platform."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env = env
        self._log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self._log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "worker", "--engine", "fake"],
                cwd=ROOT,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM: the worker drains and exits; SIGKILL if it does not within ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def worker_env(db_url: str, platform_url: str, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLARBOT_")}
    env.update(
        {
            "SOLARBOT_DATABASE_URL": db_url,
            "SOLARBOT_WEBHOOK_URL": platform_url,
            "SOLARBOT_WEBHOOK_TIMEOUT_SECONDS": "0.5",
            "SOLARBOT_FAKE_DELAY_SECONDS": str(args.delay),
            "SOLARBOT_LEASE_SECONDS": "1",
            "SOLARBOT_WORKER_CONCURRENCY": str(args.concurrency),
            "SOLARBOT_MAX_ATTEMPTS": "100",  # outages are short: nothing should be given up
            "SOLARBOT_RETRY_BASE_SECONDS": "0.05",
            "SOLARBOT_RETRY_MAX_SECONDS": "0.5",
            "SOLARBOT_POLL_SECONDS": "0.05",
            "SOLARBOT_EDIT_INTERVAL_SECONDS": "0.1",
            "SOLARBOT_LOG_LEVEL": "WARNING",
        }
    )
    return env


def hold_write_locks(
    db_path: Path, stop: threading.Event, rng: random.Random, counters: Counters, mean_gap: float
) -> None:
    """Another writer: holds SQLite's write lock for 50-400 ms at random moments."""
    connection = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        while not stop.wait(rng.expovariate(1 / mean_gap)):
            connection.execute("BEGIN IMMEDIATE")
            held = rng.uniform(0.05, 0.4)
            counters.lock_holds += 1
            time.sleep(held)
            connection.execute("COMMIT")
    finally:
        connection.close()


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="solarbot-soak-"))
    db_path = workdir / "solarbot.db"
    db_url = f"sqlite:///{db_path}"
    repository = Repository.open(db_url)
    intake = Intake(repository)
    platform = WebhookPlatform(seed=args.seed, hang_seconds=1.0, retry_after=0.2)
    platform_url = await platform.start()
    counters = Counters()
    worker = WorkerProcess(worker_env(db_url, platform_url, args), workdir / "worker.log")
    worker.start()
    started = time.monotonic()
    faults_on = asyncio.Event()
    faults_on.set()
    lock_stop = threading.Event()
    lock_thread = threading.Thread(
        target=hold_write_locks,
        args=(db_path, lock_stop, random.Random(args.seed + 1), counters, args.lock_every),
        daemon=True,
    )
    lock_thread.start()

    def note(event: str) -> None:
        counters.log.append(f"{time.monotonic() - started:8.2f}s {event}")

    async def killer() -> None:
        while faults_on.is_set():
            await asyncio.sleep(rng.expovariate(1 / args.kill_every))
            if not faults_on.is_set():
                break
            worker.kill()
            counters.kills += 1
            note(f"SIGKILL worker (kill {counters.kills})")
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            worker.start()

    async def outages() -> None:
        platform.apply_then_fail = args.apply_then_fail
        while faults_on.is_set():
            await asyncio.sleep(rng.expovariate(1 / args.outage_every))
            if not faults_on.is_set():
                break
            kind = rng.choice(FAULT_KINDS)
            seconds = rng.uniform(0.2, 1.0)
            platform.outage(kind, seconds)
            counters.outages[kind] += 1
            note(f"platform outage {kind} for {seconds:.2f}s")
        platform.apply_then_fail = 0.0
        platform.end_outage()

    expected: dict[int, tuple[str, str]] = {}
    order: dict[str, list[int]] = {}

    async def sender() -> None:
        channels = [f"c{n:03d}" for n in range(args.channels)]
        for index in range(args.messages):
            channel = rng.choice(channels)
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
            text = f"m{index} {words}"
            result = await intake.submit(
                Incoming(
                    platform="webhook",
                    channel=channel,
                    author_id=f"u{rng.randrange(50)}",
                    text=text,
                    message_id=f"msg-{index}",
                )
            )
            assert result is not None and result.created
            expected[result.job_id] = (channel, f"You said: {text}")
            order.setdefault(channel, []).append(result.job_id)
            if args.rate > 0:
                await asyncio.sleep(rng.expovariate(args.rate))

    fault_tasks = [asyncio.create_task(killer()), asyncio.create_task(outages())]
    await sender()
    sent_at = time.monotonic()
    # Keep the faults going while the backlog is worked off, for at least --fault-tail seconds.
    await asyncio.sleep(max(0.0, args.fault_tail - (time.monotonic() - sent_at)))
    faults_on.clear()
    lock_stop.set()
    for task in fault_tasks:
        task.cancel()
    await asyncio.gather(*fault_tasks, return_exceptions=True)
    lock_thread.join()
    platform.end_outage()
    platform.apply_then_fail = 0.0
    if worker.process is None or worker.process.poll() is not None:
        worker.start()
    deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < deadline:
        pending = await asyncio.to_thread(repository.count_jobs)
        if pending == 0:
            break
        await asyncio.sleep(0.2)
    duration = time.monotonic() - started
    exit_code = worker.stop()

    # Invariants, from the platform's records and the database.
    verdict = platform.check(expected, order)
    records = repository.jobs()
    stuck = sum(1 for job in records if job.status in (JobStatus.QUEUED, JobStatus.RUNNING))
    failed = [job for job in records if job.status is not JobStatus.DONE]
    channels_seen = {channel for channel, _ in expected.values()}
    stored_replies = sum(
        1
        for channel in channels_seen
        for message in repository.messages(ConversationKey(platform="webhook", channel=channel))
        if message.role is Role.ASSISTANT
    )
    db_doubled = max(0, stored_replies - len(expected))
    repository.close()
    await platform.stop()

    faults = (
        counters.kills
        + sum(counters.outages.values())
        + counters.lock_holds
        + platform.failed_requests["applied-then-500"]
    )
    lost = verdict.lost + max(0, len(expected) - stored_replies)
    doubled = verdict.doubled + db_doubled
    if args.verbose:
        for line in counters.log:
            print(line)
    for problem in verdict.problems[:20]:
        print("problem:", problem)
    for job in failed[:10]:
        print(f"problem: job {job.id} ended {job.status.value}: {job.error}")
    print(
        f"duration {duration:.1f}s; worker starts {worker.starts} (SIGKILLs {counters.kills}); "
        f"platform outages {dict(counters.outages)}, failed requests {platform.failed_requests}; "
        f"SQLite lock holds {counters.lock_holds}; idempotency replays {platform.replayed_keys}; "
        f"requests {platform.requests}; final worker exit {exit_code}"
    )
    passed = lost == doubled == verdict.out_of_order == stuck == 0 and not failed
    if passed and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"database and worker log kept in {workdir}")
    print(
        f"soak: {len(expected)} messages, {faults} faults, lost {lost}, doubled {doubled}, "
        f"out-of-order {verdict.out_of_order}, stuck {stuck}"
    )
    return 0 if passed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--rate", type=float, default=25.0, help="messages/s sent (0 = flood)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.02, help="fake engine s per word")
    parser.add_argument("--kill-every", type=float, default=6.0, help="mean s between SIGKILLs")
    parser.add_argument("--outage-every", type=float, default=4.0, help="mean s between outages")
    parser.add_argument("--lock-every", type=float, default=2.0, help="mean s between lock holds")
    parser.add_argument("--apply-then-fail", type=float, default=0.02)
    parser.add_argument("--fault-tail", type=float, default=5.0)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--verbose", action="store_true", help="print the fault timeline")
    parser.add_argument("--keep", action="store_true", help="keep the database and worker log")
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
