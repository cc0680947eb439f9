"""Shape-based masking in ``bot.logs`` (``mask_url_secrets``): whatever token a Discord webhook or
interaction URL, a Slack response_url or a payload's ``token``/``response_url`` field carries, no
line of either format shows it (in the message, in its arguments, in a traceback, from any
logger), and the rest of the line stays readable."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.logs import MASK, JsonFormatter, TextFormatter, mask_url_secrets

# Real ones are long base64-like strings; "tk"/"sk" keep a token from being a piece of an id.
TOKENS = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.",
    min_size=10,
    max_size=120,
).map(lambda t: f"tk{t}x")
SLACK_SECRETS = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=10
).map(lambda t: f"sk{t}")
IDS = st.integers(min_value=10**15, max_value=10**19)
HOSTS = st.sampled_from(
    ["https://discord.com/api/v10", "http://127.0.0.1:41234/api/v10", "https://proxy.example"]
)


def carriers(token: str, number: int, host: str) -> list[str]:
    """Every shape a Discord interaction token reaches a log line in."""
    return [
        f"POST {host}/webhooks/{number}/{token}/messages/@original with None has returned 200",
        f"PATCH {host}/webhooks/{number}/{token} has received {{}}",
        f"POST {host}/interactions/{number}/{token}/callback with x has returned 204",
        f"Webhook ID {number} with POST {host}/webhooks/{number}/{token}?wait=1 has returned 200",
        "For Shard ID None: WebSocket Event: "
        + str({"t": "INTERACTION_CREATE", "d": {"token": token, "id": str(number)}}),
        json.dumps({"id": str(number), "token": token}),
        "got " + quote(f"{host}/webhooks/{number}/{token}", safe=""),
    ]


def slack_carriers(secret: str, team: str, hook: int) -> list[str]:
    url = f"https://hooks.slack.com/commands/{team}/{hook}/{secret}"
    return [
        f"Sending a request - url: {url}, body: {{}}",
        f"Sending a request - url: http://127.0.0.1:5000/actions/{team}/{hook}/{secret}, body",
        urlencode({"command": "/solar", "response_url": url, "token": secret}),
        str({"response_url": url, "text": "hi"}),
        f"incoming webhook https://hooks.slack.com/services/{team}/B0{hook}/{secret} failed",
    ]


@given(token=TOKENS, number=IDS, host=HOSTS)
def test_discord_interaction_tokens_are_masked_in_every_shape(
    token: str, number: int, host: str
) -> None:
    for line in carriers(token, number, host):
        masked = mask_url_secrets(line)
        assert token not in masked, line
        assert MASK in masked


@given(secret=SLACK_SECRETS, team=st.from_regex(r"T[A-Z0-9]{8,10}", fullmatch=True), hook=IDS)
def test_slack_response_urls_are_masked_in_every_shape(secret: str, team: str, hook: int) -> None:
    for line in slack_carriers(secret, team, hook):
        masked = mask_url_secrets(line)
        assert secret not in masked, line
        assert MASK in masked


def test_what_is_no_secret_stays_as_it_was() -> None:
    for line in (
        "POST https://discord.com/api/v10/channels/100/messages with None has returned 200",
        "job 7 done (attempt 1): 81 prompt tokens, 30 tokens in 13 ms by fake",
        "tokenizer loaded; next_token=5; the commands are /solar help",
        "GET https://cdn.discordapp.com/attachments/1/2/file.txt?ex=1",
    ):
        assert mask_url_secrets(line) == line


Format = Callable[[], logging.Formatter]


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
@given(token=TOKENS, number=IDS)
def test_both_formats_mask_arguments_tracebacks_and_other_libraries_lines(
    formatter: Format, token: str, number: int
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter())
    logger = logging.getLogger("discord.http.masking-test")  # a third-party logger
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    url = f"https://discord.com/api/v10/webhooks/{number}/{token}/messages/@original"
    try:
        logger.debug("%s %s with %s has returned %s", "PATCH", url, {"token": token}, 200)
        try:
            raise ConnectionError(f"Cannot connect to {url}")
        except ConnectionError:
            logger.exception("request failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert token not in output
    assert f"/webhooks/{number}/{MASK}" in output and "ConnectionError" in output
