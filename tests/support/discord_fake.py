"""A small stand-in for Discord on 127.0.0.1 that the real discord.py client talks to.

Gateway (websocket at ``/``): HELLO -> IDENTIFY -> READY + GUILD_CREATE, heartbeats acknowledged,
MESSAGE_CREATE dispatched for users' messages and for the bot's own posts (as Discord does),
MESSAGE_REACTION_ADD/REMOVE for users' reactions (``user_reaction``) to clients with the intent. An
IDENTIFY asking for the Message Content intent while the portal switch is off is closed with 4014.
Without that intent, dispatched content is blanked unless the bot is mentioned or it is a DM.

REST (``/api/v10``): users/@me, oauth2/applications/@me, channel and message lookups, create/edit/
delete message, typing. Like Discord: content over 2000 characters -> 400 code 50035, empty -> 400
50006, unknown message -> 404 10008, a bad token -> 401, ``enforce_nonce`` deduplicates creates, and
``fail_next`` answers 429 (with ``Via`` and a JSON ``retry_after``, which is what discord.py needs to
honour it) or any other status. Every REST call is recorded in ``calls``. Replies carry
``Content-Type: application/json`` exactly: discord.py mis-parses anything else.

Threads: ``POST /channels/C/messages/M/threads`` starts a thread from a message (its id is the
message's, its owner the bot; THREAD_CREATE follows; a second one on a message -> 400 160004).

Interactions: application commands registered with
``PUT /applications/{app}/commands`` (or the guild variant) are kept per scope; ``slash`` sends an
INTERACTION_CREATE (type 2) whose options are typed from the registered schema (an option the
schema lacks fails the test, as Discord refuses it), ``click`` one of component type (type 3) for
a button that is on the message. The callback (``POST /interactions/{id}/{token}/callback``) is
accepted once per interaction (a second one: 400 code 40060, as Discord answers); webhook
follow-ups and edits (``/webhooks/{app}/{token}[/messages/{id|@original}]``) need no bot token but
a live interaction token (``expire_interaction``: 401 code 50027), and keep the ephemeral flag.

CDN: files a user message carries (``user_message(uploads=...)``, ``Upload``) are served at their
attachment URL (``/attachments/...``) like cdn.discordapp.com, without any token; every request
for one is in ``cdn_requests`` with its headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yarl
from aiohttp import WSMsgType, web
from discord.gateway import DiscordWebSocket
from discord.http import Route

DISCORD_EPOCH_MS = 1420070400000
MESSAGE_CONTENT = 1 << 15
GUILD_MESSAGE_REACTIONS = 1 << 10
DIRECT_MESSAGE_REACTIONS = 1 << 13
BOT_ID = 900000000000000001
APP_ID = 900000000000000002
ATTACHMENT_OPTION = 11  # an application command option of type ATTACHMENT
Json = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def user_payload(user_id: int, name: str, *, bot: bool = False) -> Json:
    return {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": name.capitalize(),
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


def member_payload(roles: Iterable[int]) -> Json:
    """A guild member object (without its ``user``, which MESSAGE_CREATE carries apart)."""
    return {
        "roles": [str(r) for r in roles],
        "joined_at": now_iso(),
        "deaf": False,
        "mute": False,
        "flags": 0,
        "nick": None,
        "avatar": None,
        "premium_since": None,
        "pending": False,
    }


@dataclass(frozen=True)
class Upload:
    """A file attached to a user message and served by the fake's CDN: ``status`` other than 200
    answers that status; ``declared_size`` is the size the message states (default: the real one);
    ``hold``: the request is recorded at once and answered once the event is set."""

    name: str
    content_type: str
    data: bytes
    status: int = 200
    declared_size: int | None = None
    # The CDN answers only once this is set (a slow download the test controls).
    hold: asyncio.Event | None = field(default=None, compare=False)


@dataclass
class Call:
    method: str
    path: str
    body: Any
    status: int


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: float


@dataclass
class FakeInteraction:
    """One interaction sent to the bot and what the bot did with it."""

    id: int
    token: str
    channel_id: int
    sent_at: float  # time.monotonic() when INTERACTION_CREATE was dispatched
    callbacks: list[Json] = field(default_factory=list)  # every callback body (accepted or not)
    acknowledged_at: float | None = None  # when the one accepted callback arrived
    ephemeral: bool = False  # the response (original and, by default, follow-ups) is ephemeral
    original: int | None = None  # the original response message
    followups: list[int] = field(default_factory=list)
    expired: bool = False

    @property
    def callback_type(self) -> int | None:
        return int(self.callbacks[0]["type"]) if self.callbacks else None


@dataclass
class _Connection:
    ws: web.WebSocketResponse
    intents: int


@dataclass
class FakeDiscord:
    token: str = "test-token"
    message_content_enabled: bool = True  # the portal's MESSAGE CONTENT INTENT switch
    calls: list[Call] = field(default_factory=list)
    messages: dict[int, Json] = field(default_factory=dict)  # every message, by id
    deleted: set[int] = field(default_factory=set)
    created: list[int] = field(default_factory=list)  # messages posted through REST, in order
    edits: dict[int, list[str]] = field(default_factory=dict)  # message id -> every content shown
    guilds: dict[int, Json] = field(default_factory=dict)
    channels: dict[int, Json] = field(default_factory=dict)
    identifies: int = 0
    # (guild id, user id) -> role ids of members seen reacting (GET /guilds/G/members/U)
    member_roles: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)
    # Application commands as last registered: "global" or the guild id -> the command payloads.
    commands: dict[str, list[Json]] = field(default_factory=dict)
    interactions: dict[int, FakeInteraction] = field(default_factory=dict)  # by interaction id
    # Interaction id -> seconds its callback request takes (Discord answering slowly).
    callback_delays: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bot = user_payload(BOT_ID, "solarbot", bot=True)
        self._faults: list[Fault] = []
        self._connections: list[_Connection] = []
        self._sequence = itertools.count(1)
        self._ids = itertools.count(1)
        self._nonces: dict[tuple[int, str], int] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.ready = asyncio.Event()
        self.uploads: dict[str, Upload] = {}  # by CDN path
        self.cdn_requests: list[tuple[str, dict[str, str]]] = []  # (path, headers)

    # ------------------------------------------------------------------ server

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        app.router.add_get("/attachments/{channel}/{attachment}/{name}", self._cdn)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def point_discord_py_here(self, monkeypatch: Any) -> None:
        monkeypatch.setattr(Route, "BASE", f"http://127.0.0.1:{self.port}/api/v10")
        monkeypatch.setattr(
            DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(f"ws://127.0.0.1:{self.port}/")
        )

    async def close(self) -> None:
        for connection in list(self._connections):
            with contextlib.suppress(Exception):
                await connection.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def drop_gateway_connections(self) -> None:
        """Close every gateway websocket (as Discord does at times); clients reconnect."""
        for connection in list(self._connections):
            with contextlib.suppress(Exception):
                await connection.ws.close(code=4000, message=b"Unknown error.")

    # ------------------------------------------------------------------ the world

    def snowflake(self) -> int:
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._ids) & 0xFFF)

    def add_guild(
        self,
        guild_id: int,
        name: str = "guild",
        *,
        roles: dict[int, str] | None = None,
        permissions: dict[int, int] | None = None,
    ) -> None:
        """``permissions``: role id -> permission bits (e.g. 1 << 5, Manage Server); default 0."""
        role_payloads = [self._role(guild_id, "@everyone", guild_id, position=0)]
        for position, (role_id, role_name) in enumerate((roles or {}).items(), start=1):
            role = self._role(role_id, role_name, guild_id, position=position)
            role["permissions"] = str((permissions or {}).get(role_id, 0))
            role_payloads.append(role)
        bot_role = self._role(guild_id + 1, "solarbot", guild_id, position=99)
        bot_role["managed"] = True
        bot_role["tags"] = {"bot_id": str(BOT_ID)}
        role_payloads.append(bot_role)
        self.guilds[guild_id] = {"id": str(guild_id), "name": name, "roles": role_payloads}

    @staticmethod
    def _role(role_id: int, name: str, guild_id: int, *, position: int) -> Json:
        return {
            "id": str(role_id),
            "name": name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": position,
            "permissions": "0",
            "managed": False,
            "mentionable": True,
            "flags": 0,
        }

    def add_channel(self, guild_id: int, channel_id: int, name: str) -> None:
        self.channels[channel_id] = {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(guild_id),
            "name": name,
            "position": len(self.channels),
            "permission_overwrites": [],
            "nsfw": False,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
        }

    def add_thread(
        self, guild_id: int, parent_id: int, thread_id: int, name: str, *, owner_id: int = 1
    ) -> None:
        self.channels[thread_id] = {
            "id": str(thread_id),
            "type": 11,
            "guild_id": str(guild_id),
            "parent_id": str(parent_id),
            "owner_id": str(owner_id),
            "name": name,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": now_iso(),
                "locked": False,
            },
        }

    def _guild_create(self, guild_id: int) -> Json:
        guild = self.guilds[guild_id]
        channels = [c for c in self.channels.values() if c.get("guild_id") == str(guild_id)]
        return {
            **guild,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": "1",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "joined_at": now_iso(),
            "large": False,
            "unavailable": False,
            "member_count": 2,
            "voice_states": [],
            "members": [],
            "presences": [],
            "channels": [c for c in channels if c["type"] != 11],
            "threads": [c for c in channels if c["type"] == 11],
            "max_members": 500000,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    # ------------------------------------------------------------------ users talk

    async def user_message(
        self,
        channel_id: int,
        content: str,
        *,
        author_id: int = 500,
        author_name: str = "ana",
        bot: bool = False,
        mentions: tuple[int, ...] = (),
        mention_roles: tuple[int, ...] = (),
        reply_to: int | None = None,
        roles: tuple[int, ...] = (),
        attachments: tuple[tuple[str, str], ...] = (),
        stickers: tuple[str, ...] = (),
        uploads: tuple[Upload, ...] = (),
        message_type: int = 0,
        webhook_id: int | None = None,
    ) -> Json:
        """A user posts ``content``; returns the MESSAGE_CREATE payload (replay it if you like).
        ``attachments`` (name, type) are listed only; ``uploads`` are served by the CDN too.
        ``message_type``: a system message (7: a member joined, 18: a thread was created, ...);
        ``webhook_id``: posted by that webhook."""
        channel = self.channels.get(channel_id)
        guild_id = channel.get("guild_id") if channel is not None else None
        message_id = self.snowflake()
        payload: Json = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": user_payload(author_id, author_name, bot=bot),
            "content": content,
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [
                self.bot if uid == BOT_ID else user_payload(uid, f"user{uid}") for uid in mentions
            ],
            "mention_roles": [str(r) for r in mention_roles],
            "attachments": [
                {
                    "id": str(self.snowflake()),
                    "filename": name,
                    "size": 10,
                    "url": f"https://cdn.invalid/{name}",
                    "proxy_url": f"https://cdn.invalid/{name}",
                    "content_type": kind,
                }
                for name, kind in attachments
            ]
            + [self._served(channel_id, upload) for upload in uploads],
            "sticker_items": [
                {"id": str(self.snowflake()), "name": name, "format_type": 1} for name in stickers
            ],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if guild_id is not None:
            payload["guild_id"] = guild_id
            payload["member"] = member_payload(roles)
        if message_type:
            payload["type"] = message_type
        if webhook_id is not None:
            payload["webhook_id"] = str(webhook_id)
        if reply_to is not None:
            payload["type"] = 19
            payload["message_reference"] = {
                "message_id": str(reply_to),
                "channel_id": str(channel_id),
                **({"guild_id": guild_id} if guild_id else {}),
            }
            payload["referenced_message"] = self.messages.get(reply_to)
        self.messages[message_id] = payload
        await self.dispatch_message(payload)
        return payload

    async def edit_user_message(self, message_id: int, content: str) -> None:
        """A user edits their message: MESSAGE_UPDATE to every connected client."""
        message = self.messages[message_id]
        message.update(content=content, edited_timestamp=now_iso())
        for connection in list(self._connections):
            await self._dispatch(connection, "MESSAGE_UPDATE", dict(message))

    def _served(self, channel_id: int, upload: Upload) -> Json:
        attachment_id = self.snowflake()
        path = f"/attachments/{channel_id}/{attachment_id}/{upload.name}"
        self.uploads[path] = upload
        url = f"http://127.0.0.1:{self.port}{path}?ex=1&is=2&hm=3"
        size = len(upload.data) if upload.declared_size is None else upload.declared_size
        return {
            "id": str(attachment_id),
            "filename": upload.name,
            "size": size,
            "url": url,
            "proxy_url": url,
            "content_type": upload.content_type,
        }

    async def _cdn(self, request: web.Request) -> web.Response:
        self.cdn_requests.append((request.path, dict(request.headers)))
        upload = self.uploads.get(request.path)
        if upload is None:
            return web.Response(status=404, text="not found")
        if upload.hold is not None:
            await upload.hold.wait()
        if upload.status != 200:
            return web.Response(status=upload.status, text="no")
        return web.Response(body=upload.data, headers={"Content-Type": upload.content_type})

    async def dispatch_message(self, payload: Json) -> None:
        """Send MESSAGE_CREATE to every connected client (call again to simulate a replay)."""
        for connection in list(self._connections):
            data = dict(payload)
            if not connection.intents & MESSAGE_CONTENT and not self._content_visible(data):
                data.update(content="", embeds=[], attachments=[], components=[])
            await self._dispatch(connection, "MESSAGE_CREATE", data)

    async def user_reaction(
        self,
        message_id: int,
        emoji: str,
        *,
        user_id: int = 500,
        added: bool = True,
        roles: tuple[int, ...] = (),
        bot: bool = False,
    ) -> None:
        """A user adds (or removes) a Unicode ``emoji`` reaction on a message: MESSAGE_REACTION_ADD
        / _REMOVE to every client that asked for reaction events (the guild or the DM intent),
        with ``message_author_id`` as Discord sends it."""
        message = self.messages[message_id]
        guild_id = message.get("guild_id") or self.channels.get(int(message["channel_id"]), {}).get(
            "guild_id"
        )
        data: Json = {
            "user_id": str(user_id),
            "channel_id": message["channel_id"],
            "message_id": str(message_id),
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
            "message_author_id": message["author"]["id"],
        }
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
            if added:
                self.member_roles[(int(guild_id), user_id)] = roles
                data["member"] = {
                    "user": user_payload(user_id, f"user{user_id}", bot=bot),
                    **member_payload(roles),
                }
        intent = GUILD_MESSAGE_REACTIONS if guild_id is not None else DIRECT_MESSAGE_REACTIONS
        event = "MESSAGE_REACTION_ADD" if added else "MESSAGE_REACTION_REMOVE"
        for connection in list(self._connections):
            if connection.intents & intent:
                await self._dispatch(connection, event, data)

    def _content_visible(self, data: Json) -> bool:
        return (
            "guild_id" not in data
            or data["author"]["id"] == str(BOT_ID)
            or any(m["id"] == str(BOT_ID) for m in data["mentions"])
        )

    async def _dispatch(self, connection: _Connection, event: str, data: Json) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await connection.ws.send_str(
                json.dumps({"op": 0, "t": event, "s": next(self._sequence), "d": data})
            )

    # ------------------------------------------------------------------ inspection

    def fail_next(
        self,
        method: str,
        path: str,
        *,
        status: int = 429,
        retry_after: float = 0.05,
        count: int = 1,
    ) -> None:
        """The next ``count`` calls matching ``method`` and the ``path`` regex fail with ``status``."""
        for _ in range(count):
            self._faults.append(Fault(method, re.compile(path), status, retry_after))

    def bot_messages(self, channel_id: int) -> list[Json]:
        """The messages the bot posted (REST) in a channel and did not delete, oldest first."""
        return [
            self.messages[i]
            for i in self.created
            if self.messages[i]["channel_id"] == str(channel_id) and i not in self.deleted
        ]

    def rest(self, method: str, pattern: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and re.search(pattern, c.path)]

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connection: _Connection | None = None
        await ws.send_str(
            json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        )
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                op = message.get("op")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11, "d": None}))
                elif op == 2:
                    data = message["d"]
                    if data.get("token") != self.token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    intents = int(data.get("intents", 0))
                    if intents & MESSAGE_CONTENT and not self.message_content_enabled:
                        await ws.close(code=4014, message=b"Disallowed intent(s).")
                        break
                    self.identifies += 1
                    connection = _Connection(ws, intents)
                    self._connections.append(connection)
                    await self._dispatch(connection, "READY", self._ready())
                    for guild_id in self.guilds:
                        await self._dispatch(
                            connection, "GUILD_CREATE", self._guild_create(guild_id)
                        )
                    self.ready.set()
                elif op == 6:  # resume: not kept; make the client identify again
                    await ws.send_str(json.dumps({"op": 9, "d": False}))
        finally:
            if connection is not None and connection in self._connections:
                self._connections.remove(connection)
        return ws

    def _ready(self) -> Json:
        return {
            "v": 10,
            "user": {**self.bot, "verified": True, "mfa_enabled": False, "flags": 0},
            "session_id": "fake-session",
            "resume_gateway_url": f"ws://127.0.0.1:{self.port}/",
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "application": {"id": str(APP_ID), "flags": 1 << 18},
            "private_channels": [],
            "relationships": [],
        }

    # ------------------------------------------------------------------ REST

    def _json(
        self, data: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=json.dumps(data).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        response = await self._answer(request, path, body)
        self.calls.append(Call(request.method, path, body, response.status))
        return response

    async def _answer(self, request: web.Request, path: str, body: Any) -> web.Response:
        if path.startswith(("/webhooks/", "/interactions/")):
            # Interaction tokens authenticate these (no bot token needed), like Discord.
            return await self._interaction_rest(request.method, path, body or {})
        if request.headers.get("Authorization") != f"Bot {self.token}":
            return self._json({"message": "401: Unauthorized", "code": 0}, 401)
        for fault in self._faults:
            if fault.method == request.method and fault.pattern.search(path):
                self._faults.remove(fault)
                if fault.status == 429:
                    return self._json(
                        {
                            "message": "You are being rate limited.",
                            "retry_after": fault.retry_after,
                            "global": False,
                        },
                        429,
                        {"Via": "1.1 google", "Retry-After": str(fault.retry_after)},
                    )
                return self._json({"message": "injected failure", "code": 0}, fault.status)
        method = request.method
        if method == "GET" and path == "/users/@me":
            return self._json({**self.bot, "verified": True, "mfa_enabled": False, "flags": 0})
        if method == "GET" and path == "/oauth2/applications/@me":
            return self._json(self._application())
        if (match := re.fullmatch(r"/guilds/(\d+)/members/(\d+)", path)) and method == "GET":
            key = (int(match.group(1)), int(match.group(2)))
            if key not in self.member_roles:
                return self._json({"message": "Unknown Member", "code": 10007}, 404)
            return self._json(
                {
                    "user": user_payload(key[1], f"user{key[1]}"),
                    **member_payload(self.member_roles[key]),
                }
            )
        if (
            match := re.fullmatch(r"/applications/(\d+)(?:/guilds/(\d+))?/commands", path)
        ) and method == "PUT":
            return self._register_commands(int(match.group(1)), match.group(2), body or [])
        if match := re.fullmatch(r"/channels/(\d+)/typing", path):
            return web.Response(status=204) if method == "POST" else self._not_found()
        if match := re.fullmatch(r"/channels/(\d+)", path):
            channel = self.channels.get(int(match.group(1)))
            if method == "GET" and channel is not None:
                return self._json(channel)
            return self._json({"message": "Unknown Channel", "code": 10003}, 404)
        if (match := re.fullmatch(r"/channels/(\d+)/messages", path)) and method == "POST":
            return await self._create(int(match.group(1)), body or {})
        if (
            match := re.fullmatch(r"/channels/(\d+)/messages/(\d+)/threads", path)
        ) and method == "POST":
            return await self._start_thread(int(match.group(1)), int(match.group(2)), body or {})
        if match := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path):
            message = self.messages.get(int(match.group(2)))
            if message is None or int(message["id"]) in self.deleted:
                return self._not_found()
            if method == "GET":
                return self._json(message)
            if method == "PATCH":
                return self._edit(message, body or {})
            if method == "DELETE":
                self.deleted.add(int(message["id"]))
                return web.Response(status=204)
        return self._json({"message": "404: Not Found", "code": 0}, 404)

    def _not_found(self) -> web.Response:
        return self._json({"message": "Unknown Message", "code": 10008}, 404)

    @staticmethod
    def _invalid_content(content: Any) -> web.Response | None:
        if not isinstance(content, str) or not content.strip():
            return None
        if len(content) > 2000:
            errors = {
                "content": {
                    "_errors": [
                        {
                            "code": "BASE_TYPE_MAX_LENGTH",
                            "message": "Must be 2000 or fewer in length.",
                        }
                    ]
                }
            }
            return web.Response(
                status=400,
                body=json.dumps(
                    {"message": "Invalid Form Body", "code": 50035, "errors": errors}
                ).encode(),
                headers={"Content-Type": "application/json"},
            )
        return None

    async def _create(self, channel_id: int, body: Json) -> web.Response:
        content = body.get("content")
        if not isinstance(content, str) or not content.strip():
            return self._json({"message": "Cannot send an empty message", "code": 50006}, 400)
        invalid = self._invalid_content(content)
        if invalid is not None:
            return invalid
        nonce = body.get("nonce")
        if body.get("enforce_nonce") and nonce is not None:
            earlier = self._nonces.get((channel_id, str(nonce)))
            if earlier is not None:
                return self._json(self.messages[earlier])
        message = self._bot_message(
            channel_id,
            content,
            message_type=0,
            flags=0,
            components=body.get("components") or [],
            allowed_mentions=body.get("allowed_mentions"),
            nonce=nonce,
        )
        message_id = int(message["id"])
        reference = body.get("message_reference")
        if reference:
            message["type"] = 19
            message["message_reference"] = reference
            message["referenced_message"] = self.messages.get(int(reference["message_id"]))
        if nonce is not None:
            self._nonces[(channel_id, str(nonce))] = message_id
        self.created.append(message_id)
        await self.dispatch_message(message)  # Discord echoes the bot's own messages
        return self._json(message)

    async def _start_thread(self, channel_id: int, message_id: int, body: Json) -> web.Response:
        """A public thread from a message: its id is the message's, its owner the bot; a second
        one on the same message is 400 code 160004, as on Discord. THREAD_CREATE follows."""
        message = self.messages.get(message_id)
        channel = self.channels.get(channel_id)
        if message is None or message["channel_id"] != str(channel_id) or channel is None:
            return self._not_found()
        if message_id in self.channels:
            return self._json(
                {"message": "A thread has already been created for this message", "code": 160004},
                400,
            )
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            return self._json({"message": "Invalid Form Body", "code": 50035}, 400)
        self.add_thread(int(channel["guild_id"]), channel_id, message_id, name, owner_id=BOT_ID)
        thread = self.channels[message_id]
        thread["thread_metadata"]["auto_archive_duration"] = body.get("auto_archive_duration")
        message["thread"] = thread
        for connection in list(self._connections):
            await self._dispatch(connection, "THREAD_CREATE", {**thread, "newly_created": True})
        return self._json(thread)

    def _edit(self, message: Json, body: Json) -> web.Response:
        if "content" in body:
            content = body["content"]
            if not isinstance(content, str) or not content.strip():
                return self._json({"message": "Cannot send an empty message", "code": 50006}, 400)
            invalid = self._invalid_content(content)
            if invalid is not None:
                return invalid
            message["content"] = content
            message["edited_timestamp"] = now_iso()
            self.edits.setdefault(int(message["id"]), []).append(content)
        if "components" in body:
            message["components"] = body["components"] or []
        return self._json(message)

    def _application(self) -> Json:
        return {
            "id": str(APP_ID),
            "name": "solarbot",
            "icon": None,
            "description": "",
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": user_payload(1, "owner"),
            "summary": "",
            "verify_key": "0" * 64,
            "team": None,
            "flags": 1 << 19 if self.message_content_enabled else 0,
            "interactions_endpoint_url": None,
        }

    # ------------------------------------------------------------------ interactions

    def _register_commands(self, app_id: int, guild: str | None, body: Any) -> web.Response:
        if app_id != APP_ID or not isinstance(body, list):
            return self._json({"message": "Invalid Form Body", "code": 50035}, 400)
        registered = []
        for command in body:
            payload = {
                **command,
                "id": str(self.snowflake()),
                "application_id": str(APP_ID),
                "version": str(self.snowflake()),
            }
            if guild is not None:
                payload["guild_id"] = guild
            registered.append(payload)
        self.commands[guild or "global"] = registered
        return self._json(registered)

    def registered(self, name: str, *, guild: int | None = None) -> Json:
        """The registered command ``name`` (the guild's, else the global one)."""
        for scope in ((str(guild),) if guild else ()) + ("global",):
            for command in self.commands.get(scope, []):
                if command["name"] == name:
                    return command
        raise AssertionError(f"/{name} is not registered (scopes: {sorted(self.commands)})")

    def _interaction_payload(
        self,
        kind: int,
        channel_id: int,
        data: Json,
        *,
        user_id: int,
        user_name: str,
        roles: tuple[int, ...],
        interaction_id: int | None = None,
    ) -> Json:
        channel = self.channels.get(channel_id)
        guild_id = channel.get("guild_id") if channel is not None else None
        interaction_id = interaction_id or self.snowflake()
        token = f"itok-{interaction_id}-{self.snowflake()}"
        payload: Json = {
            "id": str(interaction_id),
            "application_id": str(APP_ID),
            "type": kind,
            "data": data,
            "token": token,
            "version": 1,
            "channel_id": str(channel_id),
            "channel": {
                "id": str(channel_id),
                "type": channel["type"] if channel is not None else 1,
                **(
                    {"parent_id": channel["parent_id"]}
                    if channel and channel.get("parent_id")
                    else {}
                ),
            },
            "locale": "en-US",
            "app_permissions": "0",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild_id or user_id)},
            "context": 0 if guild_id else 1,
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if guild_id is not None:
            permissions = 0
            for role in self.guilds[int(guild_id)]["roles"]:
                if int(role["id"]) in roles or int(role["id"]) == int(guild_id):
                    permissions |= int(role["permissions"])
            payload["guild_id"] = str(guild_id)
            payload["guild_locale"] = "en-US"
            payload["member"] = {
                "user": user_payload(user_id, user_name),
                **member_payload(roles),
                "permissions": str(permissions),
            }
        else:
            payload["user"] = user_payload(user_id, user_name)
        return payload

    async def slash(
        self,
        channel_id: int,
        command: str,
        sub: str | None = None,
        *,
        user_id: int = 500,
        user_name: str = "ana",
        roles: tuple[int, ...] = (),
        interaction_id: int | None = None,
        **options: Any,
    ) -> Json:
        """A user runs ``/command [sub] option:value ...``; returns the INTERACTION_CREATE payload
        (``dispatch_interaction`` it again to replay it). Options are typed from the registered
        schema, as Discord does; one the schema does not have fails here. An attachment option
        (type 11) takes an ``Upload``: served by the CDN, its id is the option's value and the
        attachment is in ``data.resolved.attachments``, as Discord sends it."""
        channel = self.channels.get(channel_id)
        guild = int(channel["guild_id"]) if channel and channel.get("guild_id") else None
        registered = self.registered(command, guild=guild)
        schema = registered.get("options", [])
        if sub is not None:
            (group,) = [o for o in schema if o["name"] == sub and o["type"] == 1]
            schema = group.get("options", [])
        values = []
        resolved: Json = {}
        for name, value in options.items():
            matching = [o for o in schema if o["name"] == name]
            if not matching:
                raise AssertionError(f"/{command} {sub or ''} has no option {name!r}")
            if matching[0]["type"] == ATTACHMENT_OPTION:  # an Upload: served by the CDN
                served = self._served(channel_id, value)
                resolved[served["id"]] = served
                value = served["id"]
            values.append({"name": name, "type": matching[0]["type"], "value": value})
        missing = [o["name"] for o in schema if o.get("required") and o["name"] not in options]
        if missing:
            raise AssertionError(f"/{command} {sub or ''} needs {missing}")
        data: Json = {"id": registered["id"], "name": command, "type": 1}
        if sub is not None:
            data["options"] = [{"name": sub, "type": 1, "options": values}]
        else:
            data["options"] = values
        if "guild_id" in registered:
            data["guild_id"] = registered["guild_id"]
        if resolved:  # as Discord sends them: the attachment's id is the option's value
            data["resolved"] = {"attachments": resolved}
        payload = self._interaction_payload(
            2,
            channel_id,
            data,
            user_id=user_id,
            user_name=user_name,
            roles=roles,
            interaction_id=interaction_id,
        )
        await self.dispatch_interaction(payload)
        return payload

    async def click(
        self,
        message_id: int,
        custom_id: str,
        *,
        user_id: int = 500,
        user_name: str = "ana",
        roles: tuple[int, ...] = (),
        interaction_id: int | None = None,
    ) -> Json:
        """A user clicks the button ``custom_id`` on a message (it must be on it, as Discord
        sends only clicks on components it shows); returns the INTERACTION_CREATE payload."""
        message = self.messages[message_id]
        shown = [
            item["custom_id"]
            for row in message.get("components") or []
            for item in row.get("components", [])
        ]
        if custom_id not in shown:
            raise AssertionError(f"no button {custom_id!r} on message {message_id} ({shown})")
        payload = self._interaction_payload(
            3,
            int(message["channel_id"]),
            {"custom_id": custom_id, "component_type": 2},
            user_id=user_id,
            user_name=user_name,
            roles=roles,
            interaction_id=interaction_id,
        )
        payload["message"] = message
        await self.dispatch_interaction(payload)
        return payload

    async def dispatch_interaction(self, payload: Json) -> None:
        """Send INTERACTION_CREATE to every connected client (again: a replay)."""
        interaction_id = int(payload["id"])
        if interaction_id not in self.interactions:
            self.interactions[interaction_id] = FakeInteraction(
                id=interaction_id,
                token=payload["token"],
                channel_id=int(payload["channel_id"]),
                sent_at=time.monotonic(),
            )
        for connection in list(self._connections):
            await self._dispatch(connection, "INTERACTION_CREATE", payload)

    def expire_interaction(self, interaction_id: int) -> None:
        """The interaction's token is past its 15 minutes: its webhook calls fail."""
        self.interactions[interaction_id].expired = True

    def interaction_messages(self, interaction_id: int) -> list[Json]:
        """The response messages of an interaction not deleted: the original, then follow-ups."""
        interaction = self.interactions[interaction_id]
        ids = ([interaction.original] if interaction.original else []) + interaction.followups
        return [self.messages[i] for i in ids if i not in self.deleted]

    def _interaction_by_token(self, token: str) -> FakeInteraction | None:
        for interaction in self.interactions.values():
            if interaction.token == token:
                return interaction
        return None

    async def _interaction_rest(self, method: str, path: str, body: Json) -> web.Response:
        if match := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path):
            interaction = self.interactions.get(int(match.group(1)))
            if interaction is None or interaction.token != match.group(2) or method != "POST":
                return self._json({"message": "Unknown interaction", "code": 10062}, 404)
            if interaction.id in self.callback_delays:  # a slow answer from Discord
                await asyncio.sleep(self.callback_delays[interaction.id])
            return self._callback(interaction, body)
        match = re.fullmatch(r"/webhooks/(\d+)/([^/]+)(?:/messages/(@original|\d+))?", path)
        if match is None or int(match.group(1)) != APP_ID:
            return self._json({"message": "Unknown Webhook", "code": 10015}, 404)
        interaction = self._interaction_by_token(match.group(2))
        if interaction is None or interaction.expired:
            return self._json({"message": "Invalid Webhook Token", "code": 50027}, 401)
        if interaction.acknowledged_at is None:
            return self._json({"message": "Unknown Webhook", "code": 10015}, 404)
        target = match.group(3)
        if target is None:
            if method != "POST":
                return self._json({"message": "405: Method Not Allowed", "code": 0}, 405)
            return self._followup(interaction, body)
        if target == "@original":
            message_id = interaction.original
        else:
            message_id = int(target)
            if message_id != interaction.original and message_id not in interaction.followups:
                message_id = None
        if message_id is None or message_id in self.deleted:
            return self._not_found()
        message = self.messages[message_id]
        if method == "GET":
            return self._json(message)
        if method == "DELETE":
            self.deleted.add(message_id)
            return web.Response(status=204)
        if method == "PATCH":
            if "content" in body:
                invalid = self._invalid_content(body["content"])
                if invalid is not None:
                    return invalid
                message["content"] = body["content"] or ""
                self.edits.setdefault(message_id, []).append(message["content"])
            if "components" in body:
                message["components"] = body["components"] or []
            if "allowed_mentions" in body:
                message["allowed_mentions"] = body["allowed_mentions"]
            message["flags"] = int(message["flags"]) & ~128  # no longer "thinking"
            return self._json(message)
        return self._json({"message": "405: Method Not Allowed", "code": 0}, 405)

    def _callback(self, interaction: FakeInteraction, body: Json) -> web.Response:
        interaction.callbacks.append(body)
        if interaction.acknowledged_at is not None:
            return self._json(
                {"message": "Interaction has already been acknowledged.", "code": 40060}, 400
            )
        interaction.acknowledged_at = time.monotonic()
        kind = int(body.get("type", 0))
        data = body.get("data") or {}
        interaction.ephemeral = bool(int(data.get("flags", 0)) & 64)
        if kind in (4, 5):  # a message (5: "thinking…" until the original is edited)
            message = self._webhook_message(
                interaction,
                content=str(data.get("content") or ""),
                flags=int(data.get("flags", 0)) | (128 if kind == 5 else 0),
                components=data.get("components") or [],
                allowed_mentions=data.get("allowed_mentions"),
            )
            interaction.original = int(message["id"])
        return self._json(
            {
                "interaction": {
                    "id": str(interaction.id),
                    "type": 2,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": interaction.ephemeral,
                    **(
                        {"response_message_id": str(interaction.original)}
                        if interaction.original
                        else {}
                    ),
                }
            }
        )

    def _followup(self, interaction: FakeInteraction, body: Json) -> web.Response:
        content = body.get("content")
        if not isinstance(content, str) or not content.strip():
            return self._json({"message": "Cannot send an empty message", "code": 50006}, 400)
        invalid = self._invalid_content(content)
        if invalid is not None:
            return invalid
        message = self._webhook_message(
            interaction,
            content=content,
            flags=int(body.get("flags") or 0),
            components=body.get("components") or [],
            allowed_mentions=body.get("allowed_mentions"),
        )
        interaction.followups.append(int(message["id"]))
        return self._json(message)

    def _webhook_message(
        self,
        interaction: FakeInteraction,
        *,
        content: str,
        flags: int,
        components: list[Json],
        allowed_mentions: Any,
    ) -> Json:
        return self._bot_message(
            interaction.channel_id,
            content,
            message_type=20,
            flags=flags,
            components=components,
            allowed_mentions=allowed_mentions,
            webhook_id=str(APP_ID),
            application_id=str(APP_ID),
        )

    def _bot_message(
        self,
        channel_id: int,
        content: str,
        *,
        message_type: int,
        flags: int,
        components: list[Json],
        allowed_mentions: Any,
        **extra: Any,
    ) -> Json:
        """A message by the bot in ``channel_id`` (``extra``: nonce, webhook ids), kept with its
        first version in ``edits``."""
        message_id = self.snowflake()
        message: Json = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": self.bot,
            **extra,
            "content": content,
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": message_type,
            "flags": flags,
            "components": components,
            "allowed_mentions": allowed_mentions,
        }
        channel = self.channels.get(channel_id)
        if channel is not None and channel.get("guild_id"):
            message["guild_id"] = channel["guild_id"]
        self.messages[message_id] = message
        self.edits[message_id] = [content]
        return message
