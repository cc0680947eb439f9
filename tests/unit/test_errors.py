"""One exception root: every exception class solarbot defines derives from ``SolarbotError``, so
``except SolarbotError`` catches everything raised on purpose (bot/errors.py says so)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import adapters
import bot
import storage
from bot.errors import SolarbotError

PACKAGES = (bot, adapters, storage)
# Modules whose import needs what a CPU test machine may lack, or that are not ours to load here.
SKIPPED = ("storage.migrations",)


def our_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if not info.name.startswith(SKIPPED):
                names.append(info.name)
    return names


def test_every_exception_class_we_define_derives_from_the_one_root() -> None:
    defined: dict[str, type[BaseException]] = {}
    for name in our_modules():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == name:
                defined[f"{name}.{value.__qualname__}"] = value
    assert len(defined) >= 10  # the walk found our errors (bot.errors alone has more)
    strays = sorted(name for name, cls in defined.items() if not issubclass(cls, SolarbotError))
    assert strays == []
