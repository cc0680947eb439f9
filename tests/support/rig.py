"""One running service around one adapter, for the tests that drive the core through a platform:
a real ``Repository``, an engine (the shipped ``FakeEngine`` unless a test brings another), the
real ``Intake`` and the real ``Worker``, started and stopped in the order the service uses.

Two ways to start one, both giving a ``ServiceRig``:

- ``ServiceRig.start(adapter, ...)`` wires intake and worker by hand (options, limits and handoff
  keywords passed directly): the seams without the settings.
- ``ServiceRig.serve(settings, adapter, ...)`` runs the real ``bot.service.Service`` built from
  ``Settings`` (limits, handoff keywords, worker options all read from the settings, as
  ``solarbot run`` does) and returns once its worker runs.

Platform tests subclass ``ServiceRig`` to add their peer (the fake Discord or Slack, the webhook
receiver) and their helpers; ``start``/``serve`` pass such extra fields through ``extras``.
Stopping is ``await rig.stop()`` (worker drained, then the adapter; or the whole service); the
repository stays open for the test to read afterwards and is closed by ``rig.close()``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

from bot.delivery import ChatAdapter
from bot.generation.engine import Engine, SamplingParams
from bot.intake import Intake
from bot.limits import Limits
from bot.records import JobStatus
from bot.service import Service
from bot.settings import Settings
from bot.worker import Worker, WorkerOptions
from storage.repository import Repository

AdapterT = TypeVar("AdapterT", bound=ChatAdapter)
EngineT = TypeVar("EngineT", bound=Engine)

SYSTEM_PROMPT = "You are a test bot."


def quick_worker_options(**overrides: Any) -> WorkerOptions:
    """Worker options for tests: greedy sampling, short leases, retries and polls (milliseconds,
    not the production seconds), and the system prompt ``SYSTEM_PROMPT``; ``overrides`` replace
    any of them by field name."""
    values: dict[str, Any] = {
        "system_prompt": SYSTEM_PROMPT,
        "max_new_tokens": 200,
        "sampling": SamplingParams(temperature=0.0),
        "concurrency": 4,
        "lease_seconds": 5.0,
        "max_attempts": 3,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "poll_seconds": 0.05,
    }
    values.update(overrides)
    return WorkerOptions(**values)


@dataclass(kw_only=True)
class ServiceRig(Generic[AdapterT, EngineT]):
    """A running intake + worker around ``adapter``. ``task`` runs the worker (``start``) or the
    whole service (``serve``, which also sets ``service``)."""

    repository: Repository
    engine: EngineT
    adapter: AdapterT
    intake: Intake
    worker: Worker
    task: asyncio.Task[None]
    service: Service | None = None

    @classmethod
    async def start(
        cls,
        adapter: AdapterT,
        *,
        repository: Repository,
        engine: EngineT,
        options: WorkerOptions,
        limits: Limits | None = None,
        handoff_keywords: tuple[str, ...] = (),
        **extras: Any,
    ) -> Self:
        """Start ``engine``, an ``Intake`` (refusals told through ``adapter``), ``adapter`` on it
        and a ``Worker`` woken by every new job: the order ``Service.run`` uses."""
        await engine.start()
        intake = Intake(repository, limits=limits, handoff_keywords=handoff_keywords)
        intake.register(adapter)
        await adapter.start(intake)
        worker = Worker(
            repository=repository,
            engine=engine,
            adapters={adapter.platform: adapter},
            options=options,
        )
        intake.on_enqueued(worker.wake)
        task = asyncio.create_task(worker.run())
        return cls(
            repository=repository,
            engine=engine,
            adapter=adapter,
            intake=intake,
            worker=worker,
            task=task,
            **extras,
        )

    @classmethod
    async def serve(
        cls,
        settings: Settings,
        adapter: AdapterT,
        *,
        repository: Repository,
        engine: EngineT,
        drain_seconds: float = 2.0,
        within: float = 10.0,
        **extras: Any,
    ) -> Self:
        """Run the real ``Service`` (everything built from ``settings``) and return once its worker
        runs; a service that fails to start raises its error here."""
        service = Service(
            settings=settings,
            repository=repository,
            engine=engine,
            adapters=[adapter],
            drain_seconds=drain_seconds,
        )
        task = asyncio.create_task(service.run())
        async with asyncio.timeout(within):
            while service.worker is None:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        return cls(
            repository=repository,
            engine=engine,
            adapter=adapter,
            intake=service.intake,
            worker=service.worker,
            task=task,
            service=service,
            **extras,
        )

    async def until(
        self, condition: Callable[[], bool], *, within: float = 20.0, poll: float = 0.01
    ) -> None:
        """Wait until ``condition()`` holds (TimeoutError after ``within`` seconds)."""
        async with asyncio.timeout(within):
            while not condition():
                await asyncio.sleep(poll)

    def pending(self) -> int:
        """Jobs not finished yet (queued, running or waiting for a retry)."""
        return self.repository.count_jobs()

    def jobs_done(self, count: int) -> bool:
        return len(self.repository.jobs(status=JobStatus.DONE)) >= count

    async def stop(self, *, drain: float = 1.0) -> None:
        """Stop the worker (running jobs get ``drain`` seconds), wait for it, then stop the
        adapter; a served rig stops its service, which does the same and closes the engine."""
        if self.service is not None:
            self.service.stopping.set()
            async with asyncio.timeout(10):
                await self.task
            return
        await self.worker.stop(drain_seconds=drain)
        await self.task
        await self.adapter.stop()

    def close(self) -> None:
        """Close the repository (after ``stop``)."""
        self.repository.close()
