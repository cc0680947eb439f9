"""bot.http_listener: every HTTP endpoint solarbot opens starts the same way."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp import web

from bot.errors import ConfigError
from bot.http_listener import start_listener


async def _hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello")


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", _hello)
    return app


async def test_port_zero_binds_a_free_port_that_answers() -> None:
    first = await start_listener(_app(), host="127.0.0.1", port=0, setting="SOLARBOT_X_PORT")
    second = await start_listener(_app(), host="127.0.0.1", port=0, setting="SOLARBOT_X_PORT")
    try:
        assert first.port > 0 and second.port > 0 and first.port != second.port
        async with aiohttp.ClientSession() as session:
            for listener in (first, second):
                async with session.get(f"http://127.0.0.1:{listener.port}/") as response:
                    assert await response.text() == "hello"
    finally:
        await first.close()
        await second.close()
    with pytest.raises(aiohttp.ClientConnectionError):  # closed means closed
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{first.port}/"),
        ):
            pass


async def test_a_port_in_use_is_one_line_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as raised:
            await start_listener(_app(), host="127.0.0.1", port=port, setting="SOLARBOT_X_PORT")
    message = str(raised.value)
    assert message.startswith(f"SOLARBOT_X_PORT: cannot listen on 127.0.0.1:{port} (")
    assert "\n" not in message
