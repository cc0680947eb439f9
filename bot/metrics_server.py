"""The metrics and health endpoints, served over HTTP on SOLARBOT_METRICS_PORT:

- ``GET /metrics``: the Prometheus text format (``bot.metrics.Metrics``);
- ``GET /healthz``: 200 while the process is alive and its event loop answers;
- ``GET /readyz``: 200 when the model is loaded, the database answers and every adapter is
  connected; otherwise 503. The body (JSON) says which check failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from bot.http_listener import Listener, start_listener
from bot.metrics import Metrics

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: Mapping[str, str]  # check name -> "ok" or why not


ReadinessCheck = Callable[[], Awaitable[Readiness]]


class MetricsServer:
    """/metrics, /healthz and /readyz on ``host:port`` (port 0 = any free port; see ``port``)."""

    def __init__(
        self, metrics: Metrics, *, host: str, port: int, readiness: ReadinessCheck
    ) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._readiness = readiness
        self._listener: Listener | None = None
        self.port = port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._listener = await start_listener(
            app, host=self._host, port=self._port, setting="SOLARBOT_METRICS_PORT"
        )
        self.port = self._listener.port
        log.info("metrics and health endpoints on http://%s:%d/", self._host, self.port)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None

    async def _scrape(self, _request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self._metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        try:
            result = await self._readiness()
        except Exception as exc:
            result = Readiness(ready=False, checks={"readiness": f"check failed: {exc}"})
        return web.json_response(
            {"ready": result.ready, "checks": dict(result.checks)},
            status=200 if result.ready else 503,
        )
