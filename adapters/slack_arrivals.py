"""Per-conversation arrival order for Slack's ingress (``adapters.conversation_order``).

Slack's requests are handled concurrently: every HTTP request is a task of aiohttp's, every
Socket Mode envelope a task of slack_sdk's. Without an order, a message whose files take seconds to
download would be stored (and answered) after a plain message written later in the same thread,
and the auto-answer and handoff decisions of that thread would run out of order.

So a payload takes its places as soon as the adapter has it, before anything is awaited (``take``,
called first by ``SlackArrivals.dispatch``), in the lines of the conversations it belongs to
(``lines_of``):

- a message or ``app_mention`` (``file_share`` and auto-answer channel messages included) in a
  thread: the thread (channel + ``thread_ts``); at the top of a channel: the thread it starts
  (channel + its own ``ts``), which is where it is answered, so two top-level questions are two
  conversations and do not wait for each other; in a DM (``channel_type`` ``im``) outside a
  thread (an assistant thread is a DM thread): the DM. The ``app_mention`` and ``message`` twins
  Slack sends for one mention share the line, so the second waits for the first and finds it
  stored;
- ``/solar``: the channel's top level (or the DM), where its question is posted.

An event waits for its turn before bolt handles it and passes the turn on once bolt is done with
it (stored, refused, or failed: Slack is answered as before, a 500 or no ack for an event that
could not be stored, and its retry takes a place behind whatever is still in the line, so it is
a no-op once the original is stored). A slash command is acked at once, never held up: its
handler keeps the places (``keep``) and waits for its turn after the ack, before it stores the
question. Payloads without a conversation (reactions, buttons, assistant thread events without a
message) take no place.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar

from adapters.conversation_order import ConversationOrder, Ticket

T = TypeVar("T")

MESSAGE_EVENTS = frozenset({"message", "app_mention"})


def lines_of(payload: Mapping[str, Any]) -> tuple[Hashable, ...]:
    """The conversations ``payload`` (an Events API callback or a slash command) is written in."""
    if "command" in payload:
        team = str(payload.get("team_id") or "")
        channel = str(payload.get("channel_id") or "")
        return ((team, channel, ""),) if channel else ()
    event = payload.get("event")
    if payload.get("type") != "event_callback" or not isinstance(event, Mapping):
        return ()
    if event.get("type") not in MESSAGE_EVENTS:
        return ()
    team = str(payload.get("team_id") or event.get("team") or "")
    channel = str(event.get("channel") or "")
    ts = str(event.get("ts") or "")
    thread = str(event.get("thread_ts") or "")
    if not channel:
        return ()
    if not thread and event.get("channel_type") != "im":
        thread = ts  # the thread a top-level channel message starts
    return ((team, channel, thread),)


class Arrival:
    """The places one payload took; released when bolt is done with it, unless a handler keeps
    them (``keep``: a slash command, which goes on after its ack)."""

    def __init__(self, lines: SlackArrivals, tickets: tuple[Ticket, ...], *, held: bool) -> None:
        self._lines = lines
        self._tickets = tickets
        self.held = held  # waits for its turn before bolt handles it
        self._kept = False

    async def turn(self) -> None:
        self._lines.waiting += 1
        try:
            for ticket in self._tickets:
                await ticket.turn()
        finally:
            self._lines.waiting -= 1

    def keep(self) -> Arrival:
        """The caller releases the places itself (``release``), after bolt is done."""
        self._kept = True
        return self

    def release(self) -> None:
        for ticket in self._tickets:
            ticket.release()

    def dispatched(self) -> None:
        if not self._kept:
            self.release()


# The arrival of the payload bolt is handling in this task (and the tasks it starts).
CURRENT: contextvars.ContextVar[Arrival | None] = contextvars.ContextVar(
    "slack_arrival", default=None
)


class SlackArrivals:
    """The lines of one adapter's conversations."""

    def __init__(self) -> None:
        self.order = ConversationOrder()
        # What the tests wait on: payloads that took their places, and those waiting their turn.
        self.received = 0
        self.waiting = 0

    def take(self, payload: Mapping[str, Any]) -> Arrival:
        """Places for ``payload`` in its lines (no ``await``: in the order payloads arrive)."""
        tickets = tuple(self.order.ticket(line) for line in lines_of(payload))
        self.received += 1
        return Arrival(self, tickets, held="command" not in payload)

    async def dispatch(self, payload: Mapping[str, Any], handle: Callable[[], Awaitable[T]]) -> T:
        """``handle()`` (bolt's dispatch of ``payload``) in ``payload``'s turn; call it at once
        when the payload is in hand, so that its places are taken before the first ``await``."""
        arrival = self.take(payload)
        token = CURRENT.set(arrival)
        try:
            if arrival.held:
                await arrival.turn()
            return await handle()
        finally:
            CURRENT.reset(token)
            arrival.dispatched()


def kept_arrival() -> Arrival | None:
    """The current payload's places, now the caller's to release (a slash command's handler)."""
    arrival = CURRENT.get()
    return arrival.keep() if arrival is not None else None
