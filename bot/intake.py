"""Intake: the one door from adapters into the core.

``submit`` stores the user turn and enqueues its job in one transaction (see
``Repository.enqueue``); an event seen before (same dedupe key) is a no-op returning the same job.

With ``limits`` (``bot.limits``) a message over the length limit, over the sender's or the channel's
rate, from a sender over their daily token quota, or into a channel whose queue is full is refused before anything is stored: the user gets a
polite notice through the platform's adapter (``register``) and ``submit`` returns a result with
``refused`` set. A redelivered event that was already accepted is never refused.

Human handoff: a message containing one of ``handoff_keywords`` is stored without a reply and
hands its conversation to a human: the platform's adapter pings its support group/role
(``HandoffNotifier.post_handoff``; platforms without one, the console and the webhook, never hand
off) and later messages there are ignored (nothing stored) until someone uses the ``resume``
command (``bot.commands``). An announcement that fails is logged; the handoff stands. With
``limits`` the ping is rate-limited in the database (``Repository.claim_handoff_ping``, so every
ingress process agrees): one per conversation and per asker within a cooldown, a cap per workspace
and window; a handoff over those limits still silences its conversation, and the asker is told
(without a ping) that the team was notified already. Outside support hours the ping is held until
they start and the asker is told when that is; reminders follow a ping when nobody else writes
(``bot.handoff_followups``).

Messages that do not mention the bot reach ``unaddressed`` (auto-answer channels,
``bot.auto_answer``): answered in a thread of their own in ``mode auto`` channels, the asker's
follow-ups there too, someone else's hands the thread to a human (quietly: no ping), and in a
handed-off conversation any person's message cancels the pending reminder.

Refusals are told once per reason and window per user (``Limits.first_notice``), marked with
``NOTICE_TO`` so that platforms with private messages (Slack: ephemeral) tell only the sender.
Chat sub-commands pass the same rate limits (``admit_command``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime

from bot import answering, learning, logs, texts
from bot.auto_answer import AutoAnswer, Route
from bot.delivery import NOTICE_TO, ChatAdapter, HandoffNotifier, ReplyTarget, post_clean_notice
from bot.handoff_followups import FollowupPolicy, back_at
from bot.learning import ChatMessage
from bot.limits import Admission, Limits, Refusal
from bot.prompt_room import PromptGauge
from bot.records import EnqueueResult, FollowupKind, Incoming, JobStatus, Rating
from bot.support_hours import SupportHours
from storage.repository import Repository

log = logging.getLogger(__name__)

REMEMBERED_REFUSALS = 10_000
# Reactions that are feedback: Unicode (Discord) and Slack's names; skin tones are ignored.
_UP = frozenset({"👍", "+1", "thumbsup"})
_DOWN = frozenset({"👎", "-1", "thumbsdown"})
_SKIN_TONES = "".join(chr(code) for code in range(0x1F3FB, 0x1F400))


def rating_of(emoji: str) -> Rating | None:
    """👍/👎 (any skin tone; Slack's ``+1``, ``thumbsup``, ``-1``, ``thumbsdown``) as a rating."""
    name = emoji.split("::", 1)[0].strip(_SKIN_TONES + "\ufe0f")
    if name in _UP:
        return Rating.UP
    if name in _DOWN:
        return Rating.DOWN
    return None


class Intake:
    """Implements ``bot.delivery.IntakePort``, the door adapters use."""

    def __init__(
        self,
        repository: Repository,
        *,
        limits: Limits | None = None,
        handoff_keywords: Sequence[str] = (),
        followups: FollowupPolicy | None = None,
    ) -> None:
        """``handoff_keywords``: a message containing one (any case, spaces collapsed) hands its
        conversation to a human. ``followups``: support hours and reminders for handoffs
        (``bot.handoff_followups``)."""
        self._repository = repository
        self._limits = limits
        self._followups = followups or FollowupPolicy()
        self._handoff_keywords = tuple(
            " ".join(keyword.lower().split()) for keyword in handoff_keywords if keyword.strip()
        )
        self._listeners: list[Callable[[], None]] = []
        self._failure_listeners: list[Callable[[str, str], None]] = []
        self._notifiers: dict[str, ChatAdapter] = {}
        # Events refused lately: a redelivery (Slack retries, gateway replays) is not told twice.
        self._refused: OrderedDict[str, str] = OrderedDict()
        # Measures channel prompts in tokens for the ``prompt`` command (the service attaches a
        # tokenizer once it has one; ``bot.prompt_room``).
        self.prompt_gauge = PromptGauge()
        # Messages nobody addressed to the bot: auto-answer channels (``bot.auto_answer``).
        self._auto_answer = AutoAnswer(repository, reminders=self._followups.reminder_minutes > 0)

    def register(self, adapter: ChatAdapter) -> None:
        """The adapter that tells a platform's users why a message was refused."""
        self._notifiers[adapter.platform] = adapter

    def on_enqueued(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each new job (an in-process worker wakes up instead of polling)."""
        self._listeners.append(listener)

    def on_ingress_failure(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(platform, reason)`` when an adapter can no longer receive messages."""
        self._failure_listeners.append(listener)

    def ingress_failed(self, platform: str, reason: str) -> None:
        """An adapter's ingress died for good (e.g. its connection was refused for good): the
        service stops with an error, so a supervisor restarts it instead of leaving a deaf bot."""
        log.error("%s can no longer receive messages: %s", platform, reason)
        for listener in self._failure_listeners:
            listener(platform, reason)

    async def submit(self, incoming: Incoming) -> EnqueueResult | None:
        """Store and enqueue ``incoming``. None when its channel is switched off."""
        with logs.bound(conversation=logs.describe_conversation(incoming.conversation)):
            return await self._submit(incoming)

    async def _submit(self, incoming: Incoming) -> EnqueueResult | None:
        admission: Admission | None = None
        if self._limits is not None:
            checked = await self._check_limits(self._limits, incoming)
            if isinstance(checked, EnqueueResult):
                return checked
            admission = checked
        # The queue limit is checked by the enqueue itself, in its transaction (atomic).
        queue_limit = self._limits.settings.channel_queue_limit if self._limits is not None else 0
        try:
            result = await asyncio.to_thread(
                self._repository.enqueue,
                incoming,
                handoff=self._hands_off(incoming),
                channel_queue_limit=queue_limit,
            )
        except BaseException:
            if admission is not None:
                admission.refund()
            raise
        if admission is not None and (result is None or not result.created):
            admission.refund()  # nothing new was accepted
        if result is not None and result.refused is not None and self._limits is not None:
            return await self._refuse(self._limits, incoming, self._limits.queue_full())
        if result is None:
            log.info("ignored a message in disabled channel %s", incoming.channel)
        elif result.handoff:
            if result.created:
                log.info("conversation handed to a human (job %s)", result.job_id)
                await self._announce_handoff(incoming, result)
            else:
                log.info("ignored a message in a conversation handed to a human")
                if self._followups.reminder_minutes > 0:  # someone other than the asker: a human
                    await asyncio.to_thread(
                        self._repository.human_wrote_in_handoff,
                        incoming.conversation,
                        author_id=incoming.author_id,
                    )
        elif result.created:
            log.debug("job %s enqueued for %s", result.job_id, incoming.dedupe_key)
            for listener in self._listeners:
                listener()
        else:
            log.info("duplicate event %s ignored (job %s)", incoming.dedupe_key, result.job_id)
        return result

    async def unaddressed(self, message: Incoming, *, top_level: bool) -> Route:
        """A person's message that does not mention the bot: answer it (auto-answer channels),
        hand its thread to a human, or nothing (``bot.auto_answer``)."""
        with logs.bound(conversation=logs.describe_conversation(message.conversation)):
            return await self._auto_answer.route(message, top_level=top_level)

    async def _check_limits(
        self, limits: Limits, incoming: Incoming
    ) -> Admission | EnqueueResult | None:
        """The tokens taken for an accepted message, or the result of a refused or already seen one."""
        refusal = limits.check_length(incoming)
        admission: Admission | None = None
        if refusal is None:
            admitted = limits.admit(incoming)
            if isinstance(admitted, Refusal):
                refusal = admitted
            else:
                admission = admitted
        if refusal is None and limits.quota_enabled:
            refusal = await self._check_quota(limits, incoming)
        if refusal is None:
            return admission
        if admission is not None:
            admission.refund()
        seen = await asyncio.to_thread(self._repository.job_for_event, incoming.dedupe_key)
        if seen is not None:
            return seen  # a redelivery of a message we accepted: not a new message to refuse
        return await self._refuse(limits, incoming, refusal)

    async def _check_quota(self, limits: Limits, incoming: Incoming) -> Refusal | None:
        """The daily token quota: what the sender's replies of the day cost so far, read from
        the day's jobs. Tokens are known once a reply is generated, so the questions a user has
        queued or being answered when they reach the quota are still answered: the quota is
        exceeded by at most what those in-flight replies cost (docs/operations-reliability.md)."""
        now = limits.wall_clock()
        used = await asyncio.to_thread(
            self._repository.tokens_used,
            platform=incoming.platform,
            workspace=incoming.workspace,
            author_id=incoming.author_id,
            since=limits.usage_day_start(now),
        )
        return limits.check_quota(used, now=now)

    async def _refuse(self, limits: Limits, incoming: Incoming, refusal: Refusal) -> EnqueueResult:
        """Tell the user why (once per event: a redelivery is not told again)."""
        if incoming.dedupe_key in self._refused:
            reason = self._refused[incoming.dedupe_key]
            return EnqueueResult(
                job_id=0, conversation_id=0, message_id=0, created=False, refused=reason
            )
        self._refused[incoming.dedupe_key] = refusal.reason
        if len(self._refused) > REMEMBERED_REFUSALS:
            self._refused.popitem(last=False)
        refusal = limits.first_notice(
            refusal,
            platform=incoming.platform,
            workspace=incoming.workspace,
            author_id=incoming.author_id,
        )
        log.info(
            "refused a message from %s in %s:%s (%s%s)",
            incoming.author_id,
            incoming.platform,
            incoming.channel,
            refusal.reason,
            ", told already" if refusal.quiet else "",
        )
        if not refusal.quiet:
            await self._tell(incoming, refusal.notice)
        return EnqueueResult(
            job_id=0, conversation_id=0, message_id=0, created=False, refused=refusal.reason
        )

    def wants_human(self, text: str) -> bool:
        """The message asks for a human (contains one of the handoff keywords)."""
        if not self._handoff_keywords:
            return False
        flat = " ".join(text.lower().split())
        return any(keyword in flat for keyword in self._handoff_keywords)

    def _hands_off(self, incoming: Incoming) -> bool:
        """Only platforms whose adapter announces handoffs (and so has people to ping and a
        ``resume`` command) hand conversations over: the console and the webhook never do."""
        adapter = self._notifiers.get(incoming.platform)
        return isinstance(adapter, HandoffNotifier) and self.wants_human(incoming.text)

    async def _announce_handoff(self, incoming: Incoming, result: EnqueueResult) -> None:
        adapter = self._notifiers.get(incoming.platform)
        if not isinstance(adapter, HandoffNotifier):
            return
        target = ReplyTarget(
            job_id=result.job_id,
            conversation=incoming.conversation,
            reply_target=incoming.reply_target,
        )
        hours = self._followups.schedule.hours_for(incoming.workspace)
        now = self._followups.clock()
        held_back: str | None = None
        if self._limits is not None:
            settings = self._limits.settings
            try:
                held_back = await asyncio.to_thread(
                    self._repository.claim_handoff_ping,
                    incoming.conversation,
                    requester=incoming.author_id,
                    cooldown_seconds=settings.handoff_ping_cooldown_seconds,
                    workspace_cap=settings.handoff_workspace_pings,
                    window_seconds=settings.handoff_workspace_window_seconds,
                    now=now,
                )
            except Exception as exc:  # someone asked for a human: rather one ping too many
                log.warning("could not check the handoff ping limits, pinging: %s", exc)
        if hours is not None and not hours.is_open(now):
            # The ping limits count a held ping too: a night of requests is not a morning of pings.
            await self._hold_ping(adapter, target, hours, now, hold=held_back is None)
            return
        try:
            if held_back is None:
                await adapter.post_handoff(target)
                await self._schedule(
                    target.job_id, FollowupKind.REMINDER, now, asked=now, pinged=True
                )
            else:
                # The handoff stands (the conversation goes quiet); only the ping is held back.
                log.info("handoff without a ping (%s)", held_back)
                await post_clean_notice(adapter, target, texts.HANDOFF_ALREADY_NOTIFIED)
        except Exception as exc:  # the handoff stands; the platform is having a bad moment
            log.warning("could not announce a handoff on %s: %s", incoming.platform, exc)

    async def _hold_ping(
        self,
        adapter: ChatAdapter,
        target: ReplyTarget,
        hours: SupportHours,
        now: datetime,
        *,
        hold: bool,
    ) -> None:
        """Outside support hours: the ping waits (stored) until they start, unless the ping
        limits hold it back (``hold`` False: this asker or conversation has one coming, or the
        workspace is at its cap); the asker is told when the team is back."""
        if hold:
            opening = hours.next_opening(now)
            await self._schedule(target.job_id, FollowupKind.PING, opening, asked=now)
            log.info("handoff outside support hours: the ping is held")
        else:
            log.info("handoff outside support hours, within the ping limits: no ping held")
        try:
            notice = texts.HANDOFF_AFTER_HOURS.format(back=back_at(hours, now))
            await post_clean_notice(adapter, target, notice)
        except Exception as exc:  # the handoff stands, and so does the held ping
            log.warning("could not tell the asker about support hours: %s", exc)

    async def _schedule(
        self,
        job_id: int,
        kind: FollowupKind,
        when: datetime,
        *,
        asked: datetime,
        pinged: bool = False,
    ) -> None:
        """Store a follow-up of a handoff asked for at ``asked``: a held ping due ``when``, or
        (``pinged``: the support group was pinged at ``when``) a reminder, if reminders are on."""
        due = self._followups.reminder_due(when) if pinged else when
        if due is None:
            return
        try:
            await asyncio.to_thread(
                self._repository.schedule_followup,
                job_id=job_id,
                kind=kind,
                due_at=due,
                asked_at=asked,
            )
        except Exception as exc:
            log.warning("could not store a handoff %s: %s", kind.value, exc)

    async def _tell(self, incoming: Incoming, text: str) -> None:
        adapter = self._notifiers.get(incoming.platform)
        if adapter is None:
            return
        # ``notice_to``: a refusal is for the sender only, where the platform can say so privately.
        target = ReplyTarget(
            job_id=0,
            conversation=incoming.conversation,
            reply_target={**incoming.reply_target, NOTICE_TO: incoming.author_id},
        )
        try:
            await post_clean_notice(adapter, target, text)
        except Exception as exc:  # the refusal stands; the platform is having a bad moment
            log.warning("could not tell %s why a message was refused: %s", incoming.platform, exc)

    async def reaction(
        self,
        *,
        platform: str,
        workspace: str,
        message_id: str,
        user_id: str,
        emoji: str,
        added: bool,
        channel: str | None = None,
    ) -> int | None:
        """A reaction added to (or removed from) ``message_id``: a 👍/👎 on a bot reply is stored
        as feedback on that reply (removed again with the reaction). Returns the reply's job id,
        or None when the reaction is no feedback (another emoji, not on a bot reply)."""
        rating = rating_of(emoji)
        if rating is None:
            return None
        change = self._repository.add_feedback if added else self._repository.remove_feedback
        job_id = await asyncio.to_thread(
            change,
            platform=platform,
            workspace=workspace,
            channel=channel,
            message_id=message_id,
            user_id=user_id,
            rating=rating,
        )
        if job_id is not None:
            log.info(
                "feedback %s %s on job %s by %s",
                rating.value,
                "added" if added else "removed",
                job_id,
                user_id,
            )
        return job_id

    async def learn(self, message: ChatMessage, *, added: bool) -> str | None:
        """An admin added (or removed) 📚 on ``message``: it is added to (removed from) the
        channel's knowledge base (``bot.learning``). Returns the collection, or None when
        nothing changed. Adapters check that the reacting user is an admin."""
        if added:
            collection = await asyncio.to_thread(
                learning.learn,
                self._repository,
                message,
                tokenizer=self.prompt_gauge.tokenizer,
            )
        else:
            collection = await asyncio.to_thread(
                learning.forget,
                self._repository,
                platform=message.platform,
                workspace=message.workspace,
                channel=message.channel,
                message_id=message.message_id,
            )
        if collection is not None:
            log.info(
                "%s message %s %s knowledge base %s",
                message.platform,
                message.message_id,
                "added to" if added else "removed from",
                collection,
            )
        return collection

    async def waiting_help(self, incoming: Incoming) -> str:
        """What a queued question's placeholder may show at once: links to the channel's top
        knowledge-base documents for it ("" without a knowledge base or a hit)."""
        return await asyncio.to_thread(self._waiting_help, incoming)

    def _waiting_help(self, incoming: Incoming) -> str:
        config = self._repository.channel_config(
            platform=incoming.platform, workspace=incoming.workspace, channel=incoming.channel
        )
        return answering.waiting_help(
            self._repository,
            collections=config.kb_collections,
            question=incoming.text,
            platform=incoming.platform,
        )

    async def queue_position(self, job_id: int) -> int:
        return await asyncio.to_thread(self._repository.queue_position, job_id)

    async def job_status(self, job_id: int) -> JobStatus | None:
        record = await asyncio.to_thread(self._repository.job, job_id)
        return record.status if record is not None else None

    @property
    def repository(self) -> Repository:
        """The store behind this intake (chat sub-commands read and change channel settings)."""
        return self._repository

    async def admit_command(
        self, *, platform: str, workspace: str, channel: str, author_id: str
    ) -> Refusal | None:
        """Chat sub-commands pass the same rate limits as messages (their answers are posts
        too). None = go ahead; else the refusal, ``quiet`` when this user was told already within
        the window (say nothing then). Without limits every command is admitted."""
        if self._limits is None:
            return None
        admitted = self._limits.admit_command(
            platform=platform, workspace=workspace, channel=channel, author_id=author_id
        )
        if not isinstance(admitted, Refusal):
            return None
        refusal = self._limits.first_notice(
            admitted, platform=platform, workspace=workspace, author_id=author_id
        )
        log.info(
            "refused a command from %s in %s:%s (%s%s)",
            author_id,
            platform,
            channel,
            refusal.reason,
            ", told already" if refusal.quiet else "",
        )
        return refusal
