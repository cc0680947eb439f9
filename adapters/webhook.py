"""The outgoing-webhook platform: replies are POSTed to a URL you run (``SOLARBOT_WEBHOOK_URL``).

Use it to put solarbot's answers into any system that can receive HTTP: a ticketing tool, a
custom chat, a test harness. The platform name is ``webhook``.

Ingress (``SOLARBOT_WEBHOOK_PORT`` set, not in ``solarbot worker``): ``POST /incoming`` with
``{"channel", "author_id", "text", "message_id"}`` and optionally ``"workspace"``, ``"thread"``,
``"author_name"`` and ``"reply_target"`` (an object of strings passed back with each reply),
authorised by the same bearer secret, which is then required (``SOLARBOT_WEBHOOK_SECRET``: no
listener starts without it; a delivery-only adapter, ``solarbot worker`` or no port, needs none).
Every field is a JSON string within its column's size (``adapters.webhook_request``). Answers 202 ``{"status": "queued"|"duplicate", "job_id"}``
(a repeated ``message_id`` in a channel is not answered twice), 200 ``{"status": "disabled"}``,
429 ``{"status": "refused", "reason"}`` (a limit; the user's notice is POSTed as a ``notice``),
400 for a malformed message, 401 without the secret.

The receiver implements four calls under the base URL (JSON bodies, ``Authorization: Bearer
<SOLARBOT_WEBHOOK_SECRET>`` when a secret is set):

- ``POST /messages`` with ``{"kind": "reply"|"notice", "job_id", "part", "conversation":
  {"platform", "workspace", "channel", "thread"}, "reply_target": {...}, "text"}`` and an
  ``Idempotency-Key`` header; answers ``{"id": "<message id>"}``. **A repeated key must return the
  message already created for it (updated to the new text) instead of creating another**: this is
  what makes replies exactly-once when a worker dies between your answer and recording the id;
- ``PATCH /messages/{id}`` with ``{"text"}``: replace a message's text (404 if it is gone);
- ``DELETE /messages/{id}``: a message the final reply no longer needs.

Idempotency keys are ``job-<job id>-<job key>-part-<n>`` for the n-th message of a reply and
``job-<job id>-<job key>-notice-<n>`` for a job's apology, so every attempt of a job (in any worker
process) uses the same keys, and no other job ever does (the job key is unique forever, even where
a job id came back after ``forget``; see ``storage.repository.jobs.job_key``). A 429 (honouring ``Retry-After``), any 5xx, a timeout or a refused connection
becomes a ``DeliveryError``: the worker backs off and retries. Error messages never contain the
URL (it may carry a token) or the secret.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from adapters.streaming import MessageGone, StreamedReply
from adapters.webhook_request import BadRequest, parse_incoming
from bot.delivery import IntakePort, ReplyTarget
from bot.errors import ConfigError, DeliveryError, SolarbotError
from bot.http_listener import Listener, start_listener
from bot.splitting import split_message

log = logging.getLogger(__name__)

PLATFORM = "webhook"
MESSAGE_LIMIT = 4000
INCOMING_PATH = "/incoming"
MAX_INCOMING_BYTES = 1024 * 1024
INGRESS_NEEDS_SECRET = (
    "SOLARBOT_WEBHOOK_SECRET: required when SOLARBOT_WEBHOOK_PORT is set "
    "(without it anyone who can reach the port could post messages as any user)"
)


class WebhookError(SolarbotError):
    """A non-2xx answer from the receiver."""

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def delivery_error(exc: BaseException) -> DeliveryError:
    if isinstance(exc, WebhookError):
        return DeliveryError(f"webhook HTTP {exc.status}", retry_after=exc.retry_after)
    if isinstance(exc, TimeoutError):
        return DeliveryError("webhook request timed out")
    return DeliveryError(f"webhook unreachable ({type(exc).__name__})")


@dataclass(frozen=True, kw_only=True)
class WebhookOptions:
    """Everything the webhook adapter needs (``bot.service`` builds it from the settings). The URL
    (it may carry a token) and the secret never appear in a repr."""

    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    edit_interval: float = 1.0
    limit: int = MESSAGE_LIMIT
    port: int | None = None  # ingress: listen on this port (0: any free one); None: no ingress
    host: str = "127.0.0.1"
    ingress: bool = True  # False: deliver only, whatever ``port`` says (``solarbot worker``)


class WebhookAdapter:
    def __init__(self, options: WebhookOptions) -> None:
        if not options.url.startswith(("http://", "https://")):
            raise ConfigError("SOLARBOT_WEBHOOK_URL: must be an http(s) URL")
        if options.ingress and options.port is not None and not options.secret:
            raise ConfigError(INGRESS_NEEDS_SECRET)
        self.options = options
        self._url = options.url.rstrip("/")
        self._secret = options.secret
        self._timeout = options.timeout
        self.edit_interval = options.edit_interval
        self.limit = options.limit
        self._session: aiohttp.ClientSession | None = None
        self.intake: IntakePort | None = None
        self._listen = (
            (options.host, options.port) if options.ingress and options.port is not None else None
        )
        self._listener: Listener | None = None
        self.port: int | None = None  # where ingress listens, once started

    def __repr__(self) -> str:  # never show the URL or the secret
        return "WebhookAdapter()"

    @property
    def platform(self) -> str:
        return PLATFORM

    async def start(self, intake: IntakePort) -> None:
        self.intake = intake
        self._client()
        if self._listen is None:
            return
        app = web.Application(client_max_size=MAX_INCOMING_BYTES)
        app.router.add_post(INCOMING_PATH, self._incoming)
        host, port = self._listen
        self._listener = await start_listener(
            app, host=host, port=port, setting="SOLARBOT_WEBHOOK_PORT"
        )
        self.port = self._listener.port
        log.info("webhook: listening on %s:%s%s", host, self.port, INCOMING_PATH)

    async def _incoming(self, request: web.Request) -> web.Response:
        assert self._secret is not None  # no listener without one (see __init__)
        if not hmac.compare_digest(
            request.headers.get("Authorization", "").encode("utf-8", "replace"),
            f"Bearer {self._secret}".encode(),
        ):
            return web.json_response({"error": "unauthorised"}, status=401)
        try:
            incoming = parse_incoming(await request.read())
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)
        assert self.intake is not None
        result = await self.intake.submit(incoming)
        if result is None:
            return web.json_response({"status": "disabled"})
        if result.refused is not None:
            return web.json_response({"status": "refused", "reason": result.refused}, status=429)
        status = "queued" if result.created else "duplicate"
        return web.json_response({"status": status, "job_id": result.job_id}, status=202)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self._secret}"} if self._secret else {}
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """One call to the receiver; raises ``WebhookError`` (404 included) or aiohttp errors."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        async with self._client().request(
            method, self._url + path, json=body, headers=headers
        ) as response:
            if response.status >= 300:
                retry_after: float | None = None
                if response.status == 429:
                    with contextlib.suppress(TypeError, ValueError):
                        retry_after = float(response.headers.get("Retry-After", "1"))
                raise WebhookError(response.status, retry_after)
            if response.content_type == "application/json":
                data = await response.json()
                return data if isinstance(data, dict) else {}
            return {}

    def message_body(self, target: ReplyTarget, text: str, *, kind: str, part: int) -> Any:
        conversation = target.conversation
        return {
            "kind": kind,
            "job_id": target.job_id,
            "part": part,
            "conversation": {
                "platform": conversation.platform,
                "workspace": conversation.workspace,
                "channel": conversation.channel,
                "thread": conversation.thread,
            },
            "reply_target": dict(target.reply_target),
            "text": text,
        }

    async def open_reply(self, target: ReplyTarget) -> WebhookReply:
        return WebhookReply(self, target)

    async def post_notice(self, target: ReplyTarget, text: str) -> None:
        # A job's apology has a fixed key; a refusal at intake (no job) is a one-off.
        key = f"{job_prefix(target)}-notice" if target.job_key else f"notice-{secrets.token_hex(8)}"
        chunks = split_message(text, limit=self.limit) or [text]
        try:
            for part, chunk in enumerate(chunks):
                await self.request(
                    "POST",
                    "/messages",
                    body=self.message_body(target, chunk, kind="notice", part=part),
                    idempotency_key=f"{key}-{part}",
                )
        except (WebhookError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise delivery_error(exc) from exc


def job_prefix(target: ReplyTarget) -> str:
    """``job-<id>-<job key>``, or with a one-off random key for a target outside any job."""
    return f"job-{target.job_id}-{target.job_key or secrets.token_hex(8)}"


class WebhookReply(StreamedReply):
    def __init__(self, adapter: WebhookAdapter, target: ReplyTarget) -> None:
        super().__init__(target, limit=adapter.limit, min_interval=adapter.edit_interval)
        self._adapter = adapter
        self._replacing = False  # the next post replaces a message someone deleted

    async def post(self, text: str) -> str:
        part = len(self.message_ids)
        key = f"{job_prefix(self.target)}-part-{part}"
        if self._replacing:  # a fresh message in place of a deleted one: a new key
            key += f"-{secrets.token_hex(4)}"
            self._replacing = False
        data = await self._adapter.request(
            "POST",
            "/messages",
            body=self._adapter.message_body(self.target, text, kind="reply", part=part),
            idempotency_key=key,
        )
        message_id = data.get("id")
        if not isinstance(message_id, str | int) or str(message_id) == "":
            raise WebhookError(502)
        return str(message_id)

    async def edit(self, message_id: str, text: str) -> None:
        try:
            await self._adapter.request("PATCH", f"/messages/{message_id}", body={"text": text})
        except WebhookError as exc:
            if exc.status in (404, 410):
                self._replacing = True
                raise MessageGone(message_id) from exc
            raise

    async def discard(self, message_id: str) -> None:
        try:
            await self._adapter.request("DELETE", f"/messages/{message_id}")
        except WebhookError as exc:
            if exc.status not in (404, 410):
                raise

    def delivery_error(self, exc: Exception) -> DeliveryError:
        return delivery_error(exc)
