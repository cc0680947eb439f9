"""Text generation engines behind one protocol (see engine.py)."""

from bot.generation.engine import Engine, EngineHealth, GenerationRequest, SamplingParams

__all__ = ["Engine", "EngineHealth", "GenerationRequest", "SamplingParams"]
