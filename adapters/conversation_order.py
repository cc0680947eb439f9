"""Per-conversation arrival order for an adapter's ingress.

discord.py runs every gateway event handler as a task of its own, and tasks start in the order
the events arrived. A handler takes a ticket for its conversation (the channel, thread or DM the
message or interaction was written in) before its first ``await``, so the tickets of one
conversation are in gateway order; it waits for its turn (``Ticket.turn``) before storing and
releases the ticket when done, whatever happened (``with order.ticket(key) as ticket:``).

Only the handlers of the same conversation wait for each other: a message whose files take
seconds to download holds up the messages after it in its own conversation (they must be stored
after it) and nothing else. A ticket released before its turn (a handler that failed or was
cancelled) passes the turn on only once every earlier ticket of its conversation is released,
so the order holds whatever finishes first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from types import TracebackType


class Ticket:
    """A place in one conversation's line (``ConversationOrder.ticket``)."""

    def __init__(
        self,
        order: ConversationOrder,
        key: Hashable,
        before: asyncio.Future[None] | None,
        done: asyncio.Future[None],
    ) -> None:
        self._order = order
        self._key = key
        self._before = before
        self._done = done  # set once this ticket and every earlier one are released
        self._released = False

    async def turn(self) -> None:
        """Wait until every earlier ticket of the conversation is released."""
        if self._before is not None and not self._before.done():
            # shield: a handler cancelled while waiting must not cancel its predecessor's future
            await asyncio.shield(self._before)

    def release(self) -> None:
        """Done (stored, refused or failed); releasing twice changes nothing."""
        if self._released:
            return
        self._released = True
        before = self._before
        if before is None or before.done():
            self._finish()
        else:
            before.add_done_callback(lambda _: self._finish())

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
        self._order._forget(self._key, self._done)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class ConversationOrder:
    """The lines of every conversation with a handler in flight (empty when all are done)."""

    def __init__(self) -> None:
        self._last: dict[Hashable, asyncio.Future[None]] = {}

    def ticket(self, key: Hashable) -> Ticket:
        """The next place in ``key``'s line; call it before the handler's first ``await``."""
        before = self._last.get(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last[key] = done
        return Ticket(self, key, before, done)

    def in_flight(self) -> int:
        """How many conversations have a ticket not yet passed on."""
        return len(self._last)

    def _forget(self, key: Hashable, done: asyncio.Future[None]) -> None:
        if self._last.get(key) is done:  # the last ticket of its line: the line is gone
            del self._last[key]
