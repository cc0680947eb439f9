"""``ArrivalOrder`` (adapters/discord_interactions.py): interaction handlers store in the order
the interactions arrived, whatever order their acknowledgements come back in."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from adapters.discord_interactions import ArrivalOrder


@given(
    delays=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=12),
    skipped=st.sets(st.integers(min_value=0, max_value=11)),
    failing=st.sets(st.integers(min_value=0, max_value=11)),
)
def test_turns_follow_the_tickets_whatever_finishes_first(
    delays: list[int], skipped: set[int], failing: set[int]
) -> None:
    """Handlers become ready in any order; some never take their turn (refused early), some
    fail while waiting or in their turn: the others still store in ticket order, and nobody
    waits forever."""

    async def scenario() -> list[int]:
        order = ArrivalOrder()
        stored: list[int] = []

        async def handler(number: int) -> None:
            ticket = order.ticket()
            try:
                for _ in range(delays[number]):  # the acknowledgement takes a while
                    await asyncio.sleep(0)
                if number in skipped:
                    return
                await order.turn(ticket)
                if number in failing:
                    raise RuntimeError("the store failed")
                stored.append(number)
            finally:
                order.release(ticket)

        tasks = [asyncio.create_task(handler(n)) for n in range(len(delays))]
        async with asyncio.timeout(5):
            await asyncio.gather(*tasks, return_exceptions=True)
        return stored

    stored = asyncio.run(scenario())
    assert stored == [n for n in range(len(delays)) if n not in skipped | failing]


def test_releasing_twice_or_out_of_order_changes_nothing() -> None:
    async def scenario() -> None:
        order = ArrivalOrder()
        first, second = order.ticket(), order.ticket()
        order.release(second)
        order.release(second)
        waiting = asyncio.create_task(order.turn(order.ticket()))
        await asyncio.sleep(0)
        assert not waiting.done()  # the first ticket is still out
        order.release(first)
        async with asyncio.timeout(1):
            await waiting

    asyncio.run(scenario())
