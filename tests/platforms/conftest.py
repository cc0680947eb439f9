"""Fixtures the platform tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.slack_fake import FakeSlack


@pytest.fixture
async def slack_fake() -> AsyncIterator[FakeSlack]:
    """The local fake Slack Web API (tests/support/slack_fake.py), started on loopback."""
    slack = FakeSlack()
    await slack.start()
    yield slack
    await slack.stop()
