"""The worker: claims jobs, builds prompts, streams generation to the platform, records the result.

- jobs are claimed with a lease that is renewed while the job runs; a worker that dies leaves its
  lease to expire and another worker (or this one after a restart) picks the job up;
- the repository hands out only the oldest unfinished job of each conversation, so replies stay in
  order, while different conversations run concurrently (the engine batches them);
- delivery and generation errors are retried with exponential backoff and jitter (honouring a
  platform's Retry-After); after ``max_attempts`` the job is ``failed``, the error stored and a short
  apology posted (while the platform is still down the job waits, queued, until the apology is
  delivered: it is never dropped silently);
- the assistant turn is recorded and the job marked done in one transaction;
- ``stop()`` drains running jobs for a grace period, then hands the rest back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from bot import answering, attachments, logs, texts
from bot.answering import AnswerOptions
from bot.citations import Source, with_sources
from bot.conversation import BuiltPrompt, PromptBuilder, Turn
from bot.delivery import (
    ChatAdapter,
    HandoffNotifier,
    ReplyStream,
    ReplyTarget,
    open_clean_reply,
    post_clean_notice,
)
from bot.errors import DeliveryError, PromptTooLongError, SolarbotError
from bot.generation.engine import Engine, GenerationRequest, SamplingParams
from bot.records import ClaimedJob, JobTrace, KnowledgeMode, Role
from bot.splitting import truncate_at_word
from storage.repository import Repository

if TYPE_CHECKING:
    from bot.metrics import Metrics

log = logging.getLogger(__name__)

# Appended to a job's stored error while its apology waits for the platform to come back.
APOLOGY_PENDING = " (apology not delivered yet)"


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def delivery_error_kind(error: DeliveryError) -> str:
    """The ``kind`` label of a delivery error metric."""
    if error.kind:
        return error.kind
    return "rate_limited" if error.retry_after is not None else "failed"


class _Generated(NamedTuple):
    text: str
    trace: JobTrace
    completion_tokens: int


@dataclass(frozen=True, kw_only=True)
class _Prepared:
    """What a job's reply is made from: the prompt, the knowledge-base passages in it (numbered
    [1]..[k]) or, in strict mode with nothing relevant found, the "I don't know" answer."""

    prompt: BuiltPrompt | None
    sources: tuple[Source, ...] = ()
    chunk_ids: tuple[int, ...] = ()
    answer: str | None = None  # a reply given without the engine
    notes: tuple[str, ...] = ()  # lines about the question's attached files (bot.attachments)


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    system_prompt: str
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Jobs generated at once; None: as many as the engine runs at once (a larger value is capped).
    concurrency: int | None = None
    lease_seconds: float = 60.0
    max_attempts: int = 5
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    poll_seconds: float = 0.5
    history_limit: int = 400
    worker_id: str = field(default_factory=default_worker_id)
    # Answering from a channel's knowledge base (bot/answering.py).
    knowledge: AnswerOptions = field(default_factory=AnswerOptions)
    # The first SOLARBOT_HANDOFF_KEYWORDS entry: strict mode's "I don't know" says how to reach a
    # human with it ("" = handoff off).
    handoff_keyword: str = ""
    # SOLARBOT_ATTACHMENT_TOKEN_BUDGET: tokens of attached files per message (0: not given).
    attachment_tokens: int = 1500


def effective_concurrency(wanted: int | None, *, capacity: int) -> int:
    """How many jobs a worker runs at once: ``wanted``, or the engine's ``capacity`` when unset,
    never more than ``capacity`` (further jobs would only wait inside the engine while their
    leases run, instead of waiting in the queue for any worker)."""
    if not wanted:
        return capacity
    if wanted > capacity:
        log.warning(
            "SOLARBOT_WORKER_CONCURRENCY=%d is more than the engine runs at once (%d): using %d",
            wanted,
            capacity,
            capacity,
        )
        return capacity
    return wanted


class Worker:
    def __init__(
        self,
        *,
        repository: Repository,
        engine: Engine,
        adapters: Mapping[str, ChatAdapter],
        options: WorkerOptions,
        metrics: Metrics | None = None,
    ) -> None:
        self._repository = repository
        self._metrics = metrics
        self._engine = engine
        self._adapters = dict(adapters)
        self._options = options
        self._concurrency = effective_concurrency(
            options.concurrency, capacity=engine.max_concurrent_requests
        )
        self._builder = PromptBuilder(
            engine.tokenizer,
            context_window=engine.context_window,
            max_new_tokens=options.max_new_tokens,
        )
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._active: dict[int, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.completed = 0
        self.failed = 0

    @property
    def worker_id(self) -> str:
        return self._options.worker_id

    @property
    def concurrency(self) -> int:
        """Jobs this worker runs at once."""
        return self._concurrency

    @property
    def active_jobs(self) -> int:
        return len(self._active)

    def wake(self) -> None:
        """Something was enqueued: look for work now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and process jobs until ``stop()`` is called."""
        requeued = await asyncio.to_thread(self._repository.requeue_expired)
        if requeued:
            log.warning("requeued %d job(s) whose worker died", requeued)
        log.info("worker %s started (concurrency %d)", self.worker_id, self._concurrency)
        while not self._stopping.is_set():
            self._wake.clear()
            free = self._concurrency - len(self._active)
            if free > 0:
                try:
                    jobs = await asyncio.to_thread(
                        self._repository.claim,
                        worker_id=self.worker_id,
                        limit=free,
                        lease_seconds=self._options.lease_seconds,
                        platforms=list(self._adapters),
                        history_limit=self._options.history_limit,
                    )
                except Exception:
                    log.exception("claiming jobs failed; retrying")
                    jobs = []
                for job in jobs:
                    self._spawn(job)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_for_work(), timeout=self._options.poll_seconds)

    async def _wait_for_work(self) -> None:
        waiters = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _spawn(self, job: ClaimedJob) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
        self._active[job.id] = task
        self._idle.clear()

        def _done(_task: asyncio.Task[None]) -> None:
            self._active.pop(job.id, None)
            if not self._active:
                self._idle.set()
            self._wake.set()  # a slot is free: maybe the conversation's next job is ready

        task.add_done_callback(_done)

    async def stop(self, *, drain_seconds: float = 30.0) -> None:
        """Stop claiming; let running jobs finish for ``drain_seconds``; release the rest."""
        self._stopping.set()
        if self._active:
            log.info("draining %d running job(s)", len(self._active))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=drain_seconds)
        for task in list(self._active.values()):
            task.cancel()
        if self._active:
            await asyncio.gather(*self._active.values(), return_exceptions=True)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # ------------------------------------------------------------------ one job

    async def _run_job(self, job: ClaimedJob) -> None:
        # This task's log lines (and those of the threads it starts) name the job.
        logs.bind(job_id=job.id, conversation=logs.describe_conversation(job.conversation))
        renewer = asyncio.create_task(self._renew_lease(job, asyncio.current_task()))
        try:
            await self._process(job)
        except asyncio.CancelledError:
            if renewer.done() and renewer.result() is False:
                log.warning("job %s: lease lost to another worker; abandoned", job.id)
            else:
                await asyncio.shield(asyncio.to_thread(self._repository.release, job))
                log.info("job %s released back to the queue", job.id)
            raise
        except Exception:
            log.exception("job %s: unexpected error", job.id)
            await self._retry_or_fail(job, error="internal error (see the worker log)")
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew_lease(self, job: ClaimedJob, owner: asyncio.Task[None] | None) -> bool:
        interval = max(self._options.lease_seconds / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                still_ours = await asyncio.to_thread(
                    self._repository.renew_lease, job, lease_seconds=self._options.lease_seconds
                )
            except Exception:
                log.exception("job %s: renewing the lease failed", job.id)
                continue
            if not still_ours:
                if owner is not None:
                    owner.cancel()
                return False

    async def _process(self, job: ClaimedJob) -> None:
        adapter = self._adapters[job.conversation.platform]
        target = ReplyTarget(
            job_id=job.id,
            conversation=job.conversation,
            reply_target=job.reply_target,
            existing_message_ids=job.reply_message_ids,
            job_key=job.job_key,
        )
        if job.attempt > self._options.max_attempts:  # given up: only the apology is owed
            record = await asyncio.to_thread(self._repository.job, job.id)
            error = (record.error if record is not None else None) or "gave up"
            error = error.removesuffix(APOLOGY_PENDING)
            await self._give_up(job, target, error=error, apology=texts.FAILED_REPLY)
            return
        notice = ""
        reply = job.reply_text
        prepared = _Prepared(prompt=None)
        if reply is None:
            try:
                prepared = await self._prepare(job, adapter)
            except PromptTooLongError as exc:
                await self._give_up(job, target, error=str(exc), apology=texts.PROMPT_TOO_LONG)
                return
            reply = prepared.answer
            if prepared.prompt is not None and prepared.prompt.newest_truncated:
                notice = texts.TRUNCATED_NOTICE + "\n\n"
            notice = attachments.notice(prepared.notes) + notice
        stream: ReplyStream | None = None
        generated: _Generated | None = None
        try:
            stream = await open_clean_reply(adapter, target)
            # A placeholder posted by open_reply is remembered at once, so a crash before the
            # first token still continues that message instead of posting a second reply.
            await self._record_new_ids(job, stream)
            if reply is None:
                assert prepared.prompt is not None
                generated = await self._generate(job, prepared, stream, prefix=notice)
                reply = generated.text
            posted = list(await stream.finish(notice + reply))
        except DeliveryError as exc:
            if self._metrics is not None:
                self._metrics.delivery_error(job.conversation.platform, delivery_error_kind(exc))
            if stream is not None:  # follow-ups posted before the failure are edited on retry
                await self._record_new_ids(job, stream)
            await self._retry_or_fail(
                job, error=f"delivery failed: {exc}", reply_text=reply, retry_after=exc.retry_after
            )
            return
        except SolarbotError as exc:
            await self._retry_or_fail(job, error=f"generation failed: {exc}")
            return
        if generated is not None:
            token_count = generated.completion_tokens
        else:
            token_count = len(self._engine.tokenizer.encode(reply, add_bos=False))
        done = await asyncio.to_thread(
            self._repository.complete,
            job,
            reply_text=reply,
            reply_message_ids=posted,
            token_count=token_count,
            trace=generated.trace if generated is not None else None,
        )
        if done:
            self.completed += 1
            if self._metrics is not None:
                self._metrics.job_done(job.enqueued_at)
            if generated is not None:
                log.info(
                    "job %s done (attempt %d): %d prompt tokens, %d tokens in %d ms by %s",
                    job.id,
                    job.attempt,
                    generated.trace.prompt_tokens,
                    token_count,
                    generated.trace.generation_ms,
                    generated.trace.model_id,
                )
            else:
                log.info("job %s done (attempt %d): reply generated earlier", job.id, job.attempt)
        else:
            log.warning("job %s finished after its lease was lost; result not recorded", job.id)

    async def _record_new_ids(self, job: ClaimedJob, stream: ReplyStream) -> None:
        ids = tuple(stream.message_ids)
        if ids and ids != job.reply_message_ids:
            await asyncio.to_thread(
                self._repository.record_reply_progress, job, reply_message_ids=ids
            )

    async def _prepare(self, job: ClaimedJob, adapter: ChatAdapter) -> _Prepared:
        hands_off = isinstance(adapter, HandoffNotifier)
        return await asyncio.to_thread(self._prepare_sync, job, hands_off=hands_off)

    def _prepare_sync(self, job: ClaimedJob, *, hands_off: bool) -> _Prepared:
        """Runs on a thread: searching and tokenising a long history take milliseconds."""
        messages = job.history or tuple(
            self._repository.history(
                job.conversation_id,
                up_to_message_id=job.message_id,
                limit=self._options.history_limit,
            )
        )
        system_prompt = (
            job.system_prompt if job.system_prompt is not None else self._options.system_prompt
        )
        if job.language:
            instruction = texts.LANGUAGE_INSTRUCTION.format(language=job.language)
            system_prompt = f"{system_prompt}\n\n{instruction}" if system_prompt else instruction
        turns = [
            Turn(
                role="user" if message.role is Role.USER else "assistant",
                text=message.text,
                author_name=message.author_name or None,
            )
            for message in messages
        ]
        files = attachments.files_in_prompt(
            messages,
            turns,
            tokenizer=self._engine.tokenizer,
            system_prompt=system_prompt,
            prompt_budget=self._builder.budget,
            budget=self._options.attachment_tokens,
        )
        if not job.kb_collections or not turns:
            prompt = self._builder.build(system_prompt=system_prompt, history=files.turns)
            return _Prepared(prompt=prompt, notes=files.notes)
        options = self._options.knowledge
        newest = turns[-1].text
        earlier = [turn.text for turn in turns[:-1] if turn.role == "user"]
        previous = earlier[-1] if earlier else None
        passages = answering.retrieve(
            self._repository,
            collections=job.kb_collections,
            newest=newest,
            previous=previous,
            limit=options.passages,
        )
        if job.kb_mode is KnowledgeMode.STRICT:
            best = answering.best_relevance(passages, newest=newest, previous=previous)
            if best < options.min_relevance:
                log.info("job %s: nothing relevant in the knowledge base (%.2f)", job.id, best)
                keyword = self._options.handoff_keyword if hands_off else ""
                return _Prepared(
                    prompt=None, answer=answering.dont_know(keyword), notes=files.notes
                )
            # Strict: only the passages relevant enough are given.
            passages = [
                passage
                for passage in passages
                if max(
                    answering.relevance(newest, passage),
                    answering.relevance(f"{previous}\n{newest}", passage) if previous else 0.0,
                )
                >= options.min_relevance
            ]
        prompt = self._builder.build(
            system_prompt=system_prompt,
            history=files.turns,
            passages=passages,
            passage_intro=answering.passage_intro(job.kb_mode),
            passage_tokens=options.passage_tokens,
        )
        given = [passages[index] for index in prompt.passages_given]
        if job.kb_mode is KnowledgeMode.STRICT and not given:  # none fit the budget
            keyword = self._options.handoff_keyword if hands_off else ""
            return _Prepared(prompt=None, answer=answering.dont_know(keyword), notes=files.notes)
        return _Prepared(
            prompt=prompt,
            sources=tuple(answering.sources_of(given)),
            chunk_ids=tuple(passage.chunk_id for passage in given),
            notes=files.notes,
        )

    async def _generate(
        self, job: ClaimedJob, prepared: _Prepared, stream: ReplyStream, *, prefix: str
    ) -> _Generated:
        """Stream the engine's reply into ``stream``; returns the complete reply and its trace.

        With knowledge-base passages the streamed edits show the text as it comes; the reply
        returned (and kept for a retry) has its citations checked and ends with its sources."""
        prompt = prepared.prompt
        assert prompt is not None
        request = GenerationRequest(
            request_id=f"job-{job.id}-{job.attempt}-{uuid.uuid4().hex[:8]}",
            prompt_ids=prompt.prompt_ids,
            max_new_tokens=self._options.max_new_tokens,
            sampling=self._options.sampling,
            prompt_text=prompt.prompt_text,
        )
        text = ""
        cap = job.max_reply_chars
        known_ids = tuple(stream.message_ids)
        delivery_error: DeliveryError | None = None
        started = time.monotonic()
        first = True
        async with contextlib.aclosing(self._engine.stream(request)) as deltas:
            async for delta in deltas:
                if first and delta:
                    first = False
                    if self._metrics is not None:
                        self._metrics.first_token(job.enqueued_at)
                text += delta
                capped = False
                if cap is not None and len(text) > cap:
                    # The channel's reply length: cut at a word; leaving the loop closes the
                    # stream, which stops the generation.
                    text, capped = truncate_at_word(text, cap), True
                if delivery_error is None:  # else keep generating: the text is saved for a retry
                    try:
                        await stream.update(prefix + text)
                    except DeliveryError as exc:
                        delivery_error = exc
                    else:
                        if tuple(stream.message_ids) != known_ids:
                            known_ids = tuple(stream.message_ids)
                            await asyncio.to_thread(
                                self._repository.record_reply_progress,
                                job,
                                reply_message_ids=known_ids,
                            )
                if capped:
                    break
        seconds = time.monotonic() - started
        completion_tokens = len(self._engine.tokenizer.encode(text, add_bos=False))
        trace = JobTrace(
            prompt_tokens=prompt.prompt_tokens,
            generation_ms=round(seconds * 1000),
            model_id=self._engine.model_id,
            chunk_ids=prepared.chunk_ids,
        )
        if prepared.chunk_ids:
            text = with_sources(text, prepared.sources, platform=job.conversation.platform)
        if self._metrics is not None:
            self._metrics.generated(
                prompt_tokens=prompt.prompt_tokens,
                completion_tokens=completion_tokens,
                seconds=seconds,
            )
        if delivery_error is not None:
            await asyncio.to_thread(
                self._repository.record_reply_progress,
                job,
                reply_message_ids=known_ids,
                reply_text=text,
                trace=trace,
            )
            raise delivery_error
        return _Generated(text=text, trace=trace, completion_tokens=completion_tokens)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = self._options.retry_base_seconds * 2.0 ** max(attempt - 1, 0)
        delay = min(self._options.retry_max_seconds, base) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _retry_or_fail(
        self,
        job: ClaimedJob,
        *,
        error: str,
        reply_text: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        if job.attempt >= self._options.max_attempts and retry_after is not None:
            # Given up, but the platform asked us to wait: the apology comes after Retry-After.
            await asyncio.to_thread(
                self._repository.retry_later,
                job,
                error=error + APOLOGY_PENDING,
                delay_seconds=retry_after,
                reply_text=reply_text,
            )
            return
        if job.attempt >= self._options.max_attempts:
            target = ReplyTarget(
                job_id=job.id,
                conversation=job.conversation,
                reply_target=job.reply_target,
                existing_message_ids=job.reply_message_ids,
                job_key=job.job_key,
            )
            await self._give_up(job, target, error=error, apology=texts.FAILED_REPLY)
            return
        delay = self._backoff(job.attempt, retry_after)
        log.warning(
            "job %s attempt %d/%d: %s; retrying in %.1fs",
            job.id,
            job.attempt,
            self._options.max_attempts,
            error,
            delay,
        )
        await asyncio.to_thread(
            self._repository.retry_later,
            job,
            error=error,
            delay_seconds=delay,
            reply_text=reply_text,
        )
        if self._metrics is not None:
            self._metrics.job_retried()

    async def _give_up(
        self, job: ClaimedJob, target: ReplyTarget, *, error: str, apology: str
    ) -> None:
        # The apology goes first: while the platform is still down the job waits (queued, with
        # backoff) and is marked failed once the apology is posted, so it is never dropped silently.
        adapter = self._adapters.get(job.conversation.platform)
        if adapter is not None and await self._apology_pending(job, adapter, apology, error):
            return
        if not await asyncio.to_thread(self._repository.fail, job, error=error):
            return
        self.failed += 1
        if self._metrics is not None:
            self._metrics.job_failed()
        log.error("job %s failed after %d attempt(s): %s", job.id, job.attempt, error)

    async def _apology_pending(
        self, job: ClaimedJob, adapter: ChatAdapter, apology: str, error: str
    ) -> bool:
        """Post the apology; True when it could not be posted and the job was put back to try
        again later (up to twice ``max_attempts`` attempts in all, then it is given up silently
        but loudly logged)."""
        if not await asyncio.to_thread(
            self._repository.renew_lease, job, lease_seconds=self._options.lease_seconds
        ):
            return True  # no longer ours: whoever holds the job now apologises
        target = ReplyTarget(
            job_id=job.id,
            conversation=job.conversation,
            reply_target=job.reply_target,
            existing_message_ids=job.reply_message_ids,
            job_key=job.job_key,
        )
        try:
            await post_clean_notice(adapter, target, apology)
            return False
        except DeliveryError as exc:
            if self._metrics is not None:
                self._metrics.delivery_error(job.conversation.platform, "apology")
            if job.attempt >= 2 * self._options.max_attempts:
                log.error("job %s: could not post the apology either: %s", job.id, exc)
                return False
            delay = self._backoff(job.attempt, exc.retry_after)
            log.warning(
                "job %s: could not post the apology (%s); trying again in %.1fs", job.id, exc, delay
            )
            await asyncio.to_thread(
                self._repository.retry_later,
                job,
                error=error + APOLOGY_PENDING,
                delay_seconds=delay,
            )
            return True
