"""Tools run from the command line beside the service, not part of serving a chat: depth
up-scaling a model (``upscale``) and the people's-data commands (``data``: export, forget, the
feedback report)."""
