"""Metrics, health endpoints and logs, scraped over HTTP from a running service (fake engine and
platform, real SQLite, the real aiohttp endpoint)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.fake import FakeAdapter
from bot import logs
from bot.generation.fake import FakeEngine
from bot.records import JobStatus
from bot.service import Service
from bot.settings import load_settings
from storage.repository import Repository


class GatedEngine(FakeEngine):
    """The shipped fake engine whose model "loads" until the test opens the gate."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = asyncio.Event()

    async def start(self) -> None:
        await self.gate.wait()
        await super().start()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus scrape: (name, sorted labels) -> value."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return scrape[(name, tuple(sorted(labels.items())))]


class Running:
    def __init__(self, service: Service, adapter: FakeAdapter, engine: GatedEngine) -> None:
        self.service = service
        self.adapter = adapter
        self.engine = engine
        self.http = aiohttp.ClientSession()

    @property
    def base(self) -> str:
        assert self.service.metrics_server is not None
        return f"http://127.0.0.1:{self.service.metrics_server.port}"

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.base + path) as response:
            return response.status, await response.text()

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = await self.get("/metrics")
        assert status == 200
        return samples(text)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    settings = load_settings(
        environ={
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_METRICS_PORT": "0",
            "SOLARBOT_POLL_SECONDS": "0.05",
            "SOLARBOT_RETRY_BASE_SECONDS": "0.05",
            "SOLARBOT_RETRY_MAX_SECONDS": "0.1",
            "SOLARBOT_USER_RATE_PER_MINUTE": "0",
            "SOLARBOT_CHANNEL_RATE_PER_MINUTE": "0",
        }
    )
    repository = Repository.open(settings.resolved_database_url())
    adapter = FakeAdapter()
    engine = GatedEngine(delay_per_chunk=0.01, model_id="fake-solar")
    service = Service(settings=settings, repository=repository, engine=engine, adapters=[adapter])
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(10):
        while service.metrics_server is None or service.metrics_server.port == 0:
            await asyncio.sleep(0.01)
    state = Running(service, adapter, engine)
    try:
        yield state
    finally:
        await state.http.close()
        engine.gate.set()
        service.stopping.set()
        async with asyncio.timeout(10):
            await task
        repository.close()


def keep_logging() -> Any:
    """``logs.configure`` replaces the root handlers and levels: this puts pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in logs.NOISY_LOGGERS}

    def restore() -> None:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, old in noisy.items():
            logging.getLogger(name).setLevel(old)

    return restore


def completed(running: Running) -> int:
    worker = running.service.worker
    return 0 if worker is None else worker.completed


async def wait_until(condition: Any, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def test_health_and_readiness_follow_the_model_load(running: Running) -> None:
    status, body = await running.get("/healthz")
    assert status == 200 and json.loads(body) == {"status": "alive"}
    status, body = await running.get("/readyz")
    assert status == 503
    checks = json.loads(body)["checks"]
    assert checks["model"] == "loading"
    assert checks["database"] == "ok"
    assert checks["adapter:fake"] == "ok"

    running.engine.gate.set()
    async with asyncio.timeout(10):
        while (await running.get("/readyz"))[0] != 200:
            await asyncio.sleep(0.02)
    status, body = await running.get("/readyz")
    assert json.loads(body) == {
        "ready": True,
        "checks": {"model": "ok", "database": "ok", "adapter:fake": "ok"},
    }


async def test_metrics_count_jobs_tokens_latency_and_delivery_errors(running: Running) -> None:
    before = await running.scrape()
    assert value(before, "solarbot_queue_depth") == 0
    assert value(before, "solarbot_jobs_finished_total", status="done") == 0
    assert value(before, "solarbot_engine_ready") == 0

    # Queued while the model is still loading: the queue depth shows them.
    for n in range(3):
        await running.adapter.receive(channel=f"c{n}", text=f"question {n}", message_id=f"m{n}")
    queued = await running.scrape()
    assert value(queued, "solarbot_queue_depth") == 3
    assert value(queued, "solarbot_jobs", status="queued") == 3

    running.adapter.fail_next(1)  # one delivery failure: retried, then delivered
    running.engine.gate.set()
    repository = running.service.repository
    await wait_until(lambda: completed(running) == 3)  # recorded, counted and logged
    assert repository.count_jobs() == 0

    after = await running.scrape()
    assert value(after, "solarbot_queue_depth") == 0
    assert value(after, "solarbot_jobs", status="done") == 3
    assert value(after, "solarbot_jobs", status="failed") == 0
    assert value(after, "solarbot_jobs_finished_total", status="done") == 3
    assert value(after, "solarbot_jobs_finished_total", status="retried") == 1
    assert value(after, "solarbot_delivery_errors_total", platform="fake", kind="failed") == 1
    assert value(after, "solarbot_enqueue_to_done_seconds_count") == 3
    assert value(after, "solarbot_enqueue_to_first_token_seconds_count") >= 3
    assert value(after, "solarbot_engine_ready") == 1
    assert value(after, "solarbot_engine_batch_size") == 0

    # Tokens in and out match what the jobs recorded (the fake tokenizer: one token per char).
    jobs = repository.jobs(status=JobStatus.DONE)
    assert all(job.model_id == "fake-solar" for job in jobs)
    assert all(job.prompt_tokens and job.generation_ms is not None for job in jobs)
    completion = sum(len(f"You said: question {n}") for n in range(3))
    assert value(after, "solarbot_completion_tokens_total") >= completion
    assert value(after, "solarbot_prompt_tokens_total") >= sum(j.prompt_tokens or 0 for j in jobs)
    assert value(after, "solarbot_generation_tokens_per_second_count") >= 3


async def test_engine_batch_size_is_read_while_generating(running: Running) -> None:
    running.engine.gate.set()
    slow = " ".join(["word"] * 80)
    running.engine._replies = [slow, slow]  # two replies of 0.8 s, streamed at 10 ms per word
    await running.adapter.receive(channel="a", text="one", message_id="1")
    await running.adapter.receive(channel="b", text="two", message_id="2")
    async with asyncio.timeout(10):
        while value(await running.scrape(), "solarbot_engine_batch_size") != 2:
            await asyncio.sleep(0.01)


async def test_worker_log_lines_carry_the_job_and_conversation_as_json(
    running: Running,
) -> None:
    stream = io.StringIO()
    restore = keep_logging()
    logs.configure(level="INFO", fmt="json", secrets=["xoxb-not-a-real-token"], stream=stream)
    try:
        running.engine.gate.set()
        result = await running.adapter.receive(
            channel="C1", workspace="T1", text="hello", message_id="x1"
        )
        assert result is not None
        await wait_until(lambda: completed(running) == 1)
        # The platform delivers the same event again: intake's line names the conversation.
        await running.adapter.receive(channel="C1", workspace="T1", text="hello", message_id="x1")
        logging.getLogger("bot.test").warning("token is xoxb-not-a-real-token")
    finally:
        restore()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = [line for line in lines if " done (attempt 1)" in line["message"]]
    assert len(done) == 1
    assert done[0]["job_id"] == result.job_id
    assert done[0]["conversation"] == "fake:T1:C1:"
    assert done[0]["level"] == "INFO" and done[0]["logger"] == "bot.worker"
    assert "fake-solar" in done[0]["message"]
    [duplicate] = [line for line in lines if line["message"].startswith("duplicate event")]
    assert duplicate["logger"] == "bot.intake" and duplicate["conversation"] == "fake:T1:C1:"
    masked = [line for line in lines if line["logger"] == "bot.test"]
    assert masked[0]["message"] == "token is ***"
    assert "job_id" not in masked[0]  # logged outside any job


def test_text_log_lines_name_the_job_and_mask_secrets() -> None:
    stream = io.StringIO()
    restore = keep_logging()
    logs.configure(level="INFO", fmt="text", secrets=["s3cret-value"], stream=stream)
    try:
        with logs.bound(job_id=7, conversation="slack:T1:C1:"):
            logging.getLogger("bot.x").info("posting with s3cret-value")
        logging.getLogger("bot.x").info("outside")
    finally:
        restore()
    first, second = stream.getvalue().splitlines()
    assert first.endswith("bot.x: posting with *** [job=7 conversation=slack:T1:C1:]")
    assert second.endswith("bot.x: outside")


def test_progress_bars_only_on_a_terminal() -> None:
    """Model download/loading bars: on when stderr is a TTY (a person watching), off otherwise."""
    import os
    import pty
    import subprocess
    import sys

    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    script = (
        "from bot.logs import configure_progress_bars as c; "
        "from huggingface_hub.utils import are_progress_bars_disabled as off; "
        "from transformers.utils import logging as l; "
        "print(c(), off(), l.is_progress_bar_enabled())"
    )
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            timeout=60,
            cwd=Path(__file__).parents[2],
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 0
    assert result.stdout.split() == ["True", "False", "True"]

    # Decided before transformers is imported (a process pays for that import only if it loads
    # a model): transformers takes the decision over from huggingface_hub when imported.
    later = (
        "import sys; from bot.logs import configure_progress_bars as c; c(False); "
        "assert 'transformers' not in sys.modules; "
        "from transformers.utils import logging as l; print(l.is_progress_bar_enabled())"
    )
    result = subprocess.run(
        [sys.executable, "-c", later], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]

    try:
        assert logs.configure_progress_bars() is False  # pytest's stderr is not a terminal
        assert are_progress_bars_disabled()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        logs.configure_progress_bars(True)


async def test_readiness_reports_the_discord_gateway_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real discord.py client against tests/support/discord_fake.py: /readyz is 503 until the
    gateway session is up, 200 while it is, and the adapter reports itself disconnected after."""
    from adapters.discord import DiscordAdapter, DiscordOptions
    from tests.support.discord_fake import FakeDiscord

    fake = FakeDiscord()
    fake.add_guild(10, "home")
    fake.add_channel(10, 100, "general")
    await fake.start()
    fake.point_discord_py_here(monkeypatch)
    settings = load_settings(
        environ={"SOLARBOT_DATA_DIR": str(tmp_path), "SOLARBOT_METRICS_PORT": "0"}
    )
    repository = Repository.open(settings.resolved_database_url())
    adapter = DiscordAdapter(DiscordOptions(token=fake.token, guild_ready_timeout=0.01))
    service = Service(
        settings=settings, repository=repository, engine=FakeEngine(), adapters=[adapter]
    )
    task = asyncio.create_task(service.run())
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            while service.metrics_server is None or service.metrics_server.port == 0:
                await asyncio.sleep(0.01)
            url = f"http://127.0.0.1:{service.metrics_server.port}/readyz"
            while True:
                async with http.get(url) as response:
                    body = await response.json()
                if response.status == 200:
                    break
                assert body["checks"]["adapter:discord"] in ("not started", "ok")
                await asyncio.sleep(0.02)
            assert body["checks"] == {"model": "ok", "database": "ok", "adapter:discord": "ok"}
            assert adapter.connected
    finally:
        service.stopping.set()
        async with asyncio.timeout(20):
            await task
        repository.close()
        await fake.close()
    assert not adapter.connected


def test_gpu_memory_gauges_only_in_a_process_using_cuda() -> None:
    """No GPU here: a process whose torch has no CUDA in use exports no GPU gauges, and scraping
    neither imports torch (``--role adapters``) nor initialises CUDA. On a GPU the gauges are
    checked against torch by ``bench/gpu.py`` (``gpu_memory_gauges`` in its JSON)."""
    import subprocess
    import sys

    script = (
        "import sys; from bot.gpu_memory import gpu_memory; from bot.metrics import Metrics; "
        "text = Metrics().render().decode(); "
        "print('torch' in sys.modules, 'solarbot_gpu_memory' in text); "
        "import torch; text = Metrics().render().decode(); "
        "print(gpu_memory(), 'solarbot_gpu_memory' in text, torch.cuda.is_initialized())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False False", "{} False False"]
