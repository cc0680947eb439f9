"""Running the `solarbot` command as a user would: a real subprocess with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).parents[2]


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its SOLARBOT_* settings, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SOLARBOT_")}
    clean.update(env)
    return clean


def solarbot(
    *args: str, env: Mapping[str, str], stdin: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``solarbot ARGS`` with only ``env``'s SOLARBOT_* settings (the caller's are dropped)."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=clean_env(env),
        timeout=timeout,
        cwd=ROOT,
    )
