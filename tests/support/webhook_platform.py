"""A loopback HTTP "chat platform" for ``adapters.webhook``: records every post, edit and delete, and
injects faults. Shared by the crash and soak tests and ``bench/soak.py``.

It implements the receiver contract of ``adapters/webhook.py`` (idempotency keys included) and can
be told to fail: ``outage(kind, seconds)`` makes every request fail for a while with a 503, a 429
with ``Retry-After`` or a hang longer than the client's timeout; ``apply_then_fail`` (a probability)
makes a POST create its message and *then* answer 500, the nastiest case for exactly-once delivery.

``check(expected)`` verifies the soak invariants from its records: every accepted message has
exactly one complete reply, replies are in order within each channel, nothing was posted twice.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web

FAULT_KINDS = ("5xx", "429", "timeout")


@dataclass
class Posted:
    id: str
    kind: str
    job_id: int
    part: int
    channel: str
    thread: str
    text: str
    created: float
    seq: int
    history: list[str] = field(default_factory=list)
    deleted: bool = False


@dataclass(frozen=True)
class Verdict:
    messages: int
    lost: int
    doubled: int
    out_of_order: int
    problems: tuple[str, ...]


class WebhookPlatform:
    def __init__(
        self,
        *,
        secret: str | None = None,
        hang_seconds: float = 2.0,
        retry_after: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.secret = secret
        self.hang_seconds = hang_seconds
        self.retry_after = retry_after
        self.rng = random.Random(seed)
        self.messages: dict[str, Posted] = {}
        self.keys: dict[str, str] = {}
        self.replayed_keys = 0  # a POST whose key was seen: the dedupe closed a crash window
        self.requests = 0
        self.failed_requests: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self.failed_requests["applied-then-500"] = 0
        self.unauthorised = 0
        self.apply_then_fail = 0.0  # probability that a POST is applied, then answered 500
        self.apply_then_fail_next = 0  # ... and this many next POSTs for certain
        self.request_times: list[float] = []
        self._outage: tuple[str, float] | None = None
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/messages", self._post)
        app.router.add_patch("/messages/{id}", self._patch)
        app.router.add_delete("/messages/{id}", self._delete)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ faults

    def outage(self, kind: str, seconds: float) -> None:
        assert kind in FAULT_KINDS
        self._outage = (kind, time.monotonic() + seconds)

    def end_outage(self) -> None:
        self._outage = None

    async def _fault(self) -> web.Response | None:
        if self._outage is None:
            return None
        kind, until = self._outage
        if time.monotonic() >= until:
            self._outage = None
            return None
        self.failed_requests[kind] += 1
        if kind == "5xx":
            return web.json_response({"error": "unavailable"}, status=503)
        if kind == "429":
            return web.json_response(
                {"error": "rate limited"},
                status=429,
                headers={"Retry-After": f"{self.retry_after:g}"},
            )
        await asyncio.sleep(self.hang_seconds)  # longer than the client's timeout
        return web.json_response({"error": "too slow"}, status=504)

    def _authorised(self, request: web.Request) -> bool:
        if self.secret is None:
            return True
        if request.headers.get("Authorization") == f"Bearer {self.secret}":
            return True
        self.unauthorised += 1
        return False

    # ------------------------------------------------------------------ handlers

    async def _post(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.request_times.append(time.monotonic())
        if not self._authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        fault = await self._fault()
        if fault is not None:
            return fault
        body = await request.json()
        key = request.headers.get("Idempotency-Key", "")
        text = str(body["text"])
        if key and key in self.keys:
            self.replayed_keys += 1
            message = self.messages[self.keys[key]]
            message.text = text
            message.history.append(text)
            return web.json_response({"id": message.id})
        conversation = body["conversation"]
        message = Posted(
            id=f"w{next(self._ids)}",
            kind=str(body["kind"]),
            job_id=int(body["job_id"]),
            part=int(body["part"]),
            channel=str(conversation["channel"]),
            thread=str(conversation["thread"]),
            text=text,
            created=time.monotonic(),
            seq=next(self._seq),
            history=[text],
        )
        self.messages[message.id] = message
        if key:
            self.keys[key] = message.id
        if self.apply_then_fail_next > 0 or (
            self.apply_then_fail and self.rng.random() < self.apply_then_fail
        ):
            self.apply_then_fail_next = max(0, self.apply_then_fail_next - 1)
            self.failed_requests["applied-then-500"] += 1
            return web.json_response({"error": "oops"}, status=500)
        return web.json_response({"id": message.id})

    async def _patch(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self._authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        fault = await self._fault()
        if fault is not None:
            return fault
        message = self.messages.get(request.match_info["id"])
        if message is None or message.deleted:
            return web.json_response({"error": "not found"}, status=404)
        text = str((await request.json())["text"])
        message.text = text
        message.history.append(text)
        return web.json_response({"id": message.id})

    async def _delete(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self._authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        fault = await self._fault()
        if fault is not None:
            return fault
        message = self.messages.get(request.match_info["id"])
        if message is None or message.deleted:
            return web.json_response({"error": "not found"}, status=404)
        message.deleted = True
        return web.json_response({})

    # ------------------------------------------------------------------ reading the records

    def replies(self) -> dict[int, list[Posted]]:
        """Live reply messages by job id, in part order."""
        by_job: dict[int, list[Posted]] = {}
        for message in self.messages.values():
            if message.kind == "reply" and not message.deleted:
                by_job.setdefault(message.job_id, []).append(message)
        for parts in by_job.values():
            parts.sort(key=lambda m: m.part)
        return by_job

    def notices(self) -> list[Posted]:
        return [m for m in self.messages.values() if m.kind == "notice"]

    def check(
        self, expected: Mapping[int, tuple[str, str]], order: Mapping[str, Sequence[int]]
    ) -> Verdict:
        """``expected``: job id -> (channel, complete reply text); ``order``: channel -> job ids in
        the order their messages were sent."""
        problems: list[str] = []
        replies = self.replies()
        created_per_job: dict[int, int] = {}
        for message in self.messages.values():
            if message.kind == "reply":
                created_per_job[message.job_id] = created_per_job.get(message.job_id, 0) + 1
        lost = doubled = out_of_order = 0
        for job_id, (channel, text) in expected.items():
            parts = replies.get(job_id, [])
            got = "".join(m.text for m in parts)
            if not parts or got != text:
                lost += 1
                problems.append(f"job {job_id}: expected {text!r}, platform shows {got!r}")
            if created_per_job.get(job_id, 0) > max(len(parts), 1):
                doubled += 1
                problems.append(f"job {job_id}: {created_per_job[job_id]} messages posted")
            if any(m.channel != channel for m in parts):
                problems.append(f"job {job_id}: reply posted in the wrong channel")
        unexpected = set(created_per_job) - set(expected)
        if unexpected:
            doubled += len(unexpected)
            problems.append(f"replies for jobs nobody expected: {sorted(unexpected)[:10]}")
        for channel, job_ids in order.items():
            firsts = [replies[j][0].seq for j in job_ids if replies.get(j)]
            if firsts != sorted(firsts):
                out_of_order += 1
                problems.append(f"channel {channel}: replies out of order")
        return Verdict(
            messages=len(expected),
            lost=lost,
            doubled=doubled,
            out_of_order=out_of_order,
            problems=tuple(problems),
        )
