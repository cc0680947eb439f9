"""Prometheus metrics (served with the health endpoints by ``bot.metrics_server``).

``Metrics`` owns a registry of its own (tests build as many as they like). The worker records what
happens to each job (``job_started``, ``first_token``, ``job_done``, ``job_retried``, ``job_failed``,
``delivery_error``); the state of the world (queue depth, jobs by status, engine batch size, GPU
memory) is read when Prometheus scrapes, from the database and the engine, so nothing has to keep it
up to date. It needs only prometheus_client (bench/gpu.py reads the gauges on a GPU box that has
nothing else).

See docs/operations.md for the list of metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.gpu_memory import gpu_memory
from bot.records import JobStatus, Rating

if TYPE_CHECKING:
    from bot.generation.engine import Engine
    from storage.repository import Repository

log = logging.getLogger(__name__)

# Seconds: a reply from a queue that is empty takes well under a second to start on a GPU; a busy
# queue or a cold CPU takes minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
TOKENS_PER_SECOND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
# Exported only by a process whose model uses CUDA (see bot/gpu_memory.py).
GPU_METRICS = ("solarbot_gpu_memory_bytes", "solarbot_gpu_memory_reserved_bytes")


class Metrics:
    """The registry and every metric solarbot exports."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.jobs_finished = Counter(
            "solarbot_jobs_finished",
            "Job attempts this process finished, by outcome (done, retried, failed).",
            ["status"],
            registry=self.registry,
        )
        self.enqueue_to_first_token = Histogram(
            "solarbot_enqueue_to_first_token_seconds",
            "From the message being enqueued to the first generated text of its reply.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.enqueue_to_done = Histogram(
            "solarbot_enqueue_to_done_seconds",
            "From the message being enqueued to its reply being delivered and recorded.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "solarbot_generation_tokens_per_second",
            "Generated tokens per second of each reply (engine request to last token).",
            buckets=TOKENS_PER_SECOND_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "solarbot_prompt_tokens",
            "Prompt tokens sent to the engine (tokens in).",
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "solarbot_completion_tokens",
            "Tokens generated for replies (tokens out).",
            registry=self.registry,
        )
        self.delivery_errors = Counter(
            "solarbot_delivery_errors",
            "Failed posts or edits of replies, by platform and kind (rate_limited, failed, apology).",
            ["platform", "kind"],
            registry=self.registry,
        )
        for status in ("done", "retried", "failed"):
            self.jobs_finished.labels(status=status)
        self._state = _StateCollector()
        self.registry.register(self._state)

    def watch(self, *, repository: Repository | None = None, engine: Engine | None = None) -> None:
        """Read queue and engine state from these when scraped."""
        if repository is not None:
            self._state.repository = repository
        if engine is not None:
            self._state.engine = engine

    # -- what the worker reports --------------------------------------------------------------

    def first_token(self, enqueued_at: datetime | None) -> None:
        if enqueued_at is not None:
            self.enqueue_to_first_token.observe(_since(enqueued_at))

    def generated(self, *, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        if completion_tokens > 0 and seconds > 0:
            self.tokens_per_second.observe(completion_tokens / seconds)

    def job_done(self, enqueued_at: datetime | None) -> None:
        self.jobs_finished.labels(status="done").inc()
        if enqueued_at is not None:
            self.enqueue_to_done.observe(_since(enqueued_at))

    def job_retried(self) -> None:
        self.jobs_finished.labels(status="retried").inc()

    def job_failed(self) -> None:
        self.jobs_finished.labels(status="failed").inc()

    def delivery_error(self, platform: str, kind: str) -> None:
        self.delivery_errors.labels(platform=platform, kind=kind).inc()

    def render(self) -> bytes:
        """The Prometheus text format (blocking: reads the database)."""
        return generate_latest(self.registry)


def _since(moment: datetime) -> float:
    return max((datetime.now(UTC) - moment).total_seconds(), 0.0)


class _StateCollector(Collector):
    """Gauges computed at scrape time."""

    def __init__(self) -> None:
        self.repository: Repository | None = None
        self.engine: Engine | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: do not run collect() when registering

    def collect(self) -> Iterator[Metric]:
        if self.repository is not None:
            try:
                counts = self.repository.job_counts()
            except Exception as exc:  # a scrape must not fail because the database hiccups
                log.warning("metrics: could not count jobs: %s", type(exc).__name__)
            else:
                depth = GaugeMetricFamily(
                    "solarbot_queue_depth",
                    "Jobs waiting to be claimed (queued, including retries waiting for backoff).",
                    value=counts.get(JobStatus.QUEUED, 0),
                )
                yield depth
                by_status = GaugeMetricFamily(
                    "solarbot_jobs", "Jobs in the database by status.", labels=["status"]
                )
                for status in JobStatus:
                    by_status.add_metric([status.value], counts.get(status, 0))
                yield by_status
            try:
                ratings = self.repository.feedback_counts()
                handoffs = self.repository.handoffs_waiting()
            except Exception as exc:
                log.warning("metrics: could not count feedback: %s", type(exc).__name__)
            else:
                votes = GaugeMetricFamily(
                    "solarbot_feedback",
                    "👍 (up) and 👎 (down) reactions on replies stored in the database.",
                    labels=["rating"],
                )
                for rating in Rating:
                    votes.add_metric([rating.value], ratings.get(rating, 0))
                yield votes
                yield GaugeMetricFamily(
                    "solarbot_handoffs_waiting",
                    "Conversations handed to a human and not resumed yet.",
                    value=handoffs,
                )
        if self.engine is not None:
            health = self.engine.health()
            yield GaugeMetricFamily(
                "solarbot_engine_batch_size",
                "Requests the engine is generating right now (its current batch).",
                value=health.active_requests,
            )
            yield GaugeMetricFamily(
                "solarbot_engine_ready", "1 when the model is loaded.", value=int(health.ready)
            )
        memory = gpu_memory()
        if memory:
            allocated = GaugeMetricFamily(
                GPU_METRICS[0],
                "GPU memory allocated by this process's tensors (torch).",
                labels=["device"],
            )
            reserved = GaugeMetricFamily(
                GPU_METRICS[1],
                "GPU memory held by this process's allocator (tensors, CUDA graph pools, cache):"
                " what the other processes on the GPU cannot have.",
                labels=["device"],
            )
            for device, use in memory.items():
                allocated.add_metric([device], use.allocated)
                reserved.add_metric([device], use.reserved)
            yield allocated
            yield reserved
