"""``bench/pipeline.py --workers``: separate `solarbot worker` processes on SQLite and on the real
PostgreSQL, at toy sizes so the benchmark never rots. Figures are not asserted; nothing lost or
duplicated is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
ROW = re.compile(r"(SQLite|postgresql)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(\d+)\s+(\d+)")


def bench(*args: str) -> tuple[list[tuple[str, int, int, int]], str]:
    result = subprocess.run(
        [sys.executable, "bench/pipeline.py", "--channels", "3", "--messages", "2", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [
        (m[1], int(m[2]), int(m[3]), int(m[4]))
        for line in result.stdout.splitlines()
        if (m := ROW.fullmatch(line.strip()))
    ]
    return rows, result.stdout.strip().splitlines()[-1]


def test_worker_processes_on_sqlite_lose_and_double_nothing() -> None:
    rows, last = bench("--workers", "1,2")
    assert rows == [("SQLite", 1, 0, 0), ("SQLite", 2, 0, 0)]
    assert last == "pipeline --workers: lost 0, duplicated 0"


@pytest.mark.postgres
def test_worker_processes_on_postgresql_lose_and_double_nothing(postgres_url: str) -> None:
    rows, last = bench("--workers", "1,2", "--database-url", postgres_url)
    assert rows == [("SQLite", 1, 0, 0), ("postgresql", 1, 0, 0), ("postgresql", 2, 0, 0)]
    assert last == "pipeline --workers: lost 0, duplicated 0"
