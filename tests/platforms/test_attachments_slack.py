"""Files attached to Slack questions, end to end: the real slack-bolt app and the real Service
against the local fake Slack, which serves each file at its ``url_private`` only to the bot token.
The fake engine's prompt holds the files' text within the budget, the reply has one polite line
per file that could not be read, and the stored turn (and its export) keeps every file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from io import StringIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from adapters.attachment_download import AttachmentOptions
from adapters.slack_format import to_mrkdwn
from bot import texts
from bot.attachments import FILE_CUT_MARKER
from bot.generation.fake import FakeEngine
from bot.records import AttachmentProblem, ConversationKey
from bot.tools import data
from tests.support.attachment_files import BINARY, LoopbackFiles, broken_pdf, make_pdf
from tests.support.slack_fake import BOT_TOKEN, TEAM, FakeSlack
from tests.support.slack_rig import Rig, mention, start_rig

BUDGET = 600  # attachment tokens per message (the fake engine's tokenizer: one per character)
MAX_BYTES = 4096
LONG_LOG = "".join(f"2026-12-02T10:{n:02d} worker retrying: disk full\n" for n in range(80))


@pytest.fixture
def fake(slack_fake: FakeSlack) -> FakeSlack:
    return slack_fake


@pytest.fixture
async def rig(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[Rig]:
    async with start_rig(
        tmp_path,
        fake,
        engine=FakeEngine(script=lambda prompt: "Answer."),
        environ={"SOLARBOT_ATTACHMENT_TOKEN_BUDGET": str(BUDGET)},
        attachments=AttachmentOptions(max_bytes=MAX_BYTES, timeout_seconds=5.0),
    ) as value:
        yield value


def file_block(prompt: str) -> str:
    """The files' part of the newest question in a prompt."""
    start = prompt.index("[file: ")
    last = prompt.rindex("[end of file: ")
    return prompt[start : prompt.index("]", last) + 1]


def thread_texts(fake: FakeSlack, ts: str) -> list[str]:
    return [message.text for message in fake.thread("C0GENERAL", ts)]


async def test_files_on_a_mention_are_read_within_the_budget_and_the_rest_is_said(
    rig: Rig, fake: FakeSlack
) -> None:
    elsewhere = LoopbackFiles()
    await elsewhere.start()
    try:
        outside = elsewhere.serve("/notes.txt", b"must never be fetched with the token")
        files: list[dict[str, Any]] = [
            fake.add_file("notes.txt", b"port: 8080\nhost: db.internal\n"),
            fake.add_file(
                "guide.pdf",
                make_pdf([["Error E42 means the disk is full."]]),
                mimetype="application/pdf",
            ),
            fake.add_file("long.log", LONG_LOG.encode()),
            fake.add_file("huge.log", b"x" * (MAX_BYTES + 1)),
            fake.add_file("dump.dat", BINARY, mimetype="application/octet-stream"),
            fake.add_file("gone.txt", b"", status=404),
            fake.add_file("broken.pdf", broken_pdf(), mimetype="application/pdf"),
            fake.add_file("shot.png", b"\x89PNG", mimetype="image/png"),
            {**fake.add_file("external.txt", b""), "url_private": outside},
        ]
        files[-1].pop("url_private_download")
        event = {**mention("what do these files say?", ts="1700000001.000100"), "files": files}
        assert await rig.event(event) == 200
        await rig.until(lambda: rig.jobs_done(1))
    finally:
        await elsewhere.stop()

    # The prompt: the question, then the readable files within the budget (long.log cut).
    prompt = rig.engine.prompts[-1]
    assert "Alice: what do these files say?\n\n[file: notes.txt]" in prompt
    block = file_block(prompt)
    assert len(block) <= BUDGET  # one token per character
    assert "[file: notes.txt]\nport: 8080\nhost: db.internal\n\n[end of file: notes.txt]" in block
    assert "Error E42 means the disk is full." in block
    long_part = block[block.index("[file: long.log]") :]
    assert long_part.startswith("[file: long.log]\n" + LONG_LOG[:200])
    assert FILE_CUT_MARKER in long_part and LONG_LOG not in block
    for unread in ("huge.log", "dump.dat", "gone.txt", "broken.pdf", "shot.png", "external.txt"):
        assert f"[file: {unread}]" not in prompt

    # The reply: one polite line per file, then the answer.
    expected = [
        texts.ATTACHMENT_CUT.format(name="`long.log`"),
        texts.ATTACHMENT_TOO_BIG.format(name="`huge.log`"),
        texts.ATTACHMENT_BINARY.format(name="`dump.dat`"),
        texts.ATTACHMENT_DOWNLOAD_FAILED.format(name="`gone.txt`"),
        texts.ATTACHMENT_UNREADABLE.format(name="`broken.pdf`"),
        texts.ATTACHMENT_BINARY.format(name="`shot.png`"),
        texts.ATTACHMENT_DOWNLOAD_FAILED.format(name="`external.txt`"),
    ]
    [reply] = thread_texts(fake, "1700000001.000100")
    assert reply == to_mrkdwn("\n".join(expected) + "\n\nAnswer.")

    # The token went to the file host only, never for a file known too big or an image.
    asked = [request.path.rsplit("/", 1)[-1] for request in fake.file_requests]
    assert sorted(asked) == sorted(
        ["notes.txt", "guide.pdf", "long.log", "dump.dat", "gone.txt", "broken.pdf"]
    )
    assert {request.authorization for request in fake.file_requests} == {f"Bearer {BOT_TOKEN}"}
    assert elsewhere.requests == []

    # The stored turn keeps every file (name, and text or why none); so does the export.
    key = ConversationKey(
        platform="slack", workspace=TEAM, channel="C0GENERAL", thread="1700000001.000100"
    )
    question = rig.repository.messages(key)[0]
    assert [(a.name, a.problem) for a in question.attachments] == [
        ("notes.txt", None),
        ("guide.pdf", None),
        ("long.log", None),
        ("huge.log", AttachmentProblem.TOO_BIG),
        ("dump.dat", AttachmentProblem.BINARY),
        ("gone.txt", AttachmentProblem.DOWNLOAD_FAILED),
        ("broken.pdf", AttachmentProblem.UNREADABLE),
        ("shot.png", AttachmentProblem.BINARY),
        ("external.txt", AttachmentProblem.DOWNLOAD_FAILED),
    ]
    assert question.attachments[2].text == LONG_LOG  # stored whole; only the prompt is cut
    out = StringIO()
    data.export_channel(
        rig.repository, SimpleNamespace(platform="slack", workspace=TEAM, channel="C0GENERAL"), out
    )
    exported = json.loads(out.getvalue().splitlines()[0])
    assert exported["attachments"][0] == {
        "name": "notes.txt",
        "media_type": "text/plain",
        "size": 29,
        "text": "port: 8080\nhost: db.internal\n",
        "problem": None,
    }
    assert "Error E42" in exported["attachments"][1]["text"]

    # A follow-up in the thread sees the files in its history; its reply has no file lines.
    follow_up = mention("and which port?", ts="1700000001.000200", thread_ts="1700000001.000100")
    assert await rig.event(follow_up) == 200
    await rig.until(lambda: rig.jobs_done(2))
    prompt = rig.engine.prompts[-1]
    assert "[file: notes.txt]\nport: 8080" in prompt and prompt.rstrip().endswith("### Assistant:")
    assert prompt.index("port: 8080") < prompt.index("Alice: and which port?")
    assert thread_texts(fake, "1700000001.000100")[-1] == "Answer."


async def test_a_dm_that_is_only_a_file_is_answered(rig: Rig, fake: FakeSlack) -> None:
    dm = {
        "type": "message",
        "subtype": "file_share",
        "channel_type": "im",
        "channel": "D0DM",
        "user": "U0ALICE",
        "text": "",
        "ts": "1700000002.000100",
        "files": [fake.add_file("report.csv", b"day,errors\nmon,3\ntue,0\n", mimetype="text/csv")],
    }
    assert await rig.event(dm) == 200
    await rig.until(lambda: rig.jobs_done(1))
    assert rig.stored("D0DM")[0] == ("user", texts.ATTACHMENT_ONLY_QUESTION)
    assert (
        "[file: report.csv]\nday,errors\nmon,3\ntue,0\n\n[end of file: report.csv]"
        in (rig.engine.prompts[-1])
    )
    [answer] = fake.thread("D0DM", None)
    assert answer.text == "Answer."


async def test_without_the_files_setting_nothing_is_downloaded(
    tmp_path: Path, fake: FakeSlack
) -> None:
    """The adapter reads files only when given ``attachments`` (SOLARBOT_ATTACHMENT_TOKEN_BUDGET=0
    gives none): the question is answered, no file is asked for."""
    async with start_rig(tmp_path, fake, engine=FakeEngine(script=lambda p: "Answer.")) as rig:
        event = {
            **mention("read this", ts="1700000003.000100"),
            "files": [fake.add_file("notes.txt", b"secret")],
        }
        assert await rig.event(event) == 200
        await rig.until(lambda: rig.jobs_done(1))
        assert fake.file_requests == [] and "[file:" not in rig.engine.prompts[-1]


def test_the_manifest_asks_for_files_read() -> None:
    manifest = yaml.safe_load(
        (Path(__file__).parents[2] / "docker/slack-manifest.yaml").read_text()
    )
    assert "files:read" in manifest["oauth_config"]["scopes"]["bot"]
