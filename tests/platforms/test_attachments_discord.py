"""Files attached to Discord questions, end to end: the real discord.py client against the local
fake Discord, whose CDN serves each attachment at its URL (no token: the bot's token never leaves
for the CDN). The fake engine's prompt holds the files' text within the budget, the reply has one
polite line per file that could not be read, and the stored turn keeps every file."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.attachment_download import AttachmentOptions
from adapters.discord import DiscordAdapter, DiscordOptions
from bot import texts
from bot.attachments import FILE_CUT_MARKER
from bot.generation.fake import FakeEngine
from bot.records import AttachmentProblem, ConversationKey
from storage.repository import Repository
from tests.support.attachment_files import BINARY, broken_pdf, make_pdf
from tests.support.discord_fake import BOT_ID, FakeDiscord, Upload
from tests.support.discord_rig import FAST, GENERAL, GUILD, MENTION, Rig
from tests.support.rig import quick_worker_options

BUDGET = 500  # attachment tokens per message (the fake engine's tokenizer: one per character)
MAX_BYTES = 4096
LONG_CSV = "".join(f"{n},host-{n}.internal,timeout\n" for n in range(100))


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    fake.add_guild(GUILD, "home")
    fake.add_channel(GUILD, GENERAL, "general")
    await fake.start()
    fake.point_discord_py_here(monkeypatch)
    yield fake
    await fake.close()


async def start(fake: FakeDiscord, url: str, *, read_files: bool = True) -> Rig:
    files = AttachmentOptions(max_bytes=MAX_BYTES, timeout_seconds=5.0) if read_files else None
    return await Rig.start(
        DiscordAdapter(DiscordOptions(token=fake.token, attachments=files, **FAST)),
        repository=Repository.open(url),
        engine=FakeEngine(script=lambda prompt: "Answer."),
        options=quick_worker_options(attachment_tokens=BUDGET),
        fake=fake,
    )


@pytest.fixture
async def rig(fake: FakeDiscord, sqlite_url: str) -> AsyncIterator[Rig]:
    rig = await start(fake, sqlite_url)
    yield rig
    await rig.stop()
    rig.repository.close()


def file_block(prompt: str) -> str:
    start = prompt.index("[file: ")
    last = prompt.rindex("[end of file: ")
    return prompt[start : prompt.index("]", last) + 1]


async def test_attachments_are_read_within_the_budget_and_the_rest_is_said(rig: Rig) -> None:
    pdf = make_pdf([["Restart the agent with: agentctl restart"], ["Logs are in /var/log."]])
    await rig.fake.user_message(
        GENERAL,
        f"{MENTION} how do I fix this?",
        mentions=(BOT_ID,),
        uploads=(
            Upload("error.txt", "text/plain; charset=utf-8", b"ERROR: agent stopped (code 7)\n"),
            Upload("howto.pdf", "application/pdf", pdf),
            Upload("hosts.csv", "text/csv", LONG_CSV.encode()),
            Upload("core.dump", "application/octet-stream", BINARY),
            Upload("big.log", "text/plain", b"y" * 100, declared_size=MAX_BYTES + 1),
            Upload("liar.log", "text/plain", b"z" * (MAX_BYTES + 1), declared_size=10),
            Upload("gone.txt", "text/plain", b"", status=404),
            Upload("broken.pdf", "application/pdf", broken_pdf()),
        ),
    )
    await rig.until(lambda: rig.jobs_done(1))

    prompt = rig.engine.prompts[-1]
    block = file_block(prompt)
    assert len(block) <= BUDGET  # one token per character
    assert "[file: error.txt]\nERROR: agent stopped (code 7)\n\n[end of file: error.txt]" in block
    assert "agentctl restart" in block and "Logs are in /var/log." in block
    csv_part = block[block.index("[file: hosts.csv]") :]
    assert csv_part.startswith("[file: hosts.csv]\n0,host-0.internal,timeout\n")
    assert FILE_CUT_MARKER in csv_part
    # Discord's own note of each attachment stays in the question's text.
    assert "[attachment: howto.pdf (application/pdf)]" in prompt

    expected = [
        texts.ATTACHMENT_CUT.format(name="`hosts.csv`"),
        texts.ATTACHMENT_BINARY.format(name="`core.dump`"),
        texts.ATTACHMENT_TOO_BIG.format(name="`big.log`"),
        texts.ATTACHMENT_TOO_BIG.format(name="`liar.log`"),
        texts.ATTACHMENT_DOWNLOAD_FAILED.format(name="`gone.txt`"),
        texts.ATTACHMENT_UNREADABLE.format(name="`broken.pdf`"),
    ]
    assert rig.replies(GENERAL) == ["\n".join(expected) + "\n\nAnswer."]

    # The CDN never saw the bot's token; the file declared too big was never asked for.
    asked = sorted(path.rsplit("/", 1)[-1] for path, _ in rig.fake.cdn_requests)
    assert asked == sorted(
        ["error.txt", "howto.pdf", "hosts.csv", "core.dump", "liar.log", "gone.txt", "broken.pdf"]
    )
    assert all("Authorization" not in headers for _, headers in rig.fake.cdn_requests)

    key = ConversationKey(platform="discord", workspace=str(GUILD), channel=str(GENERAL))
    question = rig.repository.messages(key)[0]
    assert [(a.name, a.problem) for a in question.attachments] == [
        ("error.txt", None),
        ("howto.pdf", None),
        ("hosts.csv", None),
        ("core.dump", AttachmentProblem.BINARY),
        ("big.log", AttachmentProblem.TOO_BIG),
        ("liar.log", AttachmentProblem.TOO_BIG),
        ("gone.txt", AttachmentProblem.DOWNLOAD_FAILED),
        ("broken.pdf", AttachmentProblem.UNREADABLE),
    ]
    assert question.attachments[2].text == LONG_CSV

    # A follow-up (a reply to the bot) sees the files in its history.
    [answer_id] = rig.fake.created
    await rig.fake.user_message(GENERAL, "and the log folder?", reply_to=answer_id)
    await rig.until(lambda: rig.jobs_done(2))
    follow_up = rig.engine.prompts[-1]
    assert "[file: howto.pdf]" in follow_up and "Logs are in /var/log." in follow_up
    assert rig.replies(GENERAL)[-1] == "Answer."


async def test_without_the_files_option_nothing_is_downloaded(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start(fake, sqlite_url, read_files=False)
    try:
        await fake.user_message(
            GENERAL,
            f"{MENTION} read this",
            mentions=(BOT_ID,),
            uploads=(Upload("notes.txt", "text/plain", b"secret"),),
        )
        await rig.until(lambda: rig.jobs_done(1))
        assert fake.cdn_requests == [] and "[file:" not in rig.engine.prompts[-1]
        assert rig.replies(GENERAL) == ["Answer."]
    finally:
        await rig.stop()
        rig.repository.close()
