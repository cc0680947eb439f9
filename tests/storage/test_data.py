"""Data ownership: ``solarbot export`` / ``solarbot forget`` (real subprocesses, real SQLite file),
the repository methods behind them (SQLite and PostgreSQL), and the documented online backup."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.records import ConversationKey, Incoming, Role
from bot.tools import data
from storage import database
from storage.repository import Repository
from tests.system.test_cli import solarbot

UNICODE = "Grüße 東京 مرحبا 👩‍💻"


def say(
    repository: Repository,
    *,
    channel: str,
    author: str,
    text: str,
    message_id: str,
    thread: str = "",
    platform: str = "slack",
    workspace: str = "T1",
    reply: str | None = None,
) -> None:
    result = repository.enqueue(
        Incoming(
            platform=platform,
            workspace=workspace,
            channel=channel,
            thread=thread,
            author_id=author,
            author_name=author.title(),
            text=text,
            message_id=message_id,
        )
    )
    assert result is not None
    if reply is not None:
        (job,) = repository.claim(worker_id="w", limit=1, lease_seconds=60)
        assert job.id == result.job_id
        assert repository.complete(job, reply_text=reply, reply_message_ids=["r"], token_count=1)


def seed(repository: Repository) -> None:
    say(repository, channel="C1", author="ana", text="hi " + UNICODE, message_id="1", reply="hello")
    say(repository, channel="C1", author="bob", text="bob here", message_id="2", reply="hi bob")
    say(
        repository,
        channel="C1",
        author="ana",
        text="in a thread",
        message_id="3",
        thread="9.1",
        reply="thread reply",
    )
    say(repository, channel="C2", author="ana", text="elsewhere", message_id="4", reply="ok")
    say(repository, channel="C1", author="ana", text="other team", message_id="5", workspace="T2")


def texts_of(
    repository: Repository, channel: str, thread: str = "", workspace: str = "T1"
) -> list[str]:
    key = ConversationKey(platform="slack", workspace=workspace, channel=channel, thread=thread)
    return [m.text for m in repository.messages(key)]


def test_forget_user_deletes_their_turns_replies_and_jobs_only(repository: Repository) -> None:
    seed(repository)
    assert repository.forget_user(platform="slack", workspace="T1", author_id="ana") == 3
    assert texts_of(repository, "C1") == ["bob here", "hi bob"]
    assert texts_of(repository, "C1", "9.1") == [] and texts_of(repository, "C2") == []
    assert texts_of(repository, "C1", workspace="T2") == ["other team"]  # another workspace
    assert {job.dedupe_key.rsplit(":", 1)[-1] for job in repository.jobs()} == {"2", "5"}
    # Without a workspace: every workspace of the platform.
    assert repository.forget_user(platform="slack", workspace=None, author_id="ana") == 1
    assert texts_of(repository, "C1", workspace="T2") == []


def test_transcript_has_the_channel_and_its_threads_in_order(repository: Repository) -> None:
    seed(repository)
    rows = repository.transcript(platform="slack", workspace="T1", channel="C1")
    assert [(key.thread, m.role, m.text) for key, m in rows] == [
        ("", Role.USER, "hi " + UNICODE),
        ("", Role.ASSISTANT, "hello"),
        ("", Role.USER, "bob here"),
        ("", Role.ASSISTANT, "hi bob"),
        ("9.1", Role.USER, "in a thread"),
        ("9.1", Role.ASSISTANT, "thread reply"),
    ]


def test_cli_export_writes_jsonl_and_forget_deletes(tmp_path: Path) -> None:
    repository = Repository.open(f"sqlite:///{tmp_path / 'solarbot.db'}")
    seed(repository)
    repository.close()
    env = {"SOLARBOT_DATA_DIR": str(tmp_path)}
    out = tmp_path / "c1.jsonl"
    result = solarbot(
        "export", "--platform", "slack", "--workspace", "T1", "--channel", "C1",
        "--output", str(out), env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["role"], r["author_id"], r["text"], r["thread"]) for r in lines] == [
        ("user", "ana", "hi " + UNICODE, ""),
        ("assistant", "", "hello", ""),
        ("user", "bob", "bob here", ""),
        ("assistant", "", "hi bob", ""),
        ("user", "ana", "in a thread", "9.1"),
        ("assistant", "", "thread reply", "9.1"),
    ]
    assert "exported 6 message(s)" in result.stderr

    forget = solarbot("forget", "--platform", "slack", "--user", "ana", env=env)
    assert forget.returncode == 0, forget.stderr
    assert "deleted 4 message(s) by user ana" in forget.stdout
    channel = solarbot(
        "forget", "--platform", "slack", "--workspace", "T1", "--channel", "C1", env=env
    )
    assert "deleted 2 message(s) of channel C1" in channel.stdout
    repository = Repository.open(f"sqlite:///{tmp_path / 'solarbot.db'}")
    assert repository.transcript(platform="slack", workspace="T1", channel="C1") == []
    assert repository.jobs() == []
    repository.close()


def _write_while(url: str, stop: threading.Event, written: list[int]) -> None:
    repository = Repository.open(url)
    n = 0
    while not stop.is_set():
        say(repository, channel=f"C{n % 7}", author="u", text="x" * 500, message_id=f"w{n}")
        n += 1
        written.append(n)
    repository.close()


def _check_backup(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # Consistent: every job's message is there (one transaction wrote both).
        orphans = connection.execute(
            "SELECT count(*) FROM jobs WHERE message_id NOT IN (SELECT id FROM messages)"
        ).fetchone()
        assert orphans == (0,)
        jobs = connection.execute("SELECT count(*) FROM jobs").fetchone()[0]
        messages = connection.execute("SELECT count(*) FROM messages").fetchone()[0]
        assert jobs == messages
        return int(jobs)
    finally:
        connection.close()


@pytest.mark.parametrize("tool", ["sqlite3-cli", "python"])
def test_the_documented_online_backup_is_consistent_while_the_service_writes(
    tmp_path: Path, tool: str
) -> None:
    """The commands of docs/operations-reliability.md, run while another process writes."""
    if tool == "sqlite3-cli" and shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 command-line shell is not installed")
    db = tmp_path / "solarbot.db"
    url = f"sqlite:///{db}"
    Repository.open(url).close()
    stop = threading.Event()
    written: list[int] = []
    writer = threading.Thread(target=_write_while, args=(url, stop, written))
    writer.start()
    try:
        counts = []
        for n in range(3):
            while len(written) < 50 * (n + 1):
                stop.wait(0.01)
            backup = tmp_path / f"backup-{n}.db"
            if tool == "sqlite3-cli":
                command = ["sqlite3", str(db), f".backup '{backup}'"]
            else:
                command = [
                    sys.executable, "-c",
                    "import sqlite3, sys; "
                    "src = sqlite3.connect(sys.argv[1]); dst = sqlite3.connect(sys.argv[2]); "
                    "src.backup(dst); dst.close(); src.close()",
                    str(db), str(backup),
                ]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            counts.append(_check_backup(backup))
    finally:
        stop.set()
        writer.join()
    assert counts == sorted(counts) and counts[0] >= 50
    restored = Repository.open(f"sqlite:///{tmp_path / 'backup-2.db'}")
    assert len(restored.jobs()) == counts[-1]
    restored.close()


# ---------------------------------------------------------------- forget leaves no readable trace


def _secrets(tag: str) -> list[str]:
    """Distinct texts made of words unique to this run: one short, one over a page (it spills
    into overflow pages), one outside ASCII."""
    token = uuid.uuid4().hex
    return [
        f"ana-secret-{tag}-{token}-short",
        f"ana-secret-{tag}-{token}-long " + " ".join(uuid.uuid4().hex for _ in range(200)),
        f"ana-secret-{tag}-{token}-ünïcødé-東京-{uuid.uuid4().hex}",
    ]


def _fragments(text: str) -> list[bytes]:
    """What to look for in raw bytes: every word of ``text`` (each unique to this run). A long
    text is split across pages, so the words, not the whole text, must each be absent."""
    words = [word.encode() for word in text.split() if len(word) >= 20]
    assert words
    return words


def _seed_secrets(repository: Repository) -> list[tuple[str, str]]:
    """Ana's messages and the replies to them in C1, in a thread of C1 and in C2; Bob's in C3.
    Returns (channel, text) for every stored text."""
    stored = []
    for n, text in enumerate(_secrets("msg")):
        channel = "C1" if n < 2 else "C2"
        reply = f"reply-to-ana-{uuid.uuid4().hex}-{n}"
        thread = "9.1" if n == 1 else ""
        say(repository, channel=channel, thread=thread, author="ana", text=text,
            message_id=f"a{n}", reply=reply)  # fmt: skip
        stored += [(channel, text), (channel, reply)]
    bob = [f"bob-keeps-{uuid.uuid4().hex}", f"reply-to-bob-{uuid.uuid4().hex}"]
    say(repository, channel="C3", author="bob", text=bob[0], message_id="b0", reply=bob[1])
    return stored + [("C3", text) for text in bob]


def _database_files(db: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if path.exists()
    }


def _assert_owner_only(data_dir: Path, db: Path) -> None:
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in _database_files(db):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common default umask (files 0644): what solarbot must not rely on."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("what", ["user", "channel"])
@pytest.mark.parametrize("via", ["cli", "in-process"])
def test_forget_leaves_no_readable_trace_in_the_sqlite_files(
    tmp_path: Path, via: str, what: str, loose_umask: None
) -> None:
    """The forgotten text is in none of the database's files afterwards (main file, write-ahead
    log, shared memory), while the service keeps the database open; what others said stays."""
    data_dir = tmp_path / "data"
    db = data_dir / "solarbot.db"
    service = Repository.open(f"sqlite:///{db}")  # the running service, holding the file open
    try:
        stored = _seed_secrets(service)
        gone = {"user": ("C1", "C2"), "channel": ("C1",)}[what]
        forgotten = [text for channel, text in stored if channel in gone]
        kept = [text for channel, text in stored if channel not in gone]
        raw = b"".join(_database_files(db).values())
        # The check can see them (a word split across two pages is not seen, the others are).
        assert all(any(f in raw for f in _fragments(text)) for text in forgotten)
        args = ["--user", "ana"] if what == "user" else ["--workspace", "T1", "--channel", "C1"]
        if via == "cli":
            result = solarbot(
                "forget", "--platform", "slack", *args, env={"SOLARBOT_DATA_DIR": str(data_dir)}
            )
            assert result.returncode == 0, result.stderr
        else:
            cli = Repository.open(f"sqlite:///{db}")
            try:
                data.forget(
                    cli,
                    platform="slack",
                    workspace="T1" if what == "channel" else None,
                    user="ana" if what == "user" else None,
                    channel="C1" if what == "channel" else None,
                )
            finally:
                cli.close()
        raw = b"".join(_database_files(db).values())
        left = [f for text in forgotten for f in _fragments(text) if f in raw]
        assert left == []
        assert all(any(f in raw for f in _fragments(text)) for text in kept)
        assert texts_of(service, "C3")[0].startswith("bob-keeps-")  # the service still works
        _assert_owner_only(data_dir, db)
    finally:
        service.close()


def test_forget_says_so_when_a_reader_keeps_the_log_and_erases_once_it_is_gone(
    tmp_path: Path,
) -> None:
    """A read held open across the forget (a service's long query) keeps the old copies in the
    write-ahead log: forget reports that instead of claiming success; the next try erases."""
    db = tmp_path / "solarbot.db"
    repository = Repository.open(f"sqlite:///{db}")
    reader = sqlite3.connect(db)
    try:
        stored = _seed_secrets(repository)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM messages").fetchone()
        count, erased = data.forget(
            repository, platform="slack", workspace="T1", channel="C1", patience_seconds=0.5
        )
        assert count == 4 and not erased
        reader.rollback()
        assert database.erase_deleted(repository.engine)
        raw = b"".join(_database_files(db).values())
        gone = [text for channel, text in stored if channel == "C1"]
        assert [f for text in gone for f in _fragments(text) if f in raw] == []
    finally:
        reader.close()
        repository.close()


def test_files_left_readable_by_an_older_version_are_made_owner_only(
    tmp_path: Path, loose_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    db = data_dir / "solarbot.db"
    old = sqlite3.connect(db)  # as before: 0644 files, the log and shared memory kept open
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE t (x)")
    old.commit()
    try:
        assert {stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir()} == {0o644}
        Repository.open(f"sqlite:///{db}").close()
        assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir()} == {
            name: 0o600 for name in ("solarbot.db", "solarbot.db-wal", "solarbot.db-shm")
        }
        # The folder is not ours to change (it may be shared): a warning names it.
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o755
        assert any(str(data_dir) in r.getMessage() for r in caplog.records)
    finally:
        old.close()


@pytest.mark.postgres
def test_forget_vacuums_the_tables_it_deleted_from_on_postgresql(postgres_url: str) -> None:
    """PostgreSQL keeps deleted rows' bytes until VACUUM: forget runs it on its tables."""
    repository = Repository.open(postgres_url)
    try:
        _seed_secrets(repository)
        count, erased = data.forget(repository, platform="slack", workspace=None, user="ana")
        assert count == 3 and erased
        with repository.engine.connect() as connection:
            vacuumed = dict(
                connection.exec_driver_sql(
                    "SELECT relname, vacuum_count FROM pg_stat_user_tables "
                    "WHERE relname IN ('messages', 'jobs', 'feedback', 'conversations')"
                ).all()
            )
            dead = connection.exec_driver_sql(
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'messages'"
            ).scalar_one()
        assert vacuumed == {"messages": 1, "jobs": 1, "feedback": 1, "conversations": 1}
        assert dead == 0
    finally:
        repository.close()


def test_export_without_workspace_finds_the_channel_or_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13.13: Discord conversations are keyed by guild id; exporting a channel without
    --workspace used to say "exported 0 message(s)". A channel id stored under one workspace is
    found there; one stored under several, or nowhere, is explained."""
    import argparse

    from bot.settings import load_settings
    from bot.tools.data import run_data_command

    repository = Repository.open(f"sqlite:///{tmp_path / 'solarbot.db'}")
    guild, channel = "111111111111111111", "222222222222222222"
    say(repository, channel=channel, author="ana", text="hi", message_id="1", reply="hello",
        platform="discord", workspace=guild)  # fmt: skip
    seed(repository)  # Slack C1 is stored under T1 and T2
    repository.close()
    settings = load_settings(environ={"SOLARBOT_DATA_DIR": str(tmp_path)}, env_file=None)

    def run(command: str, platform: str, channel: str, workspace: str | None = None) -> int:
        out = tmp_path / "out.jsonl"
        out.unlink(missing_ok=True)
        args = argparse.Namespace(
            command=command, platform=platform, workspace=workspace, channel=channel,
            output=out, user=None,
        )  # fmt: skip
        return run_data_command(settings, args)

    assert run("export", "discord", channel) == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["workspace"], r["text"]) for r in lines] == [(guild, "hi"), (guild, "hello")]
    err = capsys.readouterr().err
    assert f"stored under workspace {guild}" in err and "exported 2 message(s)" in err

    assert run("export", "slack", "C1") == 1
    err = capsys.readouterr().err
    assert "several workspaces ('T1', 'T2')" in err and "--workspace" in err
    assert not (tmp_path / "out.jsonl").exists()

    assert run("export", "discord", "333") == 0
    assert (
        "nothing is stored for channel 333 of discord in any workspace" in capsys.readouterr().err
    )

    assert run("export", "discord", channel, workspace="999") == 0
    err = capsys.readouterr().err
    assert f"under workspace '999'; it is stored under: '{guild}'" in err

    assert run("forget", "slack", "C1") == 1  # ambiguous: nothing deleted
    assert run("forget", "discord", channel) == 0
    repository = Repository.open(f"sqlite:///{tmp_path / 'solarbot.db'}")
    assert repository.transcript(platform="discord", workspace=guild, channel=channel) == []
    assert texts_of(repository, "C1") != [] and texts_of(repository, "C1", workspace="T2") != []
    repository.close()


def test_workspaces_of_channel(repository: Repository) -> None:
    seed(repository)
    assert repository.workspaces_of_channel(platform="slack", channel="C1") == ["T1", "T2"]
    assert repository.workspaces_of_channel(platform="slack", channel="C2") == ["T1"]
    assert repository.workspaces_of_channel(platform="discord", channel="C1") == []
