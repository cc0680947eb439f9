"""One way to serve an aiohttp application on a TCP port and learn which port it got.

``start_listener`` is used by every HTTP endpoint solarbot opens (the metrics/health server, the
Slack Events API endpoint, the webhook ingress): port 0 picks a free port, and the bound port is
read through aiohttp's public ``AppRunner.addresses``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from bot.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Listener:
    """A running aiohttp application: ``port`` is the port actually bound."""

    runner: web.AppRunner
    host: str
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_listener(app: web.Application, *, host: str, port: int, setting: str) -> Listener:
    """Serve ``app`` on ``host:port`` (0 = any free port). A port that cannot be bound (in use,
    not allowed) is a ``ConfigError`` naming ``setting``, the environment key that chose it."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"{setting}: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from None
    return Listener(runner=runner, host=host, port=int(runner.addresses[0][1]))
