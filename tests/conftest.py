"""Shared fixtures: databases (a real SQLite file; the real PostgreSQL server .ci/run provides) and
the tiny SOLAR-shaped model built once per session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.generation.loading import HFTokenizer
from storage import database
from storage.repository import Repository
from tests.support.tiny_model import build_tiny_solar, config_only_copy

POSTGRES_ENV = "SOLARBOT_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "SOLARBOT_TEST_REQUIRE_POSTGRES"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_solar(tmp_path_factory.mktemp("tiny-solar"))


@pytest.fixture(scope="session")
def few_positions_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's config, allowing only 256 positions (no tokenizer, no weights)."""
    return config_only_copy(
        tiny_model_dir, tmp_path_factory.mktemp("few-positions"), max_positions=256
    )


@pytest.fixture(scope="session")
def tiny_hf_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_hf_tokenizer: Any) -> HFTokenizer:
    """The tiny model's tokenizer (SOLAR's real one) behind our Tokenizer protocol."""
    return HFTokenizer(tiny_hf_tokenizer)


@pytest.fixture(scope="session")
def greedy_text(
    tiny_model_dir: Path, tiny_tokenizer: HFTokenizer
) -> Callable[[list[int], int], str]:
    """The reference every engine is held to: plain ``model.generate(do_sample=False)`` on the
    tiny model in float32, up to EOS, decoded like the engines decode. Results are cached."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model.eval()
    cache: dict[tuple[tuple[int, ...], int], str] = {}

    def generate(prompt: list[int], max_new_tokens: int) -> str:
        key = (tuple(prompt), max_new_tokens)
        if key not in cache:
            with torch.inference_mode():
                out = model.generate(
                    torch.tensor([prompt]),
                    attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=2,
                    pad_token_id=2,
                )
            cache[key] = tiny_tokenizer.decode(out[0, len(prompt) :].tolist())
        return cache[key]

    return generate


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'solarbot.db'}"


def _postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    required = os.environ.get(REQUIRE_POSTGRES_ENV) == "1"
    if not url:
        reason = (
            f"PostgreSQL tests SKIPPED: set {POSTGRES_ENV} (e.g. "
            "postgresql://postgres@127.0.0.1:5432/test) or run .ci/run, which always runs them"
        )
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        engine = database.create_db_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        reason = f"PostgreSQL tests SKIPPED: {POSTGRES_ENV} does not answer ({type(exc).__name__})"
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A clean database on the real server: every table dropped by migrating down, then up."""
    url = _postgres_url()
    engine = database.create_db_engine(url)
    try:
        database.upgrade(engine)
        database.downgrade(engine, "base")
    finally:
        engine.dispose()
    yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'solarbot.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def repository(database_url: str) -> Iterator[Repository]:
    repo = Repository.open(database_url)
    yield repo
    repo.close()
