"""User-facing strings, kept in one place so wording is consistent across platforms."""

from __future__ import annotations

# Shown to the user when their newest message was too long for the model's context window and only
# its beginning was used.
TRUNCATED_NOTICE = (
    "Note: your message was too long for the model's context window, "
    "so only its beginning was used."
)

# Posted once a reply could not be generated or delivered after every retry.
FAILED_REPLY = "Sorry, I couldn't answer that one. Please try again in a moment."

# Posted when the newest message cannot fit the model's context window at all.
PROMPT_TOO_LONG = "Sorry, that message is too long for me to read, even in part."

# The console adapter.
CONSOLE_BANNER = (
    "solarbot console: type a message and press Enter. "
    "/channel NAME switches conversation, /help lists commands, /quit or Ctrl-D leaves."
)
CONSOLE_HELP = (
    "/channel NAME  talk in another conversation (each keeps its own history)\n"
    "/help          show this help\n"
    "/quit          leave (replies still being written are finished first)"
)
CONSOLE_SWITCHED = "Now talking in #{channel}."
CONSOLE_UNKNOWN_COMMAND = "Unknown command {command!r}; /help lists commands."
CONSOLE_BOT_NAME = "solarbot"
