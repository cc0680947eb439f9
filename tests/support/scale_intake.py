"""The intake process of the scale-out test: ``python -m tests.support.scale_intake DB_URL CHANNELS PER``.

Submits ``PER`` messages to each of ``CHANNELS`` webhook channels through the real ``Intake`` (one
transaction per message, as an adapter does), channels concurrently and each channel in order, then
prints one JSON line per message: ``{"job_id", "channel", "text"}`` in submission order per channel.
"""

from __future__ import annotations

import asyncio
import json
import sys

from bot.intake import Intake
from bot.records import Incoming
from storage.repository import Repository


async def main(url: str, channels: int, per_channel: int) -> None:
    repository = Repository.open(url, migrate=False)
    intake = Intake(repository)
    sent: list[dict[str, object]] = []

    async def channel(index: int) -> None:
        for n in range(per_channel):
            text = f"message {n} in channel {index}"
            result = await intake.submit(
                Incoming(
                    platform="webhook",
                    workspace="W1",
                    channel=f"ch{index}",
                    author_id=f"user{n % 3}",
                    text=text,
                    message_id=f"{index}-{n}",
                )
            )
            assert result is not None and result.created
            sent.append({"job_id": result.job_id, "channel": f"ch{index}", "text": text})

    try:
        await asyncio.gather(*(channel(index) for index in range(channels)))
    finally:
        repository.close()
    for line in sent:
        print(json.dumps(line))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
