"""The database-read gauges behind the dashboard's feedback and handoff panels
(``Repository.feedback_counts`` and ``handoffs_waiting``), on SQLite and PostgreSQL: after any
sequence of 👍/👎 added and removed, and of handoffs and resumes, they equal a plain model of it."""

from __future__ import annotations

import random

import pytest

from bot.records import Incoming, Rating
from storage.repository import Repository
from tests.core.test_feedback import answered, vote


@pytest.mark.parametrize("seed", range(3))
def test_feedback_counts_follow_every_vote_and_retraction(
    repository: Repository, seed: int
) -> None:
    rng = random.Random(seed)
    replies = [
        answered(repository, channel=f"C{n % 2}", question=f"q{n}", reply=f"a{n}", parts=(f"m{n}",))
        for n in range(4)
    ]
    assert repository.feedback_counts() == {}
    # One rating per person and answer, the latest wins; a removal takes back only that rating.
    stored: dict[tuple[str, str], Rating] = {}  # (message, user) -> rating
    for _ in range(40):
        message = f"m{rng.randrange(len(replies))}"
        user = f"U{rng.randrange(3)}"
        rating = rng.choice(list(Rating))
        if rng.random() < 0.6:
            assert vote(repository, message, user, rating) is not None
            stored[(message, user)] = rating
        else:
            repository.remove_feedback(
                platform="slack", workspace="T1", message_id=message, user_id=user, rating=rating
            )
            if stored.get((message, user)) is rating:
                del stored[(message, user)]
        counts = repository.feedback_counts()
        for each in Rating:
            assert counts.get(each, 0) == sum(1 for r in stored.values() if r is each)


def test_handoffs_waiting_counts_conversations_until_resumed(repository: Repository) -> None:
    def ask(channel: str, thread: str, n: int, *, handoff: bool) -> None:
        repository.enqueue(
            Incoming(
                platform="slack",
                workspace="T1",
                channel=channel,
                thread=thread,
                author_id="U1",
                text=f"talk to a human {n}",
                message_id=f"h{n}",
            ),
            handoff=handoff,
        )

    assert repository.handoffs_waiting() == 0
    ask("C1", "", 1, handoff=False)
    assert repository.handoffs_waiting() == 0
    ask("C1", "", 2, handoff=True)
    ask("C1", "", 3, handoff=True)  # the same conversation: still one
    ask("C1", "t1", 4, handoff=True)  # a thread is a conversation of its own
    ask("C2", "", 5, handoff=True)
    assert repository.handoffs_waiting() == 3
    assert repository.resume_channel(platform="slack", workspace="T1", channel="C1") == 2
    assert repository.handoffs_waiting() == 1
    assert repository.resume_channel(platform="slack", workspace="T1", channel="C2") == 1
    assert repository.handoffs_waiting() == 0
