"""``ConversationOrder`` (adapters/conversation_order.py): handlers of one conversation store in
ticket order whatever finishes first; handlers of other conversations never wait for them."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from adapters.conversation_order import ConversationOrder

HANDLERS = st.lists(
    st.tuples(
        st.sampled_from("abc"),  # the conversation
        st.integers(min_value=0, max_value=5),  # steps before it wants its turn (a download)
        st.sampled_from(["store", "skip", "fail", "cancel"]),
    ),
    min_size=1,
    max_size=14,
)


@given(handlers=HANDLERS)
def test_each_conversation_stores_in_ticket_order_and_nobody_waits_forever(
    handlers: list[tuple[str, int, str]],
) -> None:
    """Some handlers are refused before their turn, some fail in it, some are cancelled while
    waiting: the others of each conversation still store in arrival order, and every line is
    gone at the end."""

    async def scenario() -> tuple[list[tuple[str, int]], int]:
        order = ConversationOrder()
        stored: list[tuple[str, int]] = []
        waiting: dict[int, asyncio.Task[None]] = {}

        async def handler(number: int, key: str, steps: int, fate: str) -> None:
            with order.ticket(key) as ticket:
                for _ in range(steps):
                    await asyncio.sleep(0)
                if fate == "skip":
                    return
                await ticket.turn()
                if fate == "fail":
                    raise RuntimeError("the store failed")
                stored.append((key, number))

        for number, (key, steps, fate) in enumerate(handlers):
            waiting[number] = asyncio.create_task(handler(number, key, steps, fate))
        await asyncio.sleep(0)
        for number, (_, _, fate) in enumerate(handlers):
            if fate == "cancel":
                waiting[number].cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(*waiting.values(), return_exceptions=True)
            while order.in_flight():  # released tickets pass the turn on in callbacks
                await asyncio.sleep(0)
        return stored, order.in_flight()

    stored, in_flight = asyncio.run(scenario())
    assert in_flight == 0
    for key in "abc":
        mine = [number for stored_key, number in stored if stored_key == key]
        assert mine == sorted(mine)
    expected = {
        number for number, (_, _, fate) in enumerate(handlers) if fate == "store"
    }  # a cancelled one may have stored before it was cancelled
    assert expected <= {number for _, number in stored}


def test_a_held_conversation_holds_up_only_itself() -> None:
    async def scenario() -> None:
        order = ConversationOrder()
        download = asyncio.Event()
        events: list[str] = []

        async def slow() -> None:
            with order.ticket("general") as ticket:
                await ticket.turn()
                await download.wait()
                events.append("general 1")

        async def plain(key: str, name: str) -> None:
            with order.ticket(key) as ticket:
                await ticket.turn()
                events.append(name)

        tasks = [
            asyncio.create_task(slow()),
            asyncio.create_task(plain("general", "general 2")),
            asyncio.create_task(plain("random", "random 1")),
        ]
        async with asyncio.timeout(5):
            while "random 1" not in events:
                await asyncio.sleep(0)
            assert events == ["random 1"]  # general 2 waits behind the held download
            download.set()
            await asyncio.gather(*tasks)
            while order.in_flight():
                await asyncio.sleep(0)
        assert events == ["random 1", "general 1", "general 2"]

    asyncio.run(scenario())


def test_a_waiter_cancelled_in_line_does_not_let_the_next_one_jump_the_queue() -> None:
    async def scenario() -> None:
        order = ConversationOrder()
        first = order.ticket("c")
        second = order.ticket("c")
        third = order.ticket("c")
        waiting = asyncio.create_task(second.turn())
        await asyncio.sleep(0)
        waiting.cancel()
        second.release()
        second.release()  # twice changes nothing
        later = asyncio.create_task(third.turn())
        await asyncio.sleep(0)
        assert not later.done()  # the first still holds the line
        first.release()
        async with asyncio.timeout(5):
            await later
        third.release()
        async with asyncio.timeout(5):
            while order.in_flight():
                await asyncio.sleep(0)

    asyncio.run(scenario())
