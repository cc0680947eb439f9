"""What the database can store, checked at the edge before anything reaches it.

The limits are the column sizes of ``storage/schema.py`` (``tests/platforms/test_hostile_input.py`` holds
them equal). Text must also be valid Unicode that both databases keep alike: PostgreSQL refuses
NUL characters in text and neither database can encode a lone surrogate, so such input is refused
as malformed on every database instead of failing with a 500 on one of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from bot.errors import InvalidIncomingError

# Characters of an Incoming field -> the column that stores it.
FIELD_LIMITS: Mapping[str, int] = {
    "platform": 32,  # conversations.platform
    "workspace": 128,  # conversations.workspace
    "channel": 128,  # conversations.channel
    "thread": 128,  # conversations.thread
    "author_id": 128,  # messages.author_id
    "author_name": 256,  # messages.author_name
    "message_id": 128,  # messages.platform_message_id
    "dedupe_key": 255,  # jobs.dedupe_key
}
# message_attachments.name / .media_type
ATTACHMENT_NAME_CHARS = 256
ATTACHMENT_MEDIA_TYPE_CHARS = 128
# jobs.reply_target is JSON (no size limit of its own): bounded so one request cannot bloat a row.
REPLY_TARGET_ENTRIES = 32
REPLY_TARGET_KEY_CHARS = 128
REPLY_TARGET_VALUE_CHARS = 4096

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text alike on SQLite and PostgreSQL, or None."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character"
    return "contains a lone surrogate (not valid Unicode)"


def check_storable(
    fields: Mapping[str, str], *, text: str, reply_target: Mapping[str, str]
) -> None:
    """Raise InvalidIncomingError naming the first field that cannot be stored as it is."""
    for name, value in fields.items():
        limit = FIELD_LIMITS.get(name)
        if limit is not None and len(value) > limit:
            raise InvalidIncomingError(f"{name} is longer than {limit} characters")
        problem = text_problem(value)
        if problem is not None:
            raise InvalidIncomingError(f"{name} {problem}")
    problem = text_problem(text)
    if problem is not None:
        raise InvalidIncomingError(f"text {problem}")
    if len(reply_target) > REPLY_TARGET_ENTRIES:
        raise InvalidIncomingError(f"reply_target has more than {REPLY_TARGET_ENTRIES} entries")
    for key, value in reply_target.items():
        if len(key) > REPLY_TARGET_KEY_CHARS or len(value) > REPLY_TARGET_VALUE_CHARS:
            raise InvalidIncomingError(
                f"reply_target: keys up to {REPLY_TARGET_KEY_CHARS} and values up to "
                f"{REPLY_TARGET_VALUE_CHARS} characters"
            )
        problem = text_problem(key) or text_problem(value)
        if problem is not None:
            raise InvalidIncomingError(f"reply_target {problem}")


def check_attachment_storable(name: str, media_type: str, text: str) -> None:
    """Raise InvalidIncomingError when an attached file's record cannot be stored as it is."""
    if len(name) > ATTACHMENT_NAME_CHARS:
        raise InvalidIncomingError(
            f"attachment name is longer than {ATTACHMENT_NAME_CHARS} characters"
        )
    if len(media_type) > ATTACHMENT_MEDIA_TYPE_CHARS:
        raise InvalidIncomingError(
            f"attachment media type is longer than {ATTACHMENT_MEDIA_TYPE_CHARS} characters"
        )
    for what, value in (("name", name), ("media type", media_type), ("text", text)):
        problem = text_problem(value)
        if problem is not None:
            raise InvalidIncomingError(f"attachment {what} {problem}")
