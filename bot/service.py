"""Wiring: settings -> repository, engine, adapters, intake and worker, run until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import make_url

from adapters.console import PLATFORM as CONSOLE
from adapters.console import ConsoleAdapter
from bot.delivery import ChatAdapter
from bot.errors import ConfigError
from bot.generation.engine import Engine, SamplingParams
from bot.intake import Intake
from bot.settings import Settings
from bot.worker import Worker, WorkerOptions
from storage.repository import Repository

log = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Engine:
    if settings.engine == "fake":
        from bot.generation.fake import FakeEngine

        return FakeEngine(context_window=settings.context_window or 4096)
    from bot.generation.local import TransformersEngine

    return TransformersEngine(
        model=settings.model,
        dtype=settings.dtype,
        device=settings.device,
        offline=settings.offline,
        context_window=settings.context_window,
        cache_blocks=settings.cache_blocks,
        max_batch_tokens=settings.max_batch_tokens,
    )


def platform_adapters(settings: Settings, *, ingress: bool = True) -> list[ChatAdapter]:
    """Adapters whose credentials are configured. ``ingress=False`` (``solarbot worker``): the
    Discord adapter delivers replies over REST only and opens no gateway connection."""
    adapters: list[ChatAdapter] = []
    if settings.discord_token is not None:
        from adapters.discord import DiscordAdapter

        adapters.append(DiscordAdapter.from_settings(settings, ingress=ingress))
    if settings.slack_bot_token is not None:
        from adapters.slack import SlackAdapter

        adapters.append(SlackAdapter.from_settings(settings, ingress=ingress))
    return adapters


def worker_options(settings: Settings) -> WorkerOptions:
    return WorkerOptions(
        system_prompt=settings.system_prompt,
        max_new_tokens=settings.max_new_tokens,
        sampling=SamplingParams(temperature=settings.temperature, top_p=settings.top_p),
        concurrency=settings.worker_concurrency,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        retry_base_seconds=settings.retry_base_seconds,
        retry_max_seconds=settings.retry_max_seconds,
        poll_seconds=settings.poll_seconds,
    )


def redacted_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@dataclass
class Service:
    """Adapters (ingress + egress), the engine and, unless ``run_worker`` is False, a worker."""

    settings: Settings
    repository: Repository
    engine: Engine | None
    adapters: Sequence[ChatAdapter]
    run_worker: bool = True
    drain_seconds: float = 30.0

    def __post_init__(self) -> None:
        self.intake = Intake(self.repository)
        self.worker: Worker | None = None
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Run until ``stopping`` is set (signals, end of console input), then shut down cleanly."""
        for adapter in self.adapters:
            await adapter.start(self.intake)
            log.info("adapter %s started", adapter.platform)
        worker_task: asyncio.Task[None] | None = None
        try:
            if self.run_worker:
                if self.engine is None:
                    raise ConfigError("a worker needs an engine")
                log.info("loading model %s", self.engine.model_id)
                await self.engine.start()  # warm-up happens before any job is claimed
                self.worker = Worker(
                    repository=self.repository,
                    engine=self.engine,
                    adapters={adapter.platform: adapter for adapter in self.adapters},
                    options=worker_options(self.settings),
                )
                self.intake.on_enqueued(self.worker.wake)
                worker_task = asyncio.create_task(self.worker.run(), name="worker")
            stop_waiter = asyncio.create_task(self.stopping.wait())
            waiters: list[asyncio.Task[None] | asyncio.Task[bool]] = [stop_waiter]
            if worker_task is not None:
                waiters.append(worker_task)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            stop_waiter.cancel()
            if worker_task is not None and worker_task.done():
                worker_task.result()  # the worker crashed: surface its error
        finally:
            if self.worker is not None:
                await self.worker.stop(drain_seconds=self.drain_seconds)
            if worker_task is not None and not worker_task.done():
                await worker_task
            for adapter in self.adapters:
                await adapter.stop()
            if self.engine is not None:
                await self.engine.close()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.stopping.set)

    async def stop_when_console_done(self, console: ConsoleAdapter) -> None:
        """End of console input: finish the console's pending replies, then stop the service."""
        await console.input_closed.wait()
        while not self.stopping.is_set():
            pending = await asyncio.to_thread(self.repository.count_jobs, platform=CONSOLE)
            if pending == 0:
                break
            await asyncio.sleep(0.05)
        self.stopping.set()
