"""Dedupe keys: the one way every adapter names an event, so a redelivery is recognised.

A key is its components (platform, workspace, channel, message id, …) joined with ``:``, each
component percent-encoded first (``%`` -> ``%25``, ``:`` -> ``%3A``): an encoded component never
contains ``:``, so the key splits back into exactly the components it was made of, and two
different component tuples can never give the same key (``a:b`` + ``c`` and ``a`` + ``b:c`` once
collided). Components without ``%`` or ``:`` (every Discord and Slack id) are unchanged, so keys
stored by earlier versions for them stay valid; migration 0007 re-encodes the stored keys of
events whose components had either character.

A key longer than the column (``KEY_LIMIT``) becomes ``%h`` + the SHA-256 of the encoded key:
no encoded key starts with ``%h`` (an encoded ``%`` is always followed by ``25`` or ``3A``), so a
hashed key never equals an encoded one.
"""

from __future__ import annotations

import hashlib

KEY_LIMIT = 255  # jobs.dedupe_key is VARCHAR(255)
HASHED_PREFIX = "%h"


def dedupe_key(*components: str) -> str:
    """The key of the event named by ``components`` (at least one)."""
    if not components:
        raise ValueError("a dedupe key needs at least one component")
    key = ":".join(_encode(component) for component in components)
    if len(key) <= KEY_LIMIT:
        return key
    return HASHED_PREFIX + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _encode(component: str) -> str:
    return component.replace("%", "%25").replace(":", "%3A")
