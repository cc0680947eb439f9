"""Progress of an engine's warm-up: compiling the decode step and capturing its CUDA graphs.

Warm-up runs on the generation thread before ``start()`` returns, so before any job is claimed; on
an H200 it takes seconds (CUDA graphs) to minutes (torch.compile). Somebody at a terminal sees a
progress bar on stderr (tqdm; only when progress bars are on, see
``bot.logs.configure_progress_bars``: stderr is a TTY). Logs, pipes and containers get a line when
a phase begins, one at most every ``LOG_EVERY_S`` seconds while it runs and one when it ends, so
``docker logs`` shows a service that is warming up, not one that hangs.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TextIO

from bot.logs import progress_bars_enabled

logger = logging.getLogger(__name__)

LOG_EVERY_S = 15.0
# How often the bar's clock is redrawn while one long step runs (``WarmupProgress.waiting``).
REDRAW_EVERY_S = 1.0


class WarmupProgress:
    """One warm-up phase of ``total`` steps: ``with WarmupProgress(...) as p: ...; p.advance()``.

    ``bar``: draw a tqdm bar (default: when progress bars are on). ``stream``: where the bar goes
    (default stderr). Thread-safe: ``waiting()`` redraws from a helper thread."""

    def __init__(
        self,
        phase: str,
        *,
        total: int,
        unit: str = "step",
        bar: bool | None = None,
        stream: TextIO | None = None,
        log_every_s: float = LOG_EVERY_S,
    ) -> None:
        self.phase = phase
        self.total = total
        self.unit = unit
        self.done = 0
        self._draw = progress_bars_enabled() if bar is None else bar
        self._stream = stream
        self._log_every_s = log_every_s
        self._bar: Any = None
        self._lock = threading.Lock()
        self._began = 0.0
        self._logged = 0.0

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._began

    def __enter__(self) -> WarmupProgress:
        self._began = self._logged = time.perf_counter()
        logger.info("warm-up: %s (%s %ss)", self.phase, self.total, self.unit)
        if self._draw:
            from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

            self._bar = tqdm(
                total=self.total,
                desc=self.phase,
                unit=self.unit,
                file=self._stream if self._stream is not None else sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )
        return self

    def advance(self, steps: int = 1) -> None:
        with self._lock:
            self.done += steps
            if self._bar is not None:
                self._bar.update(steps)
            self._maybe_log()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around one long call that reports nothing (transformers' ``manager.warmup()``): the bar's
        clock keeps moving and the log says every ``log_every_s`` that the phase still runs."""
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(REDRAW_EVERY_S if self._bar is not None else self._log_every_s):
                with self._lock:
                    if self._bar is not None:
                        self._bar.refresh()
                    self._maybe_log()

        ticker = threading.Thread(target=tick, name="solarbot-warmup-progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()

    def _maybe_log(self) -> None:
        now = time.perf_counter()
        if now - self._logged >= self._log_every_s and self.done < self.total:
            self._logged = now
            logger.info(
                "warm-up: %s, %s/%s %ss after %.0f s",
                self.phase,
                self.done,
                self.total,
                self.unit,
                now - self._began,
            )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        if error is None:
            logger.info(
                "warm-up: %s done, %s/%s %ss in %.1f s",
                self.phase,
                self.done,
                self.total,
                self.unit,
                self.elapsed_s,
            )
        else:
            logger.warning(
                "warm-up: %s stopped after %s/%s %ss (%.1f s): %s",
                self.phase,
                self.done,
                self.total,
                self.unit,
                self.elapsed_s,
                type(error).__name__,
            )
