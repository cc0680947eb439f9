"""solarbot core: intake, conversation building, the worker and the generation engines."""

__version__ = "0.1.0"
