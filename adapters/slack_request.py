"""The guard in front of bolt on Slack's public HTTP endpoint.

bolt parses a request's body (JSON or form) *before* it checks the signature, and its verifier
calls ``int()`` on the timestamp header: a non-JSON body, a non-numeric timestamp or one too long
for ``int()`` raised, and every such unauthenticated request got a 500 and an ERROR traceback. Here
the timestamp is checked first (digits only, within five minutes), then the signature over the raw
bytes, and only then is the body decoded and parsed: unauthenticated junk gets 401 and a signed
body that is no Slack payload 400, each without a traceback and before anything is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.request.internals import parse_body

MAX_CLOCK_SKEW_SECONDS = 5 * 60  # Slack's own rule (and bolt's)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True, kw_only=True)
class Refused:
    """What to answer a request refused before bolt sees it."""

    status: int
    error: str

    def body(self) -> str:
        return json.dumps({"error": self.error})


UNSIGNED = Refused(status=401, error="invalid request")


def signature_of(body: bytes, *, timestamp: str, secret: str) -> str:
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verified(
    body: bytes,
    headers: Mapping[str, str],
    *,
    secret: str,
    clock: Callable[[], float] = time.time,
) -> Refused | None:
    """None when ``body`` is signed with ``secret`` by a fresh timestamp, else why not (401)."""
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    if not _TIMESTAMP.fullmatch(timestamp):
        return UNSIGNED
    if abs(clock() - int(timestamp)) > MAX_CLOCK_SKEW_SECONDS:
        return UNSIGNED
    signature = headers.get("X-Slack-Signature", "").encode("utf-8", "replace")
    expected = signature_of(body, timestamp=timestamp, secret=secret).encode()
    if not hmac.compare_digest(expected, signature):
        return UNSIGNED
    return None


def bolt_request(
    body: bytes, *, query: str, headers: Mapping[str, str]
) -> AsyncBoltRequest | Refused:
    """A verified body as bolt's request, or 400 when it is no Slack payload (not UTF-8, not a
    JSON object, nested too deep) instead of bolt's exception."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Refused(status=400, error="the body is not UTF-8")
    content_type = headers.get("Content-Type", "").split(";")[0].strip() or None
    try:
        parsed = parse_body(text, content_type)
    except (ValueError, RecursionError):
        return Refused(status=400, error="the body is not a Slack payload")
    if not isinstance(parsed, dict):
        return Refused(status=400, error="the body is not a Slack payload")
    if not _actions_routable(parsed):
        return Refused(status=400, error="the body is not a Slack payload")
    try:
        return AsyncBoltRequest(body=text, query=query, headers=dict(headers))
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        # bolt reads ids out of the payload while building its context (``team``, ``user`` ...)
        return Refused(status=400, error="the body is not a Slack payload")


def _actions_routable(parsed: dict[str, object]) -> bool:
    """A button click (``block_actions``) names its actions as bolt reads them when it routes
    the click (a list of objects with a string ``action_id``); a form body carries it as JSON."""
    payload: object = parsed
    if isinstance(parsed.get("payload"), str):
        try:
            payload = json.loads(str(parsed["payload"]))
        except (ValueError, RecursionError):
            return False
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return True
    actions = payload.get("actions")
    return isinstance(actions, list) and all(
        isinstance(action, dict) and isinstance(action.get("action_id"), str) for action in actions
    )
