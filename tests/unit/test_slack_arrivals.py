"""Which line a Slack payload stands in (``adapters.slack_arrivals.lines_of``) and how a dispatch
holds its place: properties over generated events and commands, and the hand-over of a slash
command's place to its handler. End to end: tests/platforms/test_slack_ingress_order.py."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from adapters.slack_arrivals import SlackArrivals, kept_arrival, lines_of

ids = st.text(alphabet="CDGU0123456789", min_size=1, max_size=8)
stamps = st.from_regex(r"\A1[0-9]{9}\.[0-9]{6}\Z")


def callback(event: dict[str, Any], team: str = "T0TEAM") -> dict[str, Any]:
    return {"type": "event_callback", "team_id": team, "event": event}


@given(
    kind=st.sampled_from(["message", "app_mention"]),
    channel=ids,
    ts=stamps,
    thread_ts=st.none() | stamps,
    channel_type=st.sampled_from(["channel", "group", "im", None]),
    subtype=st.sampled_from([None, "file_share", "thread_broadcast"]),
)
def test_a_message_stands_in_its_thread_or_dm_and_its_twin_in_the_same_line(
    kind: str,
    channel: str,
    ts: str,
    thread_ts: str | None,
    channel_type: str | None,
    subtype: str | None,
) -> None:
    event: dict[str, Any] = {"type": kind, "channel": channel, "ts": ts, "user": "U0ALICE"}
    for key, value in (
        ("thread_ts", thread_ts),
        ("channel_type", channel_type),
        ("subtype", subtype),
    ):
        if value is not None:
            event[key] = value
    [line] = lines_of(callback(event))
    if thread_ts:
        assert line == ("T0TEAM", channel, thread_ts)  # a thread, in a channel or a DM
    elif channel_type == "im":
        assert line == ("T0TEAM", channel, "")  # a DM outside a thread
    else:
        assert line == ("T0TEAM", channel, ts)  # the thread a top-level message starts
    # The other of the twins Slack sends for one mention, and a reply in the thread a top-level
    # channel message starts, stand in the same line.
    twin = {**event, "type": "app_mention" if kind == "message" else "message"}
    assert lines_of(callback(twin)) == (line,)
    if not thread_ts and channel_type != "im":
        reply = {**event, "ts": ts + "1", "thread_ts": ts}
        assert lines_of(callback(reply)) == (line,)


@given(event_type=st.sampled_from(["reaction_added", "assistant_thread_started", "team_join"]))
def test_payloads_without_a_conversation_take_no_place(event_type: str) -> None:
    assert lines_of(callback({"type": event_type, "channel": "C0GENERAL", "ts": "1.0"})) == ()
    assert lines_of({"type": "block_actions", "actions": []}) == ()
    assert lines_of({"type": "url_verification", "challenge": "x"}) == ()


@given(channel=ids)
def test_a_slash_command_stands_at_the_top_of_its_channel_with_its_dm_messages(
    channel: str,
) -> None:
    command = {"command": "/solar", "team_id": "T0TEAM", "channel_id": channel, "text": "hi"}
    dm = callback({"type": "message", "channel_type": "im", "channel": channel, "ts": "1.0"})
    assert lines_of(command) == (("T0TEAM", channel, ""),) == lines_of(dm)


async def test_a_kept_place_outlives_its_dispatch_and_the_line_waits_for_it() -> None:
    """A slash command is dispatched without waiting and keeps its place past the dispatch: the
    next payload of its line waits until the command's handler releases it."""
    arrivals = SlackArrivals()
    command = {"command": "/solar", "team_id": "T", "channel_id": "D1", "text": "hi"}
    message = callback({"type": "message", "channel_type": "im", "channel": "D1", "ts": "2.0"}, "T")
    seen: list[str] = []

    async def handle_command() -> None:
        arrival = kept_arrival()
        assert arrival is not None and not arrival.held
        kept.append(arrival)
        seen.append("command acked")

    kept: list[Any] = []
    await arrivals.dispatch(command, handle_command)

    async def handle_message() -> None:
        seen.append("message")

    later = asyncio.create_task(arrivals.dispatch(message, handle_message))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert seen == ["command acked"] and arrivals.order.in_flight() == 1 and arrivals.waiting == 1
    kept[0].release()
    await later
    assert seen == ["command acked", "message"]
    assert arrivals.order.in_flight() == 0 and arrivals.received == 2 and arrivals.waiting == 0
