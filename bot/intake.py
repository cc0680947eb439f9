"""Intake: the one door from adapters into the core.

``submit`` stores the user turn and enqueues its job in one transaction (see
``Repository.enqueue``); an event seen before (same dedupe key) is a no-op returning the same job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bot.models import EnqueueResult, Incoming
from storage.repository import Repository

log = logging.getLogger(__name__)


class Intake:
    def __init__(self, repository: Repository) -> None:
        self._repository = repository
        self._listeners: list[Callable[[], None]] = []

    def on_enqueued(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each new job (an in-process worker wakes up instead of polling)."""
        self._listeners.append(listener)

    async def submit(self, incoming: Incoming) -> EnqueueResult | None:
        """Store and enqueue ``incoming``. None when its channel is switched off."""
        result = await asyncio.to_thread(self._repository.enqueue, incoming)
        if result is None:
            log.info("ignored a message in disabled channel %s", incoming.channel)
        elif result.created:
            log.debug("job %s enqueued for %s", result.job_id, incoming.dedupe_key)
            for listener in self._listeners:
                listener()
        else:
            log.info("duplicate event %s ignored (job %s)", incoming.dedupe_key, result.job_id)
        return result

    async def queue_position(self, job_id: int) -> int:
        return await asyncio.to_thread(self._repository.queue_position, job_id)

    @property
    def repository(self) -> Repository:
        """The store behind this intake (chat sub-commands read and change channel settings)."""
        return self._repository
