"""A local fake of Slack for the real slack-bolt / slack_sdk clients, on 127.0.0.1.

- Web API at ``api_url`` (``POST /api/<method>``): auth.test, chat.postMessage, chat.update,
  chat.delete, assistant.threads.setStatus/setTitle/setSuggestedPrompts (``statuses``,
  ``status_now``, ``titles``, ``suggested``), chat.startStream/appendStream/stopStream (``FakeMessage.stream``: None for an
  ordinary message, else "streaming" or "stopped"; ``appended`` lists what each call added), chat.getPermalink, conversations.history/.replies (people's messages are added with
  ``add_user_message``), apps.connections.open. Every call is recorded in ``calls``; posted messages live in
  ``messages`` (ts -> message with its text history). ``rate_limit(method, count, retry_after)``
  answers the next calls with HTTP 429 + Retry-After; ``fail(method, error)`` with ``ok: false``.
- A response_url endpoint (``response_url(name)``): bodies posted to it are in ``responses``.
- Socket Mode: apps.connections.open answers with ``ws://.../socket``; ``send_envelope`` pushes an
  envelope to the connected client and ``acks`` collects what it answers.
- ``sign``/``signed_post`` make correctly signed HTTP requests to an app under test;
  ``action_body`` is a button click (``block_actions``). Blocks sent to any method are checked
  against the limits of the block types solarbot sends (``invalid_blocks``).
- Files (``add_file``): served at their ``url_private`` (``/files-pri/...``) to requests with the bot
  token as ``Authorization: Bearer``, like files.slack.com (others get Slack's sign-in page, an
  HTML 200); ``add_file`` returns the file object a message event carries. Every request for a
  file is in ``file_requests``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

BOT_TOKEN = "xoxb-test-bot-token-1234"
APP_TOKEN = "xapp-test-app-token-5678"
SIGNING_SECRET = "test-signing-secret-abcdef"
TEAM = "T0TEAM"
BOT_USER = "U0BOT"
BOT_ID = "B0BOT"
STREAM_TEXT_LIMIT = 12_000  # markdown_text per chat.startStream/appendStream/stopStream call


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    authorization: str


@dataclass
class FakeFile:
    """A file as the fake serves it: ``status`` other than 200 answers that status; ``redirect``
    answers 302 to that URL; ``hold``: the request is recorded at once and answered once the event
    is set (a slow download the test controls)."""

    name: str
    data: bytes
    mimetype: str
    status: int = 200
    redirect: str = ""
    hold: asyncio.Event | None = field(default=None, compare=False)


@dataclass
class FileRequest:
    path: str
    authorization: str


@dataclass
class FakeMessage:
    channel: str
    ts: str
    thread_ts: str | None
    text: str
    history: list[str] = field(default_factory=list)
    deleted: bool = False
    user: str = ""  # who wrote it ("" = the bot)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    stream: str | None = None  # None: not a stream; "streaming"; "stopped"
    appended: list[str] = field(default_factory=list)  # markdown each stream call added
    recipient: tuple[str, str] | None = None  # (team, user) a channel stream was started for


class FakeSlack:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: dict[str, FakeMessage] = {}
        self.responses: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self.ephemerals: list[dict[str, Any]] = []  # chat.postEphemeral
        self.bot_users: set[str] = set()  # users.info says is_bot for these
        # Assistant threads, by (channel, thread_ts): every status set, in order; the status
        # shown now (cleared, as Slack does, when the app posts in the thread); titles; prompts.
        self.statuses: list[tuple[str, str, str]] = []
        self.status_now: dict[tuple[str, str], str] = {}
        self.titles: dict[tuple[str, str], str] = {}
        self.suggested: dict[tuple[str, str], tuple[str, list[dict[str, str]]]] = {}
        self.files: dict[str, FakeFile] = {}  # by file id
        self.file_requests: list[FileRequest] = []
        self._ts = itertools.count(1)
        self._rate_limits: dict[str, list[int]] = {}
        self._failures: dict[str, list[str]] = {}
        self._delays: dict[str, float] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self.base = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/response/{name}", self._response)
        app.router.add_post("/commands/{team}/{hook}/{name}", self._response)  # Slack's shape
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/files-pri/{team_file}/{name}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for socket in self._sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/"

    def response_url(self, name: str = "r1") -> str:
        """Shaped like Slack's (``https://hooks.slack.com/commands/<team>/<id>/<secret>``): the
        secret part is ``name``, which ``responses`` carry as ``_name``."""
        return f"{self.base}/commands/{TEAM}/1234567890/{name}"

    # ------------------------------------------------------------------ scripting

    def rate_limit(self, method: str, count: int = 1, *, retry_after: int = 0) -> None:
        self._rate_limits.setdefault(method, []).extend([retry_after] * count)

    def fail(self, method: str, error: str, count: int = 1) -> None:
        self._failures.setdefault(method, []).extend([error] * count)

    def delay(self, method: str, seconds: float) -> None:
        """Answer every later call of ``method`` only after ``seconds`` (a slow Slack)."""
        self._delays[method] = seconds

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def thread(self, channel: str, thread_ts: str | None) -> list[FakeMessage]:
        """Messages (not deleted) posted in a channel's thread (None: top level), in order."""
        return [
            m
            for m in self.messages.values()
            if m.channel == channel and m.thread_ts == thread_ts and not m.deleted
        ]

    async def wait_for(self, predicate: Callable[[], bool], *, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self._changed.clear()
                with _suppress_timeout():
                    await asyncio.wait_for(self._changed.wait(), 0.05)

    def _touch(self) -> None:
        self._changed.set()

    # ------------------------------------------------------------------ Web API

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        else:
            params.update(dict(await request.post()))
        authorization = request.headers.get("Authorization", "")
        self.calls.append(Call(method, params, authorization))
        self._touch()
        if self._delays.get(method):
            await asyncio.sleep(self._delays[method])
        if self._rate_limits.get(method):
            retry_after = self._rate_limits[method].pop(0)
            return _json(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(retry_after)},
            )
        if self._failures.get(method):
            return _json({"ok": False, "error": self._failures[method].pop(0)})
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if authorization != f"Bearer {expected}":
            return _json({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return _json({"ok": False, "error": "unknown_method"})
        refused = invalid_blocks(params.get("blocks"))
        if refused is not None:
            return _json({"ok": False, "error": "invalid_blocks", "errors": [refused]})
        answer = handler(params)
        if answer.get("ok") and method in ("chat.postMessage", "chat.startStream"):
            thread = params.get("thread_ts")
            if thread:  # the app answered in the thread: Slack clears its status
                self.status_now.pop((str(params.get("channel")), str(thread)), None)
        return _json(answer)

    # ------------------------------------------------------------------ assistant threads

    def _assistant_thread(self, params: dict[str, Any]) -> tuple[str, str] | None:
        channel, thread = str(params.get("channel_id") or ""), str(params.get("thread_ts") or "")
        return (channel, thread) if channel and thread else None

    def _assistant_threads_setStatus(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._assistant_thread(params)
        if key is None or "status" not in params:
            return {"ok": False, "error": "invalid_arguments"}
        status = str(params["status"])
        self.statuses.append((*key, status))
        if status:
            self.status_now[key] = status
        else:
            self.status_now.pop(key, None)
        return {"ok": True}

    def _assistant_threads_setTitle(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._assistant_thread(params)
        if key is None or not str(params.get("title") or "").strip():
            return {"ok": False, "error": "invalid_arguments"}
        self.titles[key] = str(params["title"])
        return {"ok": True}

    def _assistant_threads_setSuggestedPrompts(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._assistant_thread(params)
        prompts = params.get("prompts")
        if isinstance(prompts, str):
            prompts = json.loads(prompts)
        if key is None or not isinstance(prompts, list) or not 1 <= len(prompts) <= 4:
            return {"ok": False, "error": "invalid_arguments"}
        if any(not p.get("title") or not p.get("message") for p in prompts):
            return {"ok": False, "error": "invalid_arguments"}
        self.suggested[key] = (str(params.get("title") or ""), list(prompts))
        return {"ok": True}

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://test.slack.com/",
            "team": "Test",
            "user": "solarbot",
            "team_id": TEAM,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
        }

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = str(params.get("user", ""))
        name = user.removeprefix("U0").capitalize()  # U0ALICE -> Alice
        return {
            "ok": True,
            "user": {
                "id": user,
                "name": name.lower(),
                "is_bot": user in self.bot_users,
                "profile": {"display_name": name},
            },
        }

    def _chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        ts = f"1700000000.{next(self._ts):06d}"
        markdown = params.get("markdown_text")
        if markdown is not None and (params.get("text") or params.get("blocks")):
            return {"ok": False, "error": "markdown_text_conflict"}
        text = str(markdown if markdown is not None else params.get("text", ""))
        message = FakeMessage(
            channel=str(params["channel"]),
            ts=ts,
            thread_ts=params.get("thread_ts") or None,
            text=text,
            history=[text],
            blocks=_blocks(params.get("blocks")),
        )
        self.messages[ts] = message
        return {"ok": True, "channel": message.channel, "ts": ts, "message": {"text": text}}

    def _chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        """Seen by ``user`` only: recorded in ``ephemerals``, never among the channel's messages."""
        self.ephemerals.append(
            {
                "channel": str(params["channel"]),
                "user": str(params["user"]),
                "thread_ts": params.get("thread_ts") or None,
                "text": str(params.get("text", "")),
            }
        )
        return {"ok": True, "message_ts": f"1700000000.{next(self._ts):06d}"}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(params.get("ts")))
        if message is None or message.deleted or message.channel != params.get("channel"):
            return {"ok": False, "error": "message_not_found"}
        if message.stream == "streaming":
            return {"ok": False, "error": "message_is_streaming"}  # stop the stream first
        markdown = params.get("markdown_text")
        if markdown is not None and (params.get("text") or params.get("blocks")):
            return {"ok": False, "error": "markdown_text_conflict"}
        message.text = str(markdown if markdown is not None else params.get("text", ""))
        message.blocks = _blocks(params.get("blocks"))
        message.history.append(message.text)
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    # ------------------------------------------------------------------ streaming (2025 AI apps)

    def _stream_markdown(self, params: dict[str, Any]) -> str | dict[str, Any]:
        """The markdown a stream call adds (``markdown_text`` or markdown_text ``chunks``), or
        the error answer Slack gives."""
        text = params.get("markdown_text")
        chunks = params.get("chunks")
        if text is not None and chunks:
            return {"ok": False, "error": "invalid_arguments"}
        if chunks:
            if isinstance(chunks, str):
                chunks = json.loads(chunks)
            if any(chunk.get("type") != "markdown_text" for chunk in chunks):
                return {"ok": False, "error": "invalid_chunks"}
            text = "".join(str(chunk.get("text", "")) for chunk in chunks)
        text = str(text or "")
        if len(text) > STREAM_TEXT_LIMIT:
            return {"ok": False, "error": "msg_too_long"}
        return text

    def _chat_startStream(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        thread_ts = str(params.get("thread_ts") or "")
        if not channel or not thread_ts:
            return {"ok": False, "error": "invalid_arguments"}  # streams are thread replies
        team, user = params.get("recipient_team_id"), params.get("recipient_user_id")
        if not channel.startswith("D") and not (team and user):
            return {"ok": False, "error": "missing_recipient_user_id"}  # channels need them
        text = self._stream_markdown(params)
        if isinstance(text, dict):
            return text
        ts = f"1700000000.{next(self._ts):06d}"
        self.messages[ts] = FakeMessage(
            channel=channel,
            ts=ts,
            thread_ts=thread_ts,
            text=text,
            history=[text],
            stream="streaming",
            appended=[text],
            recipient=(str(team), str(user)) if team and user else None,
        )
        return {"ok": True, "channel": channel, "ts": ts}

    def _streaming(self, params: dict[str, Any]) -> FakeMessage | dict[str, Any]:
        ts, channel = str(params.get("ts") or ""), str(params.get("channel") or "")
        if not ts or not channel:
            return {"ok": False, "error": "invalid_arguments"}
        message = self.messages.get(ts)
        if message is None or message.deleted or message.channel != channel:
            return {"ok": False, "error": "message_not_found"}
        if message.stream != "streaming":
            return {"ok": False, "error": "message_not_in_streaming_state"}
        return message

    def _chat_appendStream(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(params)
        if isinstance(message, dict):
            return message
        text = self._stream_markdown(params)
        if isinstance(text, dict):
            return text
        if not text:
            return {"ok": False, "error": "invalid_arguments"}  # nothing to append
        message.text += text
        message.appended.append(text)
        message.history.append(message.text)
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _chat_stopStream(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(params)
        if isinstance(message, dict):
            return message
        text = self._stream_markdown(params)
        if isinstance(text, dict):
            return text
        if text:
            message.text += text
            message.appended.append(text)
            message.history.append(message.text)
        message.blocks = _blocks(params.get("blocks"))
        message.stream = "stopped"
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def add_user_message(
        self, channel: str, ts: str, text: str, *, user: str, thread_ts: str | None = None
    ) -> None:
        """A person's message, as conversations.history / .replies will find it (the events
        that announce it are sent by the test)."""
        self.messages[ts] = FakeMessage(
            channel=channel, ts=ts, thread_ts=thread_ts, text=text, history=[text], user=user
        )

    def _found(self, params: dict[str, Any], *, in_thread: bool) -> dict[str, Any]:
        channel, ts = str(params.get("channel")), str(params.get("latest") or params.get("ts"))
        found = [
            m
            for m in self.messages.values()
            if m.channel == channel
            and m.ts == ts
            and not m.deleted
            and (m.thread_ts not in (None, m.ts)) == in_thread
        ]
        if not found:
            return {"ok": True, "messages": []}
        message = found[0]
        author = {"user": message.user} if message.user else {"bot_id": BOT_ID, "user": BOT_USER}
        return {
            "ok": True,
            "messages": [{"type": "message", "ts": ts, "text": message.text, **author}],
        }

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._found(params, in_thread=False)

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._found(params, in_thread=True)

    def _chat_getPermalink(self, params: dict[str, Any]) -> dict[str, Any]:
        ts = str(params.get("message_ts"))
        if ts not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        channel = str(params.get("channel"))
        return {
            "ok": True,
            "channel": channel,
            "permalink": f"https://test.slack.com/archives/{channel}/p{ts.replace('.', '')}",
        }

    def _chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(params.get("ts")))
        if message is None or message.deleted:
            return {"ok": False, "error": "message_not_found"}
        message.deleted = True
        return {"ok": True}

    def _apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.base.replace("http://", "ws://") + "/socket"}

    # ------------------------------------------------------------------ files

    def add_file(
        self,
        name: str,
        data: bytes,
        *,
        mimetype: str = "text/plain",
        status: int = 200,
        redirect: str = "",
        size: int | None = None,
        hold: asyncio.Event | None = None,
    ) -> dict[str, Any]:
        """Serve ``data`` as a file; returns its object for a message event's ``files``
        (``size``: what Slack declares, default the real size; ``hold``: answered once set)."""
        file_id = f"F{len(self.files) + 1:08d}"
        self.files[file_id] = FakeFile(
            name, data, mimetype, status=status, redirect=redirect, hold=hold
        )
        url = f"{self.base}/files-pri/{TEAM}-{file_id}/{name}"
        return {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rpartition(".")[2],
            "size": len(data) if size is None else size,
            "mode": "hosted",
            "is_external": False,
            "url_private": url,
            "url_private_download": url + "?download=1",
        }

    async def _file(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization", "")
        self.file_requests.append(FileRequest(request.path, authorization))
        self._touch()
        file_id = request.match_info["team_file"].rpartition("-")[2]
        served = self.files.get(file_id)
        if authorization != f"Bearer {BOT_TOKEN}":
            # What files.slack.com does without a token (or the files:read scope): a web page.
            return web.Response(text="<html>Sign in to Slack</html>", content_type="text/html")
        if served is None or served.name != request.match_info["name"]:
            return web.Response(status=404, text="file not found")
        if served.hold is not None:
            await served.hold.wait()
        if served.redirect:
            raise web.HTTPFound(served.redirect)
        if served.status != 200:
            return web.Response(status=served.status, text="no")
        return web.Response(body=served.data, content_type=served.mimetype)

    # ------------------------------------------------------------------ response_url

    async def _response(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["_name"] = request.match_info["name"]
        self.responses.append(body)
        self._touch()
        return web.Response(text="ok")

    # ------------------------------------------------------------------ Socket Mode

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.append(socket)
        self._touch()
        await socket.send_json({"type": "hello", "num_connections": 1})
        async for message in socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.acks.append(json.loads(message.data))
                self._touch()
        return socket

    async def send_envelope(self, kind: str, payload: dict[str, Any]) -> str:
        """Push a Socket Mode envelope (``slash_commands``, ``events_api``); returns its id."""
        await self.wait_for(lambda: bool(self._sockets))
        envelope_id = uuid.uuid4().hex
        await self._sockets[-1].send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": kind != "events_api",
            }
        )
        return envelope_id


def _blocks(value: Any) -> list[dict[str, Any]]:
    """Blocks as sent: a JSON list (form-encoded calls send them as a JSON string)."""
    if not value:
        return []
    return list(json.loads(value) if isinstance(value, str) else value)


def invalid_blocks(value: Any) -> str | None:
    """What Slack would refuse in ``blocks`` (the limits of the block types solarbot sends), or
    None: a context_actions block holds 1-5 feedback_buttons/icon_button elements; section text
    at most 3,000 characters, markdown text at most 12,000."""
    for block in _blocks(value):
        kind = block.get("type")
        if kind == "context_actions":
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= 5:
                return f"context_actions holds {len(elements)} elements"
            if any(e.get("type") not in ("feedback_buttons", "icon_button") for e in elements):
                return "context_actions holds only feedback_buttons and icon_button elements"
        elif kind == "section" and len(block.get("text", {}).get("text", "")) > 3000:
            return "section text over 3,000 characters"
        elif kind == "markdown" and not 0 < len(block.get("text", "")) <= 12_000:
            return "markdown text empty or over 12,000 characters"
    return None


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, traceback: object) -> bool:
        return kind is TimeoutError


def _json(
    body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


# ---------------------------------------------------------------------- signed requests


def sign(
    body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


def command_body(
    text: str,
    *,
    response_url: str,
    command: str = "/solar",
    channel: str = "C0GENERAL",
    user: str = "U0ALICE",
    trigger_id: str | None = None,
    team: str = TEAM,
) -> str:
    return urlencode(
        {
            "token": "legacy-verification-token",
            "team_id": team,
            "team_domain": "test",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": "alice",
            "command": command,
            "text": text,
            "response_url": response_url,
            "trigger_id": trigger_id or uuid.uuid4().hex,
            "api_app_id": "A0APP",
        }
    )


def event_body(event: dict[str, Any], *, event_id: str | None = None, team: str = TEAM) -> str:
    return json.dumps(
        {
            "token": "legacy-verification-token",
            "team_id": team,
            "api_app_id": "A0APP",
            "event": event,
            "type": "event_callback",
            "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": int(time.time()),
            "authorizations": [{"team_id": team, "user_id": BOT_USER, "is_bot": True}],
        }
    )


def action_body(
    action_id: str,
    value: str,
    *,
    user: str,
    channel: str,
    message_ts: str,
    response_url: str,
    thread_ts: str | None = None,
    action_type: str = "button",
    team: str = TEAM,
) -> str:
    """A ``block_actions`` payload (a button clicked under a message), form-encoded as Slack
    posts it."""
    message: dict[str, Any] = {"type": "message", "ts": message_ts, "bot_id": BOT_ID}
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel,
        "is_ephemeral": False,
    }
    if thread_ts is not None:
        message["thread_ts"] = thread_ts
        container["thread_ts"] = thread_ts
    payload = {
        "type": "block_actions",
        "token": "legacy-verification-token",
        "api_app_id": "A0APP",
        "user": {"id": user, "username": user.lower(), "team_id": team},
        "team": {"id": team, "domain": "test"},
        "container": container,
        "channel": {"id": channel, "name": "general"},
        "message": message,
        "trigger_id": uuid.uuid4().hex,
        "response_url": response_url,
        "actions": [
            {
                "type": action_type,
                "action_id": action_id,
                "block_id": "b" + uuid.uuid4().hex[:6],
                "value": value,
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)})


async def signed_post(
    session: aiohttp.ClientSession,
    url: str,
    body: str,
    *,
    content_type: str,
    headers: dict[str, str] | None = None,
    signature: dict[str, str] | None = None,
) -> tuple[int, str]:
    all_headers = {"Content-Type": content_type, **(signature or sign(body)), **(headers or {})}
    async with session.post(url, data=body.encode(), headers=all_headers) as response:
        return response.status, await response.text()
