"""Wiring: settings -> repository, engine, adapters, intake and worker, run until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from adapters.console import PLATFORM as CONSOLE
from adapters.console import ConsoleAdapter
from bot import texts
from bot.answering import AnswerOptions
from bot.delivery import ChatAdapter, HandoffNotifier, ReportsConnection
from bot.errors import ConfigError, ContextWindowError, SolarbotError
from bot.generation.engine import Engine, SamplingParams, Tokenizer
from bot.handoff_followups import FollowupPolicy, HandoffFollowups
from bot.intake import Intake
from bot.kb.embeddings import Embedder, load_embedder
from bot.limits import Limits, LimitSettings, WallClock, utc_now
from bot.metrics import Metrics
from bot.metrics_server import MetricsServer, Readiness
from bot.prompt_room import load_tokenizer
from bot.quota import usage_zone
from bot.settings import Settings
from bot.support_hours import parse_support_hours
from bot.worker import Worker, WorkerOptions
from storage.repository import Repository

if TYPE_CHECKING:  # the platforms' libraries load only when a platform is configured
    from adapters.attachment_download import AttachmentOptions
    from adapters.discord import DiscordOptions
    from adapters.slack import SlackOptions
    from adapters.webhook import WebhookOptions

log = logging.getLogger(__name__)

# Held support pings and reminders are looked for at most this often (or every poll, if slower).
FOLLOWUP_MIN_POLL_SECONDS = 0.5


def build_engine(settings: Settings) -> Engine:
    if settings.engine == "fake":
        from bot.generation.fake import DEFAULT_BATCH_CAPACITY, FakeEngine

        return FakeEngine(
            context_window=settings.context_window or 4096,
            delay_per_chunk=settings.fake_delay_seconds,
            batch_capacity=settings.max_active_requests or DEFAULT_BATCH_CAPACITY,
        )
    if settings.engine == "openai":
        from bot.generation.openai import DEFAULT_MAX_CONCURRENT_REQUESTS, OpenAIEngine

        if settings.openai_base_url is None:
            raise ConfigError(
                "SOLARBOT_OPENAI_BASE_URL: required with SOLARBOT_ENGINE=openai "
                "(e.g. http://127.0.0.1:8000/v1)"
            )
        return OpenAIEngine(
            base_url=settings.openai_base_url,
            model=settings.openai_model or settings.model,
            tokenizer=settings.model,
            api_key=(
                settings.openai_api_key.get_secret_value()
                if settings.openai_api_key is not None
                else None
            ),
            offline=settings.offline,
            context_window=settings.context_window,
            timeout_seconds=settings.openai_timeout_seconds,
            max_concurrent_requests=settings.max_active_requests or DEFAULT_MAX_CONCURRENT_REQUESTS,
        )
    from bot.generation.options import LocalEngineOptions

    options = LocalEngineOptions(
        model=settings.model,
        dtype=settings.dtype,
        device=settings.device,
        offline=settings.offline,
        context_window=settings.context_window,
        max_new_tokens=settings.max_new_tokens,
        cuda_graphs=settings.cuda_graphs,
        kv_memory_fraction=settings.kv_memory_fraction,
        max_active_requests=settings.max_active_requests,
        cache_blocks=settings.cache_blocks,
        max_batch_tokens=settings.max_batch_tokens,
        compile_level=settings.compile_level,
        async_batching=settings.async_batching,
        compile_decode=(settings.compile_level or 0) >= 1,
    )
    if settings.engine == "static":
        from bot.generation.static import StaticCacheEngine

        return StaticCacheEngine(options)
    from bot.generation.local import TransformersEngine

    return TransformersEngine(options)


def platform_configured(settings: Settings) -> bool:
    """Whether any platform has credentials (else `solarbot run` is the terminal chat)."""
    return any(
        value is not None
        for value in (settings.discord_token, settings.slack_bot_token, settings.webhook_url)
    )


def served_model(settings: Settings) -> str:
    """The model the engine serves, as chat ``status`` commands show it: the engine's own
    ``model_id`` (an engine object is built, nothing is loaded or connected)."""
    return build_engine(settings).model_id


def platform_adapters(
    settings: Settings, *, ingress: bool = True, model_id: str | None = None
) -> list[ChatAdapter]:
    """Adapters whose credentials are configured, each built from its options object.
    ``ingress=False`` (``solarbot worker``): replies are delivered over the platforms' REST APIs
    only; no gateway connection, no listener. ``model_id``: what ``status`` names (default: the
    ``model_id`` of the engine ``build_engine`` makes of ``settings``)."""
    shown = model_id if model_id is not None else served_model(settings)
    adapters: list[ChatAdapter] = []
    if settings.discord_token is not None:
        from adapters.discord import DiscordAdapter

        adapters.append(DiscordAdapter(discord_options(settings, ingress=ingress, model_id=shown)))
    if settings.slack_bot_token is not None:
        from adapters.slack import SlackAdapter

        adapters.append(SlackAdapter(slack_options(settings, ingress=ingress, model_id=shown)))
    if settings.webhook_url is not None:
        from adapters.webhook import WebhookAdapter

        adapters.append(WebhookAdapter(webhook_options(settings, ingress=ingress)))
    return adapters


def discord_options(settings: Settings, *, ingress: bool, model_id: str) -> DiscordOptions:
    from adapters.discord import DiscordOptions

    if settings.discord_token is None:
        raise ConfigError(texts.DISCORD_NO_TOKEN)
    return DiscordOptions(
        token=settings.discord_token.get_secret_value(),
        allowed_guilds=settings.discord_allowed_guilds,
        allowed_channels=settings.discord_allowed_channels,
        allowed_roles=settings.discord_allowed_roles,
        admin_roles=settings.discord_admin_roles,
        dms=settings.discord_dms,
        ingress=ingress,
        edit_interval=settings.edit_interval_seconds,
        support_role=settings.discord_support_role,
        command_guild=settings.discord_command_guild,
        model_id=model_id,
        default_system_prompt=settings.system_prompt,
        attachments=attachment_options(settings),
    )


def attachment_options(settings: Settings) -> AttachmentOptions | None:
    """How the adapters download attached files; None when files are not read (budget 0)."""
    from adapters.attachment_download import AttachmentOptions

    if settings.attachment_token_budget == 0:
        return None
    return AttachmentOptions(
        max_bytes=settings.attachment_max_bytes,
        timeout_seconds=settings.attachment_timeout_seconds,
        concurrency=settings.attachment_concurrency,
    )


def slack_options(settings: Settings, *, ingress: bool, model_id: str) -> SlackOptions:
    """``ingress=False``: no HTTP endpoint, no Socket Mode connection, so no signing secret or app
    token needed."""
    from adapters.slack import SlackOptions

    if settings.slack_bot_token is None:
        raise ConfigError("SOLARBOT_SLACK_BOT_TOKEN: not set")
    secret = settings.slack_signing_secret
    app_token = settings.slack_app_token
    return SlackOptions(
        bot_token=settings.slack_bot_token.get_secret_value(),
        signing_secret=secret.get_secret_value() if secret is not None else None,
        app_token=app_token.get_secret_value() if app_token is not None else None,
        mode=settings.slack_mode,
        host=settings.slack_host,
        port=settings.slack_port,
        path=settings.slack_path,
        command=settings.slack_command,
        allowed_workspaces=frozenset(settings.slack_allowed_workspaces),
        allowed_channels=frozenset(settings.slack_allowed_channels),
        admin_users=frozenset(settings.slack_admin_users),
        support_group=settings.slack_support_group,
        api_url=settings.slack_api_url,
        model_id=model_id,
        default_system_prompt=settings.system_prompt,
        edit_interval=settings.edit_interval_seconds,
        ingress=ingress,
        streaming=settings.slack_streaming,
        handoff_keyword=settings.handoff_keywords[0] if settings.handoff_keywords else "",
        assistant=settings.slack_assistant,
        suggested_prompts=settings.slack_suggested_prompts,
        attachments=attachment_options(settings),
    )


def webhook_options(settings: Settings, *, ingress: bool) -> WebhookOptions:
    from adapters.webhook import WebhookOptions

    if settings.webhook_url is None:
        raise ConfigError("SOLARBOT_WEBHOOK_URL is not set")
    secret = settings.webhook_secret
    return WebhookOptions(
        url=settings.webhook_url,
        secret=secret.get_secret_value() if secret is not None else None,
        timeout=settings.webhook_timeout_seconds,
        edit_interval=settings.edit_interval_seconds,
        limit=settings.webhook_message_limit,
        port=settings.webhook_port,
        host=settings.webhook_host,
        ingress=ingress,
    )


def limit_settings(settings: Settings) -> LimitSettings:
    return LimitSettings(
        max_message_chars=settings.max_message_chars,
        user_rate_per_minute=settings.user_rate_per_minute,
        user_burst=settings.user_burst,
        channel_rate_per_minute=settings.channel_rate_per_minute,
        channel_burst=settings.channel_burst,
        channel_queue_limit=settings.channel_queue_limit,
        refusal_notice_seconds=settings.refusal_notice_seconds,
        handoff_ping_cooldown_seconds=settings.handoff_ping_cooldown_seconds,
        handoff_workspace_pings=settings.handoff_workspace_pings,
        handoff_workspace_window_seconds=settings.handoff_workspace_window_seconds,
        user_daily_tokens=settings.user_daily_tokens,
        usage_zone=usage_zone(settings.usage_timezone),
    )


def worker_options(settings: Settings, *, embedder: Embedder | None = None) -> WorkerOptions:
    return WorkerOptions(
        system_prompt=settings.system_prompt,
        max_new_tokens=settings.max_new_tokens,
        sampling=SamplingParams(temperature=settings.temperature, top_p=settings.top_p),
        concurrency=settings.worker_concurrency or None,  # unset or 0: the engine's capacity
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        retry_base_seconds=settings.retry_base_seconds,
        retry_max_seconds=settings.retry_max_seconds,
        poll_seconds=settings.poll_seconds,
        knowledge=AnswerOptions(
            passages=settings.kb_passages,
            passage_tokens=settings.kb_passage_tokens,
            min_relevance=settings.kb_min_relevance,
            embedder=embedder,
        ),
        handoff_keyword=settings.handoff_keywords[0] if settings.handoff_keywords else "",
        attachment_tokens=settings.attachment_token_budget,
    )


def redacted_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@dataclass
class Service:
    """Adapters (ingress + egress), the engine and, unless ``run_worker`` is False, a worker."""

    settings: Settings
    repository: Repository
    engine: Engine | None
    adapters: Sequence[ChatAdapter]
    run_worker: bool = True
    drain_seconds: float = 30.0
    clock: WallClock = utc_now  # the wall clock of quotas and support hours (tests move it)

    def __post_init__(self) -> None:
        self.metrics = Metrics()
        self.metrics.watch(
            repository=self.repository, engine=self.engine if self.run_worker else None
        )
        self.metrics_server: MetricsServer | None = None
        self._started_adapters: set[str] = set()
        self._model_loading = False
        policy = FollowupPolicy(
            schedule=parse_support_hours(self.settings.support_hours),
            reminder_minutes=self.settings.handoff_reminder_minutes,
            clock=self.clock,
        )
        self.intake = Intake(
            self.repository,
            limits=Limits(limit_settings(self.settings), wall_clock=self.clock),
            handoff_keywords=self.settings.handoff_keywords,
            followups=policy,
        )
        # Held support pings and reminders, sent by every process that has the adapters.
        self.followups: HandoffFollowups | None = None
        if policy.active and any(isinstance(a, HandoffNotifier) for a in self.adapters):
            self.followups = HandoffFollowups(
                self.repository,
                {adapter.platform: adapter for adapter in self.adapters},
                policy=policy,
                poll_seconds=max(self.settings.poll_seconds, FOLLOWUP_MIN_POLL_SECONDS),
            )
        for adapter in self.adapters:
            self.intake.register(adapter)
        self.worker: Worker | None = None
        self.serving = asyncio.Event()  # the model is loaded and the worker runs
        self.model_load_seconds: float | None = None
        self.stopping = asyncio.Event()
        self.ingress_failure: str | None = None
        self.intake.on_ingress_failure(self._ingress_failed)

    def _ingress_failed(self, platform: str, reason: str) -> None:
        if self.ingress_failure is None:
            self.ingress_failure = f"{platform} can no longer receive messages: {reason}"
        self.stopping.set()

    async def run(self) -> None:
        """Run until ``stopping`` is set (signals, end of console input), then shut down cleanly."""
        if self.settings.metrics_port is not None:
            # First, so /healthz answers (and /readyz says why not ready) during a long model load.
            self.metrics_server = MetricsServer(
                self.metrics,
                host=self.settings.metrics_host,
                port=self.settings.metrics_port,
                readiness=self.readiness,
            )
            await self.metrics_server.start()
        worker_task: asyncio.Task[None] | None = None
        followups_task: asyncio.Task[None] | None = None
        if not self.run_worker:
            # No engine here (``--role adapters``): the ``prompt`` command still measures channel
            # prompts in tokens, with the tokenizer's files alone (bot/prompt_room.py). A daemon
            # thread: a slow hub never delays start-up or shutdown.
            threading.Thread(
                target=self._load_prompt_gauge, name="prompt-gauge", daemon=True
            ).start()
        try:
            # Hybrid retrieval's model, loaded once for the worker's questions and the intake's 📚
            # learning, before any adapter can deliver a reaction (a bad setting stops start-up).
            embedder = await asyncio.to_thread(load_embedder, self.settings.kb_embeddings)
            self.intake.embedder = embedder
            for adapter in self.adapters:
                await adapter.start(self.intake)
                self._started_adapters.add(adapter.platform)
                log.info("adapter %s started", adapter.platform)
            if self.followups is not None:
                followups_task = asyncio.create_task(
                    self.followups.run(self.stopping), name="handoff-followups"
                )
            if self.run_worker:
                if self.engine is None:
                    raise ConfigError("a worker needs an engine")
                log.info("loading model %s", self.engine.model_id)
                began = time.monotonic()
                self._model_loading = True
                try:
                    await self.engine.start()  # warm-up happens before any job is claimed
                finally:
                    self._model_loading = False
                self.model_load_seconds = time.monotonic() - began
                log.info("model %s ready in %.1f s", self.engine.model_id, self.model_load_seconds)
                window = self.engine.context_window
                if window <= self.settings.max_new_tokens:  # e.g. what an OpenAI server serves
                    raise ContextWindowError(
                        f"{self.engine.model_id!r} has a context window of {window} tokens, not "
                        f"larger than SOLARBOT_MAX_NEW_TOKENS={self.settings.max_new_tokens}: "
                        "lower SOLARBOT_MAX_NEW_TOKENS (or set SOLARBOT_CONTEXT_WINDOW)"
                    )
                self.intake.prompt_gauge.attach(
                    self.engine.tokenizer,
                    context_window=self.engine.context_window,
                    max_new_tokens=self.settings.max_new_tokens,
                )
                self.worker = Worker(
                    repository=self.repository,
                    engine=self.engine,
                    adapters={adapter.platform: adapter for adapter in self.adapters},
                    options=worker_options(self.settings, embedder=embedder),
                    metrics=self.metrics,
                )
                self.intake.on_enqueued(self.worker.wake)
                worker_task = asyncio.create_task(self.worker.run(), name="worker")
                self.serving.set()
            stop_waiter = asyncio.create_task(self.stopping.wait())
            waiters: list[asyncio.Task[None] | asyncio.Task[bool]] = [stop_waiter]
            if worker_task is not None:
                waiters.append(worker_task)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            stop_waiter.cancel()
            if worker_task is not None and worker_task.done():
                worker_task.result()  # the worker crashed: surface its error
            if self.ingress_failure is not None:  # after a clean shutdown (finally), exit non-zero
                raise SolarbotError(self.ingress_failure)
        finally:
            if followups_task is not None:
                followups_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await followups_task
            if self.worker is not None:
                await self.worker.stop(drain_seconds=self.drain_seconds)
            if worker_task is not None and not worker_task.done():
                await worker_task
            for adapter in self.adapters:
                if adapter.platform in self._started_adapters:
                    await adapter.stop()
            self._started_adapters.clear()
            if self.engine is not None:
                await self.engine.close()
            if self.metrics_server is not None:
                await self.metrics_server.stop()

    def _load_prompt_gauge(self) -> None:
        """Give the intake's prompt gauge a tokenizer without loading the model (its files only);
        without one, prompts are checked in characters and the ``prompt`` command says so.
        Blocking (a thread of its own)."""
        settings = self.settings
        tokenizer: Tokenizer
        try:
            if settings.engine == "fake":
                from bot.generation.fake import FakeEngine

                fake = FakeEngine(context_window=settings.context_window or 4096)
                tokenizer, window = fake.tokenizer, fake.context_window
            else:
                tokenizer, window = load_tokenizer(
                    settings.model,
                    offline=settings.offline,
                    context_window=settings.context_window,
                )
        except Exception as exc:
            log.warning(
                "could not load the tokenizer of %s (%s): channel prompts are checked in "
                "characters only",
                settings.model,
                exc,
            )
            return
        self.intake.prompt_gauge.attach(
            tokenizer, context_window=window, max_new_tokens=settings.max_new_tokens
        )
        log.info("prompt gauge ready: %s tokens per prompt", window - settings.max_new_tokens)

    async def readiness(self) -> Readiness:
        """/readyz: the model is loaded (when this process runs a worker), the database answers
        and every adapter has started (and says it is connected, where it can tell)."""
        checks: dict[str, str] = {}
        if self.run_worker:
            if self.engine is None:
                checks["model"] = "no engine"
            else:
                health = self.engine.health()
                if health.ready:
                    checks["model"] = "ok"
                elif self._model_loading:
                    checks["model"] = "loading"
                else:
                    checks["model"] = health.detail or "not ready"
        try:
            await asyncio.to_thread(self.repository.ping)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable ({type(exc).__name__})"
        for adapter in self.adapters:
            if adapter.platform not in self._started_adapters:
                checks[f"adapter:{adapter.platform}"] = "not started"
            elif isinstance(adapter, ReportsConnection) and not adapter.connected:
                checks[f"adapter:{adapter.platform}"] = "disconnected"
            else:
                checks[f"adapter:{adapter.platform}"] = "ok"
        return Readiness(ready=all(v == "ok" for v in checks.values()), checks=checks)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.stopping.set)

    async def console_session(self, console: ConsoleAdapter) -> None:
        """The terminal chat: tell the console when the model is ready, and stop the service
        when the console's input has ended and its replies are done."""
        announce = asyncio.create_task(self._announce_ready(console))
        try:
            await self.stop_when_console_done(console)
        finally:
            announce.cancel()

    async def _announce_ready(self, console: ConsoleAdapter) -> None:
        await self.serving.wait()
        model = self.engine.model_id if self.engine is not None else ""
        # Questions typed during the load are about to be answered: their replies end with the
        # prompt, so showing it now would put the first answer on the prompt's line.
        owed = await asyncio.to_thread(self.repository.count_jobs, platform=CONSOLE)
        console.model_ready(model, self.model_load_seconds or 0.0, prompt=owed == 0)

    async def stop_when_console_done(self, console: ConsoleAdapter) -> None:
        """End of console input: finish the console's pending replies, then stop the service."""
        await console.input_closed.wait()
        while not self.stopping.is_set():
            pending = await asyncio.to_thread(self.repository.count_jobs, platform=CONSOLE)
            if pending == 0:
                break
            await asyncio.sleep(0.05)
        self.stopping.set()
