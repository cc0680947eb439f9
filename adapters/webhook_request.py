"""The webhook ingress's request body as a typed model, validated at the edge.

Every field is a JSON string (``null``, numbers and objects are refused, not stored as "None" or a
Python repr), ids and names fit their database columns (``bot.storable``), no text carries a NUL
or a lone surrogate, and the JSON is parsed by pydantic's parser, which refuses nesting deeper than
a few hundred levels instead of recursing. Anything else is a ``BadRequest`` with one clear line,
answered 400 before anything is stored.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from bot.errors import InvalidIncomingError
from bot.records import Incoming
from bot.storable import (
    FIELD_LIMITS,
    REPLY_TARGET_ENTRIES,
    REPLY_TARGET_KEY_CHARS,
    REPLY_TARGET_VALUE_CHARS,
    text_problem,
)

PLATFORM = "webhook"


class BadRequest(InvalidIncomingError):
    """A webhook request that is not a valid message (answered 400; nothing is stored)."""


def _storable(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


_STORABLE = AfterValidator(_storable)

Channel = Annotated[str, Field(min_length=1, max_length=FIELD_LIMITS["channel"]), _STORABLE]
Workspace = Annotated[str, Field(max_length=FIELD_LIMITS["workspace"]), _STORABLE]
Thread = Annotated[str, Field(max_length=FIELD_LIMITS["thread"]), _STORABLE]
AuthorId = Annotated[str, Field(min_length=1, max_length=FIELD_LIMITS["author_id"]), _STORABLE]
AuthorName = Annotated[str, Field(max_length=FIELD_LIMITS["author_name"]), _STORABLE]
MessageId = Annotated[str, Field(min_length=1, max_length=FIELD_LIMITS["message_id"]), _STORABLE]
Text = Annotated[str, Field(min_length=1), _STORABLE]
TargetKey = Annotated[str, Field(max_length=REPLY_TARGET_KEY_CHARS), _STORABLE]
TargetValue = Annotated[str, Field(max_length=REPLY_TARGET_VALUE_CHARS), _STORABLE]


class IncomingRequest(BaseModel):
    """``POST /incoming``'s body (docs/webhook.md). Unknown fields are ignored."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    channel: Channel
    author_id: AuthorId
    text: Text
    message_id: MessageId
    workspace: Workspace = ""
    thread: Thread = ""
    author_name: AuthorName = ""
    reply_target: dict[TargetKey, TargetValue] = Field(
        default_factory=dict, max_length=REPLY_TARGET_ENTRIES
    )


def _describe(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing":
        return f"missing field {where}"
    if first["type"] == "json_invalid":
        return f"invalid JSON: {first['ctx'].get('error', first['msg'])}"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def parse_incoming(body: bytes) -> Incoming:
    """The message in a ``POST /incoming`` body, or ``BadRequest`` saying what is wrong."""
    try:
        request = IncomingRequest.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None
    try:
        return Incoming(
            platform=PLATFORM,
            workspace=request.workspace,
            channel=request.channel,
            thread=request.thread,
            author_id=request.author_id,
            author_name=request.author_name,
            text=request.text,
            message_id=request.message_id,
            reply_target=request.reply_target,
        )
    except InvalidIncomingError as exc:  # e.g. blank ids, or a dedupe key too long to store
        raise BadRequest(str(exc)) from None
