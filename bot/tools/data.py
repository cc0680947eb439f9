"""Data ownership from the command line: ``solarbot export`` and ``solarbot forget``.

- ``solarbot export --platform slack --workspace T0123 --channel C0456 [--output FILE]`` writes the
  channel's stored conversation (the channel and its threads) as JSONL, one message a line, UTF-8
  (any Unicode as sent), oldest first within each conversation (a turn with attached files lists
  them: name, media type, size, and the text read from each or why none was). Without
  ``--workspace`` (Slack team id / Discord guild id: conversations are keyed by it) the channel is
  looked up in every workspace of the platform: found under one, that one is used; under several,
  the command names them and stops; under none, it says so (``forget --channel`` resolves the
  workspace the same way);
- ``solarbot forget --platform slack [--workspace T0123] --user U0789`` deletes everything a person
  said (and the bot's replies to it, and their pending jobs, so no reply lands afterwards);
  without ``--workspace`` in every workspace of that platform;
- ``solarbot forget --platform slack --workspace T0123 --channel C0456`` deletes a channel's stored
  messages, threads and jobs;
- ``solarbot report [--platform P] [--limit N]`` prints the 👍/👎 feedback per channel (and the
  replies there) and the ``N`` worst-rated answers with their question and job id;
- ``solarbot usage [--platform P] [--days N]`` prints the tokens replies cost (prompt tokens in,
  generated tokens out) per user and per channel over the last ``N`` days, today included (days
  run midnight to midnight in SOLARBOT_USAGE_TIMEZONE).

Both work on the configured database (``SOLARBOT_DATABASE_URL`` / ``SOLARBOT_DATA_DIR``) while the
service runs: each deletion is one transaction. ``forget`` then erases what it deleted from the
database files (SQLite: the freed space is zeroed and the write-ahead log checkpointed and truncated;
PostgreSQL: the tables are vacuumed; see docs/operations-reliability.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bot import texts
from bot.limits import zone_name
from bot.quota import days_start, usage_zone
from bot.settings import Settings
from bot.tools.arguments import positive_int
from storage import database

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bot.records import DownvotedDocument, FeedbackReport, UsageLine, UsageReport
    from storage.repository import Repository


def add_data_parsers(commands: Any) -> None:
    """Add ``export``, ``forget``, ``report`` and ``usage`` to the ``solarbot`` sub-command
    parsers."""
    export = commands.add_parser(
        "export",
        help="write a channel's stored conversation as JSONL",
        description="Write every stored message of a channel (and its threads) as JSON lines.",
    )
    _where(export)
    export.add_argument("--channel", required=True, help="the channel id")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")

    forget = commands.add_parser(
        "forget",
        help="delete a person's or a channel's stored messages (deletion requests)",
        description="Delete what a person said (--user) or a whole channel (--channel), with the "
        "bot's replies and pending jobs. Prints how many messages were deleted.",
    )
    _where(forget)
    who = forget.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the person's platform user id")
    who.add_argument("--channel", help="the channel id")

    report = commands.add_parser(
        "report",
        help="feedback (👍/👎 reactions on replies) per channel, and the worst-rated answers",
        description="Per channel (threads included): replies, 👍 and 👎; then the answers with "
        "the most 👎, with a short excerpt of the question and the answer and the job id.",
    )
    report.add_argument("--platform", help="only this platform (slack, discord, ...)")
    report.add_argument(
        "--limit",
        type=positive_int,
        default=10,
        help="how many worst-rated answers to show (default: 10)",
    )

    usage = commands.add_parser(
        "usage",
        help="tokens replies cost, per user and per channel",
        description="Per user and per channel (threads included): replies generated, prompt "
        "tokens in, generated tokens out and their total, over the last N days (today "
        "included; days run midnight to midnight in SOLARBOT_USAGE_TIMEZONE).",
    )
    usage.add_argument("--platform", help="only this platform (slack, discord, ...)")
    usage.add_argument(
        "--days", type=positive_int, default=1, help="how many days, today included (default: 1)"
    )


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--platform", required=True, help="slack, discord, console, webhook, ... as stored"
    )
    parser.add_argument(
        "--workspace",
        help="Slack team id / Discord guild id (default: with --channel, the one workspace the "
        "channel is stored under; forget --user: every workspace)",
    )


def run_data_command(settings: Settings, args: argparse.Namespace) -> int:
    from storage.repository import Repository

    repository = Repository.open(settings.resolved_database_url())
    try:
        if args.command == "report":
            report = repository.feedback_report(platform=args.platform, limit=args.limit)
            documents = repository.downvoted_documents(platform=args.platform, limit=args.limit)
            sys.stdout.write(format_report(report) + format_downvoted_documents(documents))
            return 0
        if args.command == "usage":
            zone = usage_zone(settings.usage_timezone)
            since = days_start(datetime.now(UTC), zone, args.days)
            usage = repository.usage(since=since, platform=args.platform)
            sys.stdout.write(format_usage(usage, zone=zone, days=args.days))
            return 0
        if getattr(args, "channel", None) is not None:
            workspace = channel_workspace(repository, args)
            if workspace is None:
                return 1
            args.workspace = workspace
        if args.command == "export":
            if args.output is None:
                count = export_channel(repository, args, sys.stdout)
            else:
                with args.output.open("w", encoding="utf-8") as out:
                    count = export_channel(repository, args, out)
            print(texts.DATA_EXPORTED.format(count=count), file=sys.stderr)
            return 0
        count, erased = forget(
            repository,
            platform=args.platform,
            workspace=args.workspace,
            user=args.user,
            channel=args.channel,
        )
        if args.user is not None:
            print(f"deleted {count} message(s) by user {args.user} and the replies to them")
        else:
            print(f"deleted {count} message(s) of channel {args.channel}")
        if not erased:
            print(texts.FORGET_NOT_ERASED, file=sys.stderr)
        return 0
    finally:
        repository.close()


def forget(
    repository: Repository,
    *,
    platform: str,
    workspace: str | None,
    user: str | None = None,
    channel: str | None = None,
    patience_seconds: float = database.CHECKPOINT_PATIENCE_SECONDS,
) -> tuple[int, bool]:
    """Delete what ``user`` said (in ``workspace``, or every workspace when None) or a whole
    ``channel``, then erase the deleted text from the database files. Returns the number of
    messages deleted and whether the erasing finished (see ``storage.database.erase_deleted``)."""
    if (user is None) == (channel is None):
        raise ValueError("forget: give exactly one of user and channel")
    if user is not None:
        count = repository.forget_user(platform=platform, workspace=workspace, author_id=user)
    else:
        assert channel is not None
        count = repository.forget_channel(
            platform=platform, workspace=workspace or "", channel=channel
        )
    return count, database.erase_deleted(repository.engine, patience_seconds=patience_seconds)


def channel_workspace(repository: Repository, args: argparse.Namespace) -> str | None:
    """The workspace of ``args.channel``: ``--workspace`` when given, else the one workspace the
    channel is stored under (Discord conversations are keyed by guild id, Slack ones by team id,
    and a channel id belongs to one of them). None, after saying why on standard error, when the
    channel is stored under several. Saying where else a channel is stored when it is not found
    under the given one."""
    found = repository.workspaces_of_channel(platform=args.platform, channel=args.channel)
    where = {"channel": args.channel, "platform": args.platform}
    if args.workspace is not None:
        if args.workspace not in found and found:
            print(
                texts.DATA_CHANNEL_ELSEWHERE.format(
                    **where, workspace=args.workspace, workspaces=", ".join(map(repr, found))
                ),
                file=sys.stderr,
            )
        return str(args.workspace)
    if not found:
        print(texts.DATA_CHANNEL_UNKNOWN.format(**where), file=sys.stderr)
        return ""
    if len(found) > 1:
        print(
            texts.DATA_CHANNEL_AMBIGUOUS.format(**where, workspaces=", ".join(map(repr, found))),
            file=sys.stderr,
        )
        return None
    if found[0]:
        print(texts.DATA_CHANNEL_FOUND_IN.format(**where, workspace=found[0]), file=sys.stderr)
    return found[0]


def export_channel(repository: Repository, args: argparse.Namespace, out: TextIO) -> int:
    rows = repository.transcript(
        platform=args.platform, workspace=args.workspace or "", channel=args.channel
    )
    for key, message in rows:
        record = {
            "platform": key.platform,
            "workspace": key.workspace,
            "channel": key.channel,
            "thread": key.thread,
            "id": message.id,
            "role": message.role.value,
            "author_id": message.author_id,
            "author_name": message.author_name,
            "text": message.text,
            "platform_message_id": message.platform_message_id,
            "created_at": message.created_at.isoformat(),
        }
        if message.attachments:  # files attached to the turn, with the text read from them
            record["attachments"] = [
                {
                    "name": attachment.name,
                    "media_type": attachment.media_type,
                    "size": attachment.size,
                    "text": attachment.text,
                    "problem": attachment.problem.value if attachment.problem else None,
                }
                for attachment in message.attachments
            ]
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(rows)


def format_report(report: FeedbackReport) -> str:
    """The report as plain text: a table of channels, then the worst-rated answers."""
    lines = [texts.REPORT_CHANNELS]
    if not report.channels:
        lines.append(texts.REPORT_NO_REPLIES)
    else:
        rows = [("platform", "workspace", "channel", "replies", "👍", "👎")]
        rows += [
            (c.platform, c.workspace or "-", c.channel, str(c.replies), str(c.up), str(c.down))
            for c in report.channels
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        for row in rows:
            left = "  ".join(
                cell.ljust(width) for cell, width in zip(row[:3], widths, strict=False)
            )
            right = "  ".join(
                cell.rjust(width) for cell, width in zip(row[3:], widths[3:], strict=False)
            )
            lines.append(f"{left}  {right}")
    lines.append("")
    lines.append(texts.REPORT_WORST)
    if not report.worst:
        lines.append(texts.REPORT_NO_DOWNVOTES)
    for reply in report.worst:
        lines.append(
            texts.REPORT_WORST_LINE.format(
                job=reply.job_id,
                where=f"{reply.platform} {reply.workspace or '-'}/{reply.channel}",
                down=reply.down,
                up=reply.up,
            )
        )
        lines.append(texts.REPORT_QUESTION.format(text=reply.question))
        lines.append(texts.REPORT_ANSWER.format(text=reply.answer))
    return "\n".join(lines) + "\n"


def format_downvoted_documents(documents: Sequence[DownvotedDocument]) -> str:
    """Which knowledge-base documents appear most in 👎-rated replies (a document that misleads
    the model, or is out of date, shows up here first)."""
    lines = ["", texts.REPORT_DOCUMENTS]
    if not documents:
        lines.append(texts.REPORT_NO_DOCUMENTS)
    for document in documents:
        lines.append(
            texts.REPORT_DOCUMENT_LINE.format(
                replies=document.replies,
                down=document.down,
                collection=document.collection,
                title=document.title,
                link=document.link,
            )
        )
    return "\n".join(lines) + "\n"


def format_usage(report: UsageReport, *, zone: tzinfo, days: int) -> str:
    """The usage report as plain text: a table of users, then one of channels."""
    since = report.since.astimezone(zone).strftime("%Y-%m-%d %H:%M")
    lines = [texts.USAGE_SINCE.format(since=since, zone=zone_name(zone), days=days)]
    for title, who, rows in (
        (texts.USAGE_USERS, "user", report.users),
        (texts.USAGE_CHANNELS, "channel", report.channels),
    ):
        lines.append("")
        lines.append(title)
        if not rows:
            lines.append(texts.USAGE_NONE)
            continue
        lines.extend(_usage_table(who, rows))
    return "\n".join(lines) + "\n"


def _usage_table(who: str, rows: tuple[UsageLine, ...]) -> list[str]:
    table = [("platform", "workspace", who, "replies", "tokens in", "tokens out", "total")]
    table += [
        (
            row.platform,
            row.workspace or "-",
            row.who or "-",
            str(row.replies),
            str(row.tokens_in),
            str(row.tokens_out),
            str(row.tokens),
        )
        for row in rows
    ]
    table.append(
        (
            texts.USAGE_TOTAL,
            "",
            "",
            str(sum(row.replies for row in rows)),
            str(sum(row.tokens_in for row in rows)),
            str(sum(row.tokens_out for row in rows)),
            str(sum(row.tokens for row in rows)),
        )
    )
    widths = [max(len(line[i]) for line in table) for i in range(7)]
    return [
        "  ".join(
            [cell.ljust(width) for cell, width in zip(line[:3], widths[:3], strict=True)]
            + [cell.rjust(width) for cell, width in zip(line[3:], widths[3:], strict=True)]
        ).rstrip()
        for line in table
    ]
