"""The benchmarks run in the suite at toy sizes, so they never rot. Figures are not asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_pipeline_benchmark_runs_and_reports_nothing_lost() -> None:
    result = subprocess.run(
        [sys.executable, "bench/pipeline.py", "--channels", "6", "--messages", "3", "--rate", "50"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"pipeline: \d+ messages/s, p50 \d+ ms, p99 \d+ ms, lost 0, duplicated 0", last
    ), last
    assert "baseline" in result.stdout  # the comparison is measured in the same run


def test_batching_benchmark_runs_both_concurrencies_and_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "bench/batching.py", "--questions", "12", "--tokens", "6",
         "--token-delay", "0.01"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"batching: 12 questions, first tokens within \d+ step\(s\) \(default\) vs \d+ \(8\); "
        r"TTFT p95 \d+ ms vs \d+ ms, lost 0, duplicated 0",
        last,
    ), last
    assert "default (128)" in result.stdout and "fixed 8 (8)" in result.stdout  # same run
