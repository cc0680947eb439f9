"""``/ask`` with a file (option ``file``, type 11 ATTACHMENT), end to end: the real discord.py
client against tests/support/discord_fake.py, which sends the attachment in the interaction's
``data.resolved.attachments`` as Discord does and serves it from its CDN. The file goes through
the path of a message's files: read into the prompt within the budget, one polite line when it
cannot be read, stored with the turn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from adapters.attachment_download import AttachmentOptions
from adapters.discord import DiscordAdapter, DiscordOptions
from bot import texts
from bot.generation.fake import FakeEngine
from bot.records import AttachmentProblem, ConversationKey, JobStatus
from storage.repository import Repository
from tests.support.discord_fake import ATTACHMENT_OPTION, BOT_ID, FakeDiscord, Json, Upload
from tests.support.discord_rig import FAST, GENERAL, GUILD, MENTION, RANDOM, Rig, home_discord
from tests.support.rig import quick_worker_options

MAX_BYTES = 4096
BUDGET = 500


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with home_discord(monkeypatch, elsewhere=False) as fake:
        yield fake


async def start(
    fake: FakeDiscord, url: str, *, read_files: bool = True, channels: frozenset[int] = frozenset()
) -> Rig:
    files = AttachmentOptions(max_bytes=MAX_BYTES, timeout_seconds=30.0) if read_files else None
    options = DiscordOptions(token=fake.token, attachments=files, allowed_channels=channels, **FAST)
    return await Rig.start(
        DiscordAdapter(options),
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


def options_of(command: Json) -> dict[str, Json]:
    return {option["name"]: option for option in command.get("options", [])}


async def answered(rig: Rig, payload: Json) -> list[str]:
    """The interaction's response messages once its job is done."""
    interaction_id = int(payload["id"])

    def done() -> bool:
        job = next(
            (j for j in rig.repository.jobs() if j.dedupe_key.endswith(str(interaction_id))), None
        )
        return job is not None and job.status is JobStatus.DONE

    await rig.until(done)
    return [m["content"] for m in rig.fake.interaction_messages(interaction_id)]


def general() -> ConversationKey:
    return ConversationKey(platform="discord", workspace=str(GUILD), channel=str(GENERAL))


async def test_the_file_option_is_registered_as_an_optional_attachment(rig: Rig) -> None:
    option = options_of(rig.fake.registered("ask"))["file"]
    assert option["type"] == ATTACHMENT_OPTION and not option.get("required")
    assert option["description"] == texts.DISCORD_ASK_FILE


async def test_a_text_file_is_read_into_the_prompt_and_stored_with_the_question(rig: Rig) -> None:
    log = b"2026-12-02 ERROR agent: cannot bind :8080 (address in use)\n"
    payload = await rig.fake.slash(
        GENERAL, "ask", question="why does it fail?", file=Upload("agent.log", "text/plain", log)
    )
    assert await answered(rig, payload) == ["Answer."]
    prompt = rig.engine.prompts[-1]
    assert "[file: agent.log]\n" + log.decode() in prompt
    assert "why does it fail?\n[attachment: agent.log (text/plain)]" in prompt
    question = rig.repository.messages(general())[0]
    assert [(a.name, a.problem, a.text) for a in question.attachments] == [
        ("agent.log", None, log.decode())
    ]
    assert all("Authorization" not in headers for _, headers in rig.fake.cdn_requests)

    # A later question (a mention) sees the file in its history.
    await rig.fake.user_message(GENERAL, f"{MENTION} and the port?", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(2))
    assert "cannot bind :8080" in rig.engine.prompts[-1]


async def test_files_that_cannot_be_read_get_a_polite_line_and_the_question_is_answered(
    rig: Rig,
) -> None:
    """Too big by the size Discord states (never downloaded), too big while downloading, an
    image, a failed download: one line each at the top of the answer, each stored with its
    problem."""
    cases = [
        (Upload("big.log", "text/plain", b"x", declared_size=MAX_BYTES + 1), "TOO_BIG", 0),
        (Upload("liar.log", "text/plain", b"y" * (MAX_BYTES + 1), declared_size=10), "TOO_BIG", 1),
        (Upload("shot.png", "image/png", b"\x89PNG\r\n"), "BINARY", 0),
        (Upload("gone.txt", "text/plain", b"", status=404), "DOWNLOAD_FAILED", 1),
    ]
    lines = {
        "TOO_BIG": texts.ATTACHMENT_TOO_BIG,
        "BINARY": texts.ATTACHMENT_BINARY,
        "DOWNLOAD_FAILED": texts.ATTACHMENT_DOWNLOAD_FAILED,
    }
    for number, (upload, problem, downloads) in enumerate(cases, start=1):
        asked = len(rig.fake.cdn_requests)
        payload = await rig.fake.slash(GENERAL, "ask", question=f"q{number}", file=upload)
        line = lines[problem].format(name=f"`{upload.name}`")
        assert await answered(rig, payload) == [f"{line}\n\nAnswer."]
        assert len(rig.fake.cdn_requests) - asked == downloads
        stored = rig.repository.messages(general())[-2]  # the question, then its answer
        assert [(a.name, a.problem) for a in stored.attachments] == [
            (upload.name, AttachmentProblem[problem])
        ]


async def test_a_slow_file_holds_up_only_its_own_channel(rig: Rig) -> None:
    hold = asyncio.Event()
    slow = Upload("slow.txt", "text/plain", b"slow body\n", hold=hold)
    first = await rig.fake.slash(GENERAL, "ask", question="first", file=slow)
    await rig.until(lambda: len(rig.fake.cdn_requests) == 1)
    second = await rig.fake.slash(GENERAL, "ask", question="second")
    elsewhere = await rig.fake.slash(RANDOM, "ask", question="elsewhere")
    assert await answered(rig, elsewhere) == ["Answer."]
    assert rig.repository.messages(general()) == [] and not hold.is_set()
    hold.set()
    assert await answered(rig, first) == ["Answer."]
    assert await answered(rig, second) == ["Answer."]
    users = [m.text for m in rig.repository.messages(general()) if m.role.value == "user"]
    assert users == ["first\n[attachment: slow.txt (text/plain)]", "second"]


async def test_without_reading_files_ask_has_no_file_option(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start(fake, sqlite_url, read_files=False)
    try:
        assert "file" not in options_of(fake.registered("ask"))
        with pytest.raises(AssertionError, match="no option 'file'"):
            await fake.slash(GENERAL, "ask", question="q", file=Upload("a.txt", "text/plain", b""))
    finally:
        await rig.stop()
        rig.repository.close()


async def test_outside_the_allow_lists_the_file_is_never_fetched(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start(fake, sqlite_url, channels=frozenset({GENERAL}))
    try:
        upload = Upload("notes.txt", "text/plain", b"internal notes")
        payload = await fake.slash(RANDOM, "ask", question="read this", file=upload)
        interaction_id = int(payload["id"])

        def refused() -> list[str]:
            return [m["content"] for m in fake.interaction_messages(interaction_id)]

        await rig.until(lambda: refused() == [texts.DISCORD_NOT_HERE])
        assert fake.cdn_requests == [] and rig.repository.jobs() == []
    finally:
        await rig.stop()
        rig.repository.close()
