"""The static engine's slot scheduler: which requests hold the KV cache's slots, when waiting ones
join, and what happens when one finishes. It runs on the generation thread and drives a ``Runner``
(``runner.DecodeRunner`` on the model; any object with the same interface in tests, so the rules
below are checked on a CPU without a model).

- Each admitted request owns one slot; active requests always occupy slots ``0..n-1``: a finishing
  (or cancelled) request's slot is refilled by moving the last one into it, so a decode step works
  on plain views of the cache, no gathers.
- Between decode steps, waiting requests are admitted into free slots and prefilled together
  (right-padded; a token budget per step), then join the next decode step. Of the oldest waiting
  requests that free slots can take, the shortest go first, as many as fit the prefill budget:
  sorting keeps the padding small, and the window keeps it FIFO (a long prompt waits at most one
  window). Requests that find no free slot wait in FIFO order.
- A request finishes at its ``max_new`` tokens, at an EOS token, or when its slot is full.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(eq=False)
class SlotRequest:
    """One request, from admission to retirement."""

    prompt: list[int]
    max_new: int
    temperature: float  # 0: greedy
    top_p: float
    target: Any  # where its tokens go (the engine's delivery queue); passed on in each ``Step``
    slot: int = -1
    length: int = 0  # tokens in the cache
    generated: int = 0
    last: int = 0  # the newest token: the next step's input
    cancelled: bool = False


@dataclass
class Step:
    """Tokens produced in one step: ``(target, [token], finished)`` per request, delivered together."""

    items: list[tuple[Any, list[int], bool]] = field(default_factory=list)


class Runner(Protocol):
    """What the scheduler needs of the model side (``runner.DecodeRunner``)."""

    @property
    def slots(self) -> int: ...

    @property
    def max_len(self) -> int: ...

    @property
    def eos(self) -> set[int]: ...

    @property
    def prefill_tokens(self) -> int: ...

    def prefill_forward(self, requests: list[SlotRequest]) -> Any:
        """Write each request's prompt into its slot; logits at each prompt's last token."""
        ...

    def decode_step(self, tokens: Sequence[int], positions: Sequence[int]) -> Any:
        """One decode step for slots ``0..len(tokens)-1``: row i's input token is ``tokens[i]``
        at ``positions[i]`` (written into its slot's cache); logits per row."""
        ...

    def sample(self, logits: Any, requests: Sequence[SlotRequest]) -> list[int]: ...

    def move(self, source: int, target: int, length: int) -> None:
        """Copy a slot's first ``length`` cache positions into another slot."""
        ...


class SlotScheduler:
    """Admission, joins and retirement over a ``Runner``'s slots (one thread: the generation one)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.waiting: deque[SlotRequest] = deque()
        self.running: list[SlotRequest] = []  # running[i].slot == i
        self.waiting_count = 0  # not cancelled, as of the last step
        self.peak_waiting = 0  # the most requests ever waiting for a slot at once

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def add(self, request: SlotRequest) -> None:
        self.waiting.append(request)

    def cancel(self, request: SlotRequest) -> None:
        """Drop a request at the next step, waiting or running (its slot is freed)."""
        request.cancelled = True

    def step(self, deliver: Callable[[Step], None]) -> None:
        """One round: drop cancelled requests, admit and prefill waiting ones (their first tokens
        delivered at once), then one decode step for every running request, new ones included."""
        if any(r.cancelled for r in self.waiting):  # cancelled while queued: drop them
            kept = [r for r in self.waiting if not r.cancelled]
            self.waiting.clear()
            self.waiting.extend(kept)
        self._retire([r for r in self.running if r.cancelled])
        admitted = self._admit()
        self.waiting_count = sum(1 for r in self.waiting if not r.cancelled)
        self.peak_waiting = max(self.peak_waiting, self.waiting_count)
        runner = self.runner
        if admitted:
            step = Step()
            logits = runner.prefill_forward(admitted)
            self._advance(admitted, runner.sample(logits, admitted), step)
            deliver(step)  # first tokens out at once (TTFT)
        if self.running:
            step = Step()
            running = self.running
            logits = runner.decode_step([r.last for r in running], [r.length for r in running])
            for request in running:
                request.length += 1  # the input token is in the cache now
            self._advance(running, runner.sample(logits, running), step)
            deliver(step)

    def _admit(self) -> list[SlotRequest]:
        """Requests to prefill now (see the module doc), given their slots."""
        free = self.runner.slots - len(self.running)
        window: list[SlotRequest] = []
        for request in self.waiting:
            if len(window) >= free:
                break
            if not request.cancelled:
                window.append(request)
        if not window:
            return []
        window.sort(key=lambda r: len(r.prompt))
        admitted = window[:1]
        for request in window[1:]:
            if (len(admitted) + 1) * len(request.prompt) > self.runner.prefill_tokens:
                break
            admitted.append(request)
        chosen = {id(r) for r in admitted}
        kept = [r for r in self.waiting if id(r) not in chosen and not r.cancelled]
        self.waiting.clear()
        self.waiting.extend(kept)
        for request in admitted:
            request.slot = len(self.running)
            self.running.append(request)
        return admitted

    def _advance(self, requests: list[SlotRequest], tokens: list[int], step: Step) -> None:
        runner = self.runner
        done: list[SlotRequest] = []
        for request, token in zip(requests, tokens, strict=True):
            if request.generated == 0:
                request.length = len(request.prompt)
            request.last = token
            request.generated += 1
            finished = (
                request.generated >= request.max_new
                or token in runner.eos
                or request.length >= runner.max_len
            )
            step.items.append((request.target, [token], finished))
            if finished:
                done.append(request)
        self._retire(done)

    def _retire(self, done: list[SlotRequest]) -> None:
        """Free the slots of finished/cancelled requests, keeping slots 0..n-1 occupied."""
        running = self.running
        for request in sorted(done, key=lambda r: r.slot, reverse=True):
            slot = request.slot
            last = running[-1]
            if last is not request:
                self.runner.move(last.slot, slot, last.length)
                last.slot = slot
                running[slot] = last
            running.pop()
            request.slot = -1
