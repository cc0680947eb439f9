"""The ``solarbot`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from bot import __version__, texts
from bot.errors import ModelNotFoundError, SolarbotError
from bot.settings import ENGINE_DESCRIPTIONS, ENGINE_NAMES, Settings, load_settings

log = logging.getLogger("solarbot")

DESCRIPTION = """\
solarbot: SOLAR-10.7B-Instruct in team chat.

Configuration comes from SOLARBOT_* environment variables (or a .env file); see README.md.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solarbot",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"solarbot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    engines = list(ENGINE_NAMES)
    engine_help = "text generation engine: " + ", ".join(
        f"'{name}' ({ENGINE_DESCRIPTIONS[name]})" for name in engines
    )
    verbose_help = (
        "in the terminal chat: log INFO messages to stderr too (default: warnings and errors "
        "only, unless SOLARBOT_LOG_LEVEL is set)"
    )

    run = commands.add_parser(
        "run",
        help="run the service: the worker plus every configured platform (console if none)",
        description="Start the worker and every adapter whose credentials are configured. "
        "With no platform configured, chat in this terminal (the console adapter).",
    )
    run.add_argument("--engine", choices=engines, help=engine_help)
    run.add_argument(
        "--role",
        choices=["all", "adapters", "worker"],
        default="all",
        help="'all' (default): adapters and a worker in this process; 'adapters': only take "
        "messages in and enqueue them (no model); 'worker': only generate and deliver replies "
        "(same as `solarbot worker`). Split roles need a shared PostgreSQL database.",
    )
    run.add_argument("--verbose", action="store_true", help=verbose_help)

    chat = commands.add_parser(
        "chat",
        help="chat with the bot in this terminal (console adapter + worker)",
        description="A terminal chat through the real intake -> queue -> worker path. "
        "Type /help inside for commands. Ends at /quit or end of input, after pending replies.",
    )
    chat.add_argument("--engine", choices=engines, help=engine_help)
    chat.add_argument(
        "--channel", default="general", help="conversation to start in (default: general)"
    )
    chat.add_argument("--verbose", action="store_true", help=verbose_help)

    worker = commands.add_parser(
        "worker",
        help="run only the worker (replies delivered through platform REST APIs)",
        description="Claim jobs from the shared database and deliver replies for every "
        "configured platform. Run several on PostgreSQL to scale out.",
    )
    worker.add_argument("--engine", choices=engines, help=engine_help)

    db = commands.add_parser("db", help="database maintenance", description="Database maintenance.")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("upgrade", help="apply migrations (also done on every start)")
    db_commands.add_parser("current", help="print the database's migration revision")

    from bot.tools.data import add_data_parsers

    add_data_parsers(commands)

    from bot.tools.upscale import add_upscale_parser

    add_upscale_parser(commands)

    from bot.tools.kb import add_kb_parser

    add_kb_parser(commands)
    return parser


def _configure_logging(level: str, settings: Settings) -> None:
    from bot import logs

    logs.configure(level=level, fmt=settings.log_format, secrets=settings.secret_values())


def _with_engine(settings: Settings, engine: str | None) -> Settings:
    return settings if engine is None else settings.model_copy(update={"engine": engine})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "upscale":
        from bot.tools.upscale import run_upscale

        return run_upscale(args)
    try:
        settings = load_settings()
        # In the terminal chat, INFO lines would land between the questions and the answers.
        quiet = (
            _uses_console(args, settings)
            and not args.verbose
            and "log_level" not in settings.model_fields_set
        )
        _configure_logging("WARNING" if quiet else settings.log_level, settings)
        if args.command == "db":
            return _db(settings, args.db_command)
        if args.command in ("export", "forget", "report", "usage"):
            from bot.tools.data import run_data_command

            return run_data_command(settings, args)
        if args.command == "kb":
            from bot import logs
            from bot.tools.kb import run_kb_command

            logs.configure_progress_bars()
            return run_kb_command(settings, args)
        settings = _with_engine(settings, args.engine)
        mode = args.command
        if mode == "run" and args.role != "all":
            mode = args.role  # "adapters" or "worker"
        return asyncio.run(_serve(settings, mode=mode, channel=getattr(args, "channel", None)))
    except SolarbotError as exc:
        print(f"solarbot: error: {exc}", file=sys.stderr)
        if isinstance(exc, ModelNotFoundError):
            print(f"solarbot: {texts.TRY_WITHOUT_MODEL}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _uses_console(args: argparse.Namespace, settings: Settings) -> bool:
    """`solarbot chat`, or `solarbot run` with no platform configured (the console adapter)."""
    from bot.service import platform_configured

    if args.command == "chat":
        return True
    return args.command == "run" and args.role == "all" and not platform_configured(settings)


def _db(settings: Settings, action: str) -> int:
    from bot.service import redacted_url
    from storage import database

    url = settings.resolved_database_url()
    engine = database.create_db_engine(url)
    try:
        if action == "upgrade":
            database.upgrade(engine)
        print(f"{redacted_url(url)}: revision {database.current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


async def _serve(settings: Settings, *, mode: str, channel: str | None) -> int:
    from adapters.console import ConsoleAdapter, ConsoleOptions
    from bot.delivery import ChatAdapter
    from bot.logs import configure_progress_bars
    from bot.service import Service, build_engine, platform_adapters, redacted_url
    from storage.repository import Repository

    if mode != "adapters":
        # Model download and loading bars on a terminal; none in logs, pipes and tests.
        configure_progress_bars()
    url = settings.resolved_database_url()
    repository = await asyncio.to_thread(Repository.open, url)
    log.info("database %s ready", redacted_url(url))
    engine = build_engine(settings)
    adapters: list[ChatAdapter] = (
        []
        if mode == "chat"
        else platform_adapters(settings, ingress=mode != "worker", model_id=engine.model_id)
    )
    console: ConsoleAdapter | None = None
    if mode in ("worker", "adapters") and not adapters:
        raise SolarbotError(
            f"no platform is configured for this {mode} process; "
            "set a platform token, or use `solarbot chat` for the terminal"
        )
    if mode == "adapters" and url.startswith("sqlite"):
        log.warning(
            "--role adapters with SQLite: workers must run on this machine and share %s",
            redacted_url(url),
        )
    if not adapters:
        console = ConsoleAdapter(
            ConsoleOptions(
                channel=channel or "general",
                wait_for_model=True,
                model_id=engine.model_id,
                default_system_prompt=settings.system_prompt,
            )
        )
        adapters = [console]
    service = Service(
        settings=settings,
        repository=repository,
        engine=None if mode == "adapters" else engine,
        adapters=adapters,
        run_worker=mode != "adapters",
    )
    service.install_signal_handlers()
    watcher = asyncio.create_task(service.console_session(console)) if console else None
    try:
        await service.run()
    finally:
        if watcher is not None:
            watcher.cancel()
        repository.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
