"""Discord application commands end to end: ``/ask`` and ``/solar`` registered through the real
discord.py command tree with the fake Discord (tests/support/discord_fake.py), INTERACTION_CREATE
in, the deferred callback and the interaction webhook's edits and follow-ups out, through the real
intake, SQLite queue and worker."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.discord import DiscordAdapter, DiscordOptions
from adapters.discord_commands import SUBCOMMANDS, available_subcommands
from bot import texts
from bot.commands import CommandName
from bot.errors import ConfigError
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.limits import Limits, LimitSettings
from bot.records import ConversationKey
from bot.service import discord_options
from bot.settings import load_settings
from storage.repository import Repository
from tests.support.db_faults import refusing_inserts
from tests.support.discord_fake import APP_ID, FakeDiscord, FakeInteraction
from tests.support.discord_rig import (
    ADMIN_ROLE,
    DM,
    FAST,
    GENERAL,
    GUILD,
    MEMBER_ROLE,
    RANDOM,
    THREAD,
    Rig,
    home_discord,
    start_rig,
)

EPHEMERAL = 64
DEFERRED = 5  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
OPTION_TYPES = {"sub_command": 1, "string": 3, "integer": 4, "boolean": 5}


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with home_discord(monkeypatch, elsewhere=False) as fake:
        yield fake


@pytest.fixture
async def rig(fake: FakeDiscord, sqlite_url: str) -> AsyncIterator[Rig]:
    rig = await start_rig(fake, sqlite_url, engine=FakeEngine(delay_per_chunk=0.005))
    yield rig
    await rig.stop()
    rig.repository.close()


def options_of(command: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {option["name"]: option for option in command.get("options", [])}


def interaction(fake: FakeDiscord, payload: dict[str, Any]) -> FakeInteraction:
    return fake.interactions[int(payload["id"])]


async def answered(rig: Rig, payload: dict[str, Any], *, within: float = 15.0) -> list[str]:
    """Wait until the interaction's original response is no longer "thinking…"; its messages."""
    record = interaction(rig.fake, payload)

    def done() -> bool:
        messages = rig.fake.interaction_messages(record.id)
        return bool(messages) and not int(messages[0]["flags"]) & 128

    await rig.until(done, within=within)
    return [m["content"] for m in rig.fake.interaction_messages(record.id)]


# ---------------------------------------------------------------------------- registration


def test_the_sub_command_table_covers_every_core_command() -> None:
    """A core command without a row would be missing from ``/solar``; a row the core lacks is
    not offered (so adding one to the core is all it takes to offer it)."""
    core = {name.value for name in CommandName} - {CommandName.ASK, CommandName.UNKNOWN}
    rows = {spec.name for spec in SUBCOMMANDS}
    assert core <= rows
    assert {spec.name for spec in available_subcommands()} == core
    assert all(len(spec.description) <= 100 for spec in SUBCOMMANDS)
    assert all(len(o.description) <= 100 for spec in SUBCOMMANDS for o in spec.options)


async def test_commands_are_registered_globally_with_typed_options_and_descriptions(
    rig: Rig,
) -> None:
    fake = rig.fake
    (put,) = fake.rest("PUT", r"/commands$")
    assert put.path == f"/applications/{APP_ID}/commands" and put.status == 200
    assert set(fake.commands) == {"global"}
    ask = fake.registered("ask")
    assert ask["description"] == texts.DISCORD_ASK_DESCRIPTION
    question, private = options_of(ask)["question"], options_of(ask)["private"]
    assert question["type"] == OPTION_TYPES["string"] and question["required"] is True
    assert question["description"] == texts.DISCORD_ASK_QUESTION
    assert private["type"] == OPTION_TYPES["boolean"] and not private.get("required")
    assert ask["contexts"] == [0]  # servers only: DMs are off

    solar = fake.registered("solar")
    subs = options_of(solar)
    assert set(subs) == {spec.name for spec in available_subcommands()}
    for spec in available_subcommands():
        sub = subs[spec.name]
        assert sub["type"] == OPTION_TYPES["sub_command"]
        assert sub["description"] == texts.DISCORD_SLASH[spec.name]
        assert [o["name"] for o in sub.get("options", [])] == [o.name for o in spec.options]
        for option in sub.get("options", []):
            assert option["description"] == texts.DISCORD_SLASH_OPTIONS[(spec.name, option["name"])]
            assert not option.get("required")
    length = options_of(subs["length"])
    assert length["characters"]["type"] == OPTION_TYPES["integer"]
    assert (length["characters"]["min_value"], length["characters"]["max_value"]) == (20, 100_000)
    assert length["reset"]["type"] == OPTION_TYPES["boolean"]
    prompt = options_of(subs["prompt"])["text"]
    assert prompt["type"] == OPTION_TYPES["string"] and prompt["max_length"] == 4000
    kb_mode = options_of(subs["kb"])["mode"]
    assert [c["value"] for c in kb_mode["choices"]] == ["strict", "assist"]


async def test_the_guild_setting_registers_in_that_guild_only(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start_rig(fake, sqlite_url, command_guild=GUILD, dms=True)
    try:
        (put,) = fake.rest("PUT", r"/commands$")
        assert put.path == f"/applications/{APP_ID}/guilds/{GUILD}/commands"
        assert set(fake.commands) == {str(GUILD)}
        assert fake.registered("ask", guild=GUILD)["guild_id"] == str(GUILD)
        payload = await fake.slash(GENERAL, "solar", "status")
        assert "**Model:**" in (await answered(rig, payload))[0]
    finally:
        await rig.stop()
        rig.repository.close()


def test_the_command_guild_setting_reaches_the_adapter() -> None:
    settings = load_settings(
        environ={"SOLARBOT_DISCORD_TOKEN": "abc.def", "SOLARBOT_DISCORD_COMMAND_GUILD": " 1234 "}
    )
    assert discord_options(settings, ingress=True, model_id="m").command_guild == 1234
    unset = load_settings(environ={"SOLARBOT_DISCORD_TOKEN": "abc.def"})
    assert discord_options(unset, ingress=True, model_id="m").command_guild is None


async def test_a_guild_the_bot_cannot_register_in_is_a_clear_start_up_error(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    fake.fail_next("PUT", rf"/guilds/{GUILD}/commands$", status=403)
    adapter = DiscordAdapter(DiscordOptions(token=fake.token, command_guild=GUILD, **FAST))
    repository = Repository.open(sqlite_url)
    try:
        with pytest.raises(ConfigError) as caught:
            await adapter.start(Intake(repository))
        assert str(caught.value).startswith("SOLARBOT_DISCORD_COMMAND_GUILD: ")
        assert fake.token not in str(caught.value)
    finally:
        await adapter.stop()
        repository.close()


# ---------------------------------------------------------------------------- /ask


async def test_ask_is_deferred_at_once_then_streamed_into_the_original_and_follow_ups(
    rig: Rig,
) -> None:
    answer = "word " * 500  # 2500 characters: the original and one follow-up
    rig.engine._replies = [answer.strip()]
    payload = await rig.fake.slash(GENERAL, "ask", question="what is SOLAR?")
    record = interaction(rig.fake, payload)
    await rig.until(lambda: rig.jobs_done(1))
    shown = await answered(rig, payload)

    assert record.callbacks == [{"type": DEFERRED}]  # public "thinking…", nothing else
    assert record.acknowledged_at is not None and record.acknowledged_at - record.sent_at < 3.0
    assert "".join(shown).split() == answer.split() and len(shown) == 2
    original, follow_up = rig.fake.interaction_messages(record.id)
    assert not int(original["flags"]) & EPHEMERAL and not int(follow_up["flags"]) & EPHEMERAL
    edits = rig.fake.edits[int(original["id"])]
    assert edits[0] == "" and edits[1] == texts.DISCORD_THINKING and len(edits) >= 3
    assert all(m["allowed_mentions"] == {"parse": []} for m in (original, follow_up))
    # Nothing went through the channel's own REST routes: only the interaction's webhook.
    assert rig.fake.rest("POST", rf"/channels/{GENERAL}/messages$") == []
    assert rig.fake.rest("PATCH", r"/messages/@original$")
    assert [c.path for c in rig.fake.rest("POST", r"^/webhooks/")] == [
        f"/webhooks/{APP_ID}/{record.token}"
    ]
    assert rig.stored(GENERAL) == [("user", "what is SOLAR?"), ("assistant", answer.strip())]
    assert rig.engine.prompts[0].endswith("### User:\nAna: what is SOLAR?\n\n### Assistant:\n")
    (job,) = rig.repository.jobs()
    assert job.dedupe_key == f"discord:interaction:{payload['id']}"
    assert job.reply_message_ids == (original["id"], follow_up["id"])


async def test_a_private_ask_is_ephemeral_from_the_callback_to_the_last_follow_up(
    rig: Rig,
) -> None:
    rig.engine._replies = ["secret " * 400]  # 2800 characters
    payload = await rig.fake.slash(THREAD, "ask", question="just for me", private=True)
    record = interaction(rig.fake, payload)
    await rig.until(lambda: rig.jobs_done(1))
    await answered(rig, payload)
    assert record.callbacks == [{"type": DEFERRED, "data": {"flags": EPHEMERAL}}]
    messages = rig.fake.interaction_messages(record.id)
    assert len(messages) == 2 and all(int(m["flags"]) & EPHEMERAL for m in messages)
    assert [c.body["flags"] & EPHEMERAL for c in rig.fake.rest("POST", r"^/webhooks/")] == [
        EPHEMERAL
    ]
    # A thread: its own history, its channel's settings.
    assert rig.stored(GENERAL, thread=THREAD)[0] == ("user", "just for me")


async def test_a_replayed_interaction_is_one_job_and_one_answer_even_across_processes(
    rig: Rig,
) -> None:
    """The same INTERACTION_CREATE delivered again to this process, and at the same time to a
    second process on the same database: one callback accepted, one job, one answer."""
    second = DiscordAdapter(DiscordOptions(token=rig.fake.token, **FAST))
    await second.start(Intake(rig.repository))
    try:
        await rig.until(lambda: rig.fake.connections == 2)
        rig.engine._replies = ["The one answer."]
        payload = await rig.fake.slash(GENERAL, "ask", question="once?")
        await rig.fake.dispatch_interaction(payload)
        await rig.fake.dispatch_interaction(payload)
        await rig.until(lambda: rig.jobs_done(1))
        assert await answered(rig, payload) == ["The one answer."]
        await asyncio.sleep(0.3)
        record = interaction(rig.fake, payload)
        assert len(record.callbacks) == 2  # one per process; Discord accepted the first only
        assert len(rig.repository.jobs()) == 1 and len(rig.engine.requests) == 1
        assert await answered(rig, payload) == ["The one answer."]
        assert rig.fake.rest("POST", r"^/webhooks/") == []  # no second answer
        assert rig.stored(GENERAL) == [("user", "once?"), ("assistant", "The one answer.")]

        # A sub-command reaches both processes too: one of them answers it, once.
        status = await rig.fake.slash(GENERAL, "solar", "status")
        assert "**Model:**" in (await answered(rig, status))[0]
        await asyncio.sleep(0.3)
        assert len(interaction(rig.fake, status).callbacks) == 2
        assert len(rig.fake.interaction_messages(int(status["id"]))) == 1
        assert rig.fake.rest("POST", r"^/webhooks/") == []
    finally:
        await second.stop()


@settings(
    max_examples=5,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    deliveries=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=12),
    private=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_any_interleaving_of_questions_and_replays_is_one_answer_per_question(
    deliveries: list[int], private: list[bool]
) -> None:
    """Up to four ``/ask`` questions, each delivered once and then replayed in any order: one
    job, one accepted callback and one answer (in the question's privacy) per question."""

    async def scenario(url: str) -> None:
        fake = FakeDiscord()
        fake.add_guild(GUILD, "home")
        fake.add_channel(GUILD, GENERAL, "general")
        await fake.start()
        with pytest.MonkeyPatch.context() as monkeypatch:
            fake.point_discord_py_here(monkeypatch)
            rig = await start_rig(fake, url)
            try:
                sent: dict[int, dict[str, Any]] = {}
                for number in deliveries:
                    if number in sent:
                        await fake.dispatch_interaction(sent[number])
                    else:
                        sent[number] = await fake.slash(
                            GENERAL, "ask", question=f"question {number}", private=private[number]
                        )
                await rig.until(lambda: rig.jobs_done(len(sent)))
                for number, payload in sent.items():
                    assert await answered(rig, payload) == [f"You said: Ana: question {number}"]
                    record = interaction(fake, payload)
                    assert record.callback_type == DEFERRED and record.ephemeral == private[number]
                await asyncio.sleep(0.1)
                assert len(rig.repository.jobs()) == len(sent) == len(rig.engine.requests)
                assert fake.rest("POST", r"^/webhooks/") == []  # no second answer anywhere
            finally:
                await rig.stop()
                rig.repository.close()
                await fake.close()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(scenario(f"sqlite:///{folder}/solarbot.db"))


async def test_outside_the_allow_lists_an_interaction_gets_a_private_refusal_and_nothing_stored(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start_rig(fake, sqlite_url, allowed_channels=frozenset({GENERAL}))
    try:
        for payload in (
            await fake.slash(RANDOM, "ask", question="hello?"),
            await fake.slash(RANDOM, "solar", "status"),
        ):
            record = interaction(fake, payload)
            await answered(rig, payload)  # the "thinking…" is replaced (not just shown)
            # Acknowledged at once, then told privately (a public "thinking…" is removed).
            assert record.callback_type == DEFERRED
            (notice,) = fake.interaction_messages(record.id)
            assert notice["content"] == texts.DISCORD_NOT_HERE
            assert int(notice["flags"]) & EPHEMERAL
        assert rig.repository.jobs() == []
    finally:
        await rig.stop()
        rig.repository.close()


# ---------------------------------------------------------------------------- /solar


async def solar(rig: Rig, sub: str, *, roles: tuple[int, ...] = (), **options: Any) -> str:
    payload = await rig.fake.slash(GENERAL, "solar", sub, roles=roles, **options)
    shown = await answered(rig, payload)
    record = interaction(rig.fake, payload)
    assert record.callbacks == [{"type": DEFERRED, "data": {"flags": EPHEMERAL}}]
    assert all(int(m["flags"]) & EPHEMERAL for m in rig.fake.interaction_messages(record.id))
    return "\n".join(shown)


async def test_solar_sub_commands_run_in_the_core_with_its_admin_checks(rig: Rig) -> None:
    status = await solar(rig, "status")
    assert "**Model:**" in status and "**Reply length:** no limit" in status
    assert "/solar" in await solar(rig, "help")
    refused = await solar(rig, "length", characters=500, roles=(MEMBER_ROLE,))
    assert refused == texts.COMMAND_ADMINS_ONLY.format(command="@solarbot", p="!", name="length")
    assert await solar(rig, "length", characters=500, roles=(ADMIN_ROLE,)) == (
        texts.COMMAND_LENGTH_SET.format(limit=500)
    )
    assert "at most 500 characters" in await solar(rig, "status")
    assert await solar(rig, "length", reset=True, roles=(ADMIN_ROLE,)) == (
        texts.COMMAND_LENGTH_RESET
    )
    assert await solar(rig, "language", name="German", roles=(ADMIN_ROLE,)) == (
        texts.COMMAND_LANGUAGE_SET.format(language="German")
    )
    assert "Be brief." in await solar(rig, "prompt", text="Be brief.", roles=(ADMIN_ROLE,))
    config = rig.repository.channel_config(
        platform="discord", workspace=str(GUILD), channel=str(GENERAL)
    )
    assert (config.language, config.system_prompt, config.max_reply_chars) == (
        "German",
        "Be brief.",
        None,
    )

    # Off: questions by /ask are refused privately and nothing is stored; an admin turns it on.
    assert await solar(rig, "off", roles=(ADMIN_ROLE,)) == texts.COMMAND_SWITCHED_OFF.format(
        command="@solarbot", p="!"
    )
    asked = await rig.fake.slash(GENERAL, "ask", question="anyone?")
    assert await answered(rig, asked) == [texts.CHANNEL_DISABLED]
    assert all(int(m["flags"]) & EPHEMERAL for m in rig.fake.interaction_messages(int(asked["id"])))
    assert await solar(rig, "status", roles=(MEMBER_ROLE,)) == texts.CHANNEL_DISABLED
    assert await solar(rig, "on", roles=(ADMIN_ROLE,)) == texts.COMMAND_SWITCHED_ON
    assert rig.repository.jobs() == []
    key = ConversationKey(platform="discord", workspace=str(GUILD), channel=str(GENERAL))
    assert rig.repository.messages(key) == []


async def test_a_replayed_sub_command_is_answered_once(rig: Rig) -> None:
    payload = await rig.fake.slash(GENERAL, "solar", "off", roles=(ADMIN_ROLE,))
    await rig.fake.dispatch_interaction(payload)
    await answered(rig, payload)
    await asyncio.sleep(0.2)
    record = interaction(rig.fake, payload)
    assert len(record.callbacks) == 1 and rig.fake.rest("POST", r"^/webhooks/") == []


# ---------------------------------------------------------------------------- handoff, expiry


async def test_asking_for_a_human_by_ask_pings_the_support_role_in_the_answer(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start_rig(
        fake, sqlite_url, handoff_keywords=("talk to a human",), support_role=ADMIN_ROLE
    )
    try:
        public = await fake.slash(GENERAL, "ask", question="I want to talk to a human")
        (notice,) = await answered(rig, public)
        assert notice.startswith(f"<@&{ADMIN_ROLE}> Someone here asked for a human")
        (message,) = fake.interaction_messages(int(public["id"]))
        assert [str(r) for r in message["allowed_mentions"]["roles"]] == [str(ADMIN_ROLE)]
        assert rig.engine.requests == []

        # Waiting for a human: a later /ask there is told so, privately, and nothing is stored.
        later = await fake.slash(GENERAL, "ask", question="hello?")
        assert await answered(rig, later) == [texts.HANDOFF_WAITING.format(command="/solar resume")]
        assert all(int(m["flags"]) & EPHEMERAL for m in fake.interaction_messages(int(later["id"])))
        assert rig.stored(GENERAL) == [("user", "I want to talk to a human")]

        # In a thread, privately: the answer is the asker's alone, so the role is pinged in the
        # thread itself.
        private = await fake.slash(THREAD, "ask", question="talk to a human!", private=True)
        (told,) = await answered(rig, private)
        assert told.startswith(f"<@&{ADMIN_ROLE}> ")
        await rig.until(lambda: len(rig.replies(THREAD)) == 1)
        (ping,) = fake.bot_messages(THREAD)
        assert ping["content"] == told
        assert [str(r) for r in ping["allowed_mentions"]["roles"]] == [str(ADMIN_ROLE)]

        assert "I'm back" in await solar(rig, "resume", roles=(MEMBER_ROLE,))
        again = await fake.slash(GENERAL, "ask", question="and now?")
        await rig.until(lambda: rig.jobs_done(1))
        assert await answered(rig, again) == ["You said: Ana: and now?"]
    finally:
        await rig.stop()
        rig.repository.close()


async def test_a_public_answer_whose_token_expired_in_the_queue_is_posted_in_the_channel(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    """Interaction tokens live 15 minutes: a question that waited longer behind others is still
    answered, in the channel; a private one cannot be and gets no public answer."""
    rig = await start_rig(fake, sqlite_url, engine=FakeEngine(delay_per_chunk=0.02))
    try:
        rig.engine._replies = [" ".join(f"w{n}" for n in range(60)), "Late but here.", "Nope."]
        first = await fake.slash(GENERAL, "ask", question="a long one")
        public = await fake.slash(GENERAL, "ask", question="and me?")
        private = await fake.slash(GENERAL, "ask", question="me too?", private=True)
        for payload in (public, private):
            await rig.until(lambda p=payload: interaction(fake, p).acknowledged_at is not None)  # type: ignore[misc]
            fake.expire_interaction(int(payload["id"]))
        await answered(rig, first)
        await rig.until(lambda: rig.replies(GENERAL) == ["Late but here."])
        (posted,) = fake.bot_messages(GENERAL)
        assert posted["allowed_mentions"] == {"parse": []}
        job = rig.repository.jobs()[1]
        assert job.reply_message_ids == (posted["id"],)
        # The private answer was never shown to anyone else.
        await asyncio.sleep(0.5)
        assert rig.replies(GENERAL) == ["Late but here."]
        assert "Nope." not in str([m["content"] for m in fake.messages.values()])
    finally:
        await rig.stop(drain=0.1)
        rig.repository.close()


async def test_a_refused_ask_is_told_to_the_asker_alone_and_never_twice(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    """Over the rate limit: the public "thinking…" goes away and only the asker is told, once
    per window; later refusals in the window leave nothing behind."""
    limits = Limits(LimitSettings(user_rate_per_minute=0.01, user_burst=1))
    rig = await start_rig(fake, sqlite_url, limits=limits)
    try:
        accepted = await fake.slash(GENERAL, "ask", question="one")
        await rig.until(lambda: rig.jobs_done(1))
        assert await answered(rig, accepted) == ["You said: Ana: one"]
        refused = await fake.slash(GENERAL, "ask", question="two")
        record = interaction(fake, refused)
        await rig.until(lambda: bool(record.followups))
        assert record.original in fake.deleted  # the public "thinking…" is gone
        (notice,) = fake.interaction_messages(record.id)
        assert (
            int(notice["flags"]) & EPHEMERAL and "faster than I can take them" in notice["content"]
        )
        quiet = await fake.slash(GENERAL, "ask", question="three")
        quiet_record = interaction(fake, quiet)
        await rig.until(lambda: quiet_record.original in fake.deleted)
        assert fake.interaction_messages(quiet_record.id) == []
        assert [t for _, t in rig.stored(GENERAL)] == ["one", "You said: Ana: one"]
    finally:
        await rig.stop()
        rig.repository.close()


async def test_a_waiting_ask_shows_its_queue_position_then_becomes_the_answer(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    engine = FakeEngine(delay_per_chunk=0.02, script=lambda p: "slow answer " * 15)
    rig = await start_rig(fake, sqlite_url, engine=engine, concurrency=1)
    try:
        await fake.slash(GENERAL, "ask", question="first")
        second = await fake.slash(RANDOM, "ask", question="second", private=True)
        await rig.until(lambda: rig.jobs_done(2))
        (original,) = fake.interaction_messages(int(second["id"]))
        shown = fake.edits[int(original["id"])]
        assert shown[1] == texts.DISCORD_QUEUED.format(position=1)  # after the empty "thinking…"
        assert (
            texts.DISCORD_THINKING in shown and shown[-1].strip() == ("slow answer " * 15).strip()
        )
        assert int(original["flags"]) & EPHEMERAL
        assert fake.rest("POST", r"/typing$") == []  # Discord shows "thinking…" itself
    finally:
        await rig.stop()
        rig.repository.close()


async def test_direct_messages_take_slash_commands_only_when_switched_on(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start_rig(fake, sqlite_url, dms=True)
    try:
        assert fake.registered("ask")["contexts"] == [0, 1]  # servers and DMs
        payload = await fake.slash(DM, "ask", question="in a DM")
        await rig.until(lambda: rig.jobs_done(1))
        assert await answered(rig, payload) == ["You said: Ana: in a DM"]
        assert rig.stored(DM, guild=0) == [
            ("user", "in a DM"),
            ("assistant", "You said: Ana: in a DM"),
        ]
        # In a DM the person is the admin of their own conversation.
        assert await answered(rig, await fake.slash(DM, "solar", "length", characters=300)) == [
            texts.COMMAND_LENGTH_SET.format(limit=300)
        ]
    finally:
        await rig.stop()
        rig.repository.close()
    rig = await start_rig(fake, sqlite_url)  # DMs off (the default)
    try:
        payload = await fake.slash(DM, "ask", question="hello?")
        record = interaction(fake, payload)
        await rig.until(lambda: bool(fake.interaction_messages(record.id)))
        (notice,) = fake.interaction_messages(record.id)
        assert notice["content"] == texts.DISCORD_NOT_HERE and int(notice["flags"]) & EPHEMERAL
        assert len(rig.repository.jobs()) == 1  # only the one from before
    finally:
        await rig.stop()
        rig.repository.close()


async def test_a_database_that_refuses_writes_costs_the_asker_a_private_apology_not_silence(
    rig: Rig,
) -> None:
    with refusing_inserts(rig.repository, "messages"):
        payload = await rig.fake.slash(GENERAL, "ask", question="stored?")
        record = interaction(rig.fake, payload)
        await rig.until(lambda: bool(record.followups))
    assert record.original in rig.fake.deleted  # the public "thinking…" is gone
    (apology,) = rig.fake.interaction_messages(record.id)
    assert apology["content"] == texts.FAILED_REPLY and int(apology["flags"]) & EPHEMERAL
    assert rig.repository.jobs() == []
    again = await rig.fake.slash(GENERAL, "ask", question="stored now?")
    await rig.until(lambda: rig.jobs_done(1))
    assert await answered(rig, again) == ["You said: Ana: stored now?"]


async def test_questions_are_queued_in_the_order_they_were_asked_however_slow_the_acks(
    rig: Rig,
) -> None:
    """Discord acknowledges the first question last: they are still stored, and answered, in
    the order they were sent (as mentions are)."""
    ids = [rig.fake.snowflake() for _ in range(4)]
    for index, interaction_id in enumerate(ids):
        rig.fake.callback_delays[interaction_id] = 0.1 * (len(ids) - index)
    for index, interaction_id in enumerate(ids):
        await rig.fake.slash(GENERAL, "ask", question=f"q{index}", interaction_id=interaction_id)
    await rig.until(lambda: rig.jobs_done(len(ids)))
    assert [text for role, text in rig.stored(GENERAL) if role == "user"] == [
        f"q{index}" for index in range(len(ids))
    ]
    acknowledged = sorted(ids, key=lambda i: rig.fake.interactions[i].acknowledged_at or 0.0)
    assert acknowledged == ids[::-1]  # the acknowledgements did come back in reverse
