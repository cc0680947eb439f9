"""The static engine's slot scheduler on a CPU, without a model: a stand-in runner whose "model"
is a function of everything in a slot's cache, so a request's tokens come out right only if its
slot's cache is exactly its own prompt and tokens, whatever joins, finishes, is cancelled or is
moved around it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.generation.static.scheduler import SlotRequest, SlotScheduler, Step

EOS = 2
VOCAB = 61


def next_token(sequence: Sequence[int]) -> int:
    """The stand-in model: depends on every token in order (a wrong cache changes it)."""
    return sum((i + 1) * t for i, t in enumerate(sequence)) % VOCAB


def reference(prompt: list[int], max_new: int, max_len: int, eos: set[int]) -> list[int]:
    """What one request alone must produce (the rules in scheduler.py)."""
    sequence, out = list(prompt), []
    while True:
        token = next_token(sequence)
        out.append(token)
        sequence.append(token)
        if len(out) >= max_new or token in eos or len(sequence) - 1 >= max_len:
            return out


@dataclass
class FakeRunner:
    """``scheduler.Runner`` over a per-slot list standing in for the KV cache."""

    slots: int
    max_len: int
    prefill_tokens: int
    eos: set[int] = field(default_factory=lambda: {EOS})
    cache: list[list[int | None]] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # rows per decode step

    def __post_init__(self) -> None:
        self.cache = [[None] * self.max_len for _ in range(self.slots)]

    def prefill_forward(self, requests: list[SlotRequest]) -> list[int]:
        assert sum(1 for _ in requests) <= self.slots
        assert len(requests) == 1 or len(requests) * max(len(r.prompt) for r in requests) <= (
            self.prefill_tokens
        )
        for request in requests:
            self.cache[request.slot][: len(request.prompt)] = request.prompt
        return [next_token(r.prompt) for r in requests]

    def decode_step(self, tokens: Sequence[int], positions: Sequence[int]) -> list[int]:
        self.steps.append(len(tokens))
        logits = []
        for slot, (token, position) in enumerate(zip(tokens, positions, strict=True)):
            assert position < self.max_len
            self.cache[slot][position] = token
            visible = self.cache[slot][: position + 1]
            assert None not in visible, f"slot {slot} reads positions never written"
            logits.append(next_token([t for t in visible if t is not None]))
        return logits

    def sample(self, logits: Any, requests: Sequence[SlotRequest]) -> list[int]:
        assert len(logits) == len(requests)
        return list(logits)

    def move(self, source: int, target: int, length: int) -> None:
        self.cache[target][:length] = self.cache[source][:length]


def request(prompt: list[int], max_new: int, name: int) -> SlotRequest:
    return SlotRequest(prompt=prompt, max_new=max_new, temperature=0.0, top_p=1.0, target=name)


@dataclass
class Collector:
    tokens: dict[int, list[int]] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)

    def __call__(self, step: Step) -> None:
        for target, ids, done in step.items:
            assert target not in self.finished, "tokens after the end"
            self.tokens.setdefault(target, []).extend(ids)
            if done:
                self.finished.add(target)


def check_slots(scheduler: SlotScheduler) -> None:
    running = scheduler.running
    assert len(running) <= scheduler.runner.slots
    assert [r.slot for r in running] == list(range(len(running)))  # slots 0..n-1, no holes


prompts = st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=12)
arrivals = st.lists(
    st.tuples(prompts, st.integers(1, 20), st.integers(0, 6), st.booleans()),
    min_size=1,
    max_size=24,
)


@settings(max_examples=150, deadline=None)
@given(
    work=arrivals,
    slots=st.integers(1, 5),
    max_len=st.integers(14, 40),
    prefill_tokens=st.integers(1, 40),
)
def test_every_request_gets_exactly_its_own_tokens(
    work: list[tuple[list[int], int, int, bool]], slots: int, max_len: int, prefill_tokens: int
) -> None:
    """Requests arrive over time (``delay`` steps after the previous one), some are cancelled a
    step after they arrive; each one that is not cancelled gets the tokens it would get alone."""
    runner = FakeRunner(slots=slots, max_len=max_len, prefill_tokens=prefill_tokens)
    scheduler = SlotScheduler(runner)
    collector = Collector()
    pending = list(enumerate(work))
    added: dict[int, SlotRequest] = {}
    to_cancel: list[SlotRequest] = []
    for _ in range(10_000):
        if not pending and scheduler.idle:
            break
        for doomed in to_cancel:
            scheduler.cancel(doomed)
        to_cancel = []
        if pending:
            name, (prompt, max_new, delay, cancel) = pending[0]
            if delay == 0 or scheduler.idle:
                pending.pop(0)
                added[name] = request(prompt, max_new, name)
                scheduler.add(added[name])
                if cancel:
                    to_cancel.append(added[name])
            else:
                pending[0] = (name, (prompt, max_new, delay - 1, cancel))
        scheduler.step(collector)
        check_slots(scheduler)
        assert scheduler.waiting_count <= len(added)
    else:
        raise AssertionError("the scheduler never went idle")
    assert all(step <= slots for step in runner.steps)
    for name, (prompt, max_new, _, cancel) in enumerate(work):
        got = collector.tokens.get(name, [])
        expected = reference(prompt, max_new, max_len, runner.eos)
        if cancel:
            assert got == expected[: len(got)]  # a prefix, then nothing
        else:
            assert got == expected and name in collector.finished


def test_waiting_requests_join_in_fifo_windows_and_are_counted() -> None:
    runner = FakeRunner(slots=2, max_len=64, prefill_tokens=1000)
    scheduler = SlotScheduler(runner)
    collector = Collector()
    for name in range(5):
        scheduler.add(request([5 + name] * 3, 4, name))
    scheduler.step(collector)
    # Two slots: the first two joined, three wait.
    assert [r.target for r in scheduler.running] == [0, 1]
    assert scheduler.waiting_count == 3 and scheduler.peak_waiting == 3
    while not scheduler.idle:
        scheduler.step(collector)
        check_slots(scheduler)
    assert collector.finished == set(range(5))
    assert scheduler.waiting_count == 0 and scheduler.peak_waiting == 3


def test_the_shortest_of_the_window_goes_first_within_the_prefill_budget() -> None:
    runner = FakeRunner(slots=3, max_len=64, prefill_tokens=8)
    scheduler = SlotScheduler(runner)
    long, short, middle = request([7] * 6, 3, 0), request([8] * 2, 3, 1), request([9] * 4, 3, 2)
    for item in (long, short, middle):
        scheduler.add(item)
    scheduler.step(Collector())
    # Sorted by length: short (2) first; short + middle would pad to 2 x 4 = 8 <= 8: both join;
    # adding long would be 3 x 6 > 8, so it waits for the next step.
    assert [r.target for r in scheduler.running] == [1, 2]
    assert list(scheduler.waiting) == [long]


def test_a_cancelled_running_request_frees_its_slot_for_the_next() -> None:
    runner = FakeRunner(slots=1, max_len=64, prefill_tokens=100)
    scheduler = SlotScheduler(runner)
    collector = Collector()
    first, second = request([11, 12], 50, 0), request([13, 14], 3, 1)
    scheduler.add(first)
    scheduler.add(second)
    scheduler.step(collector)
    assert scheduler.running == [first] and first.slot == 0
    scheduler.cancel(first)
    scheduler.step(collector)
    assert first.slot == -1 and 0 not in collector.finished
    while not scheduler.idle:
        scheduler.step(collector)
    assert collector.tokens[1] == reference([13, 14], 3, 64, {EOS})
