"""Facts about SOLAR-10.7B-Instruct that the engines and the conversation builder share."""

from __future__ import annotations

DEFAULT_MODEL_ID = "upstage/SOLAR-10.7B-Instruct-v1.0"

# Upstage's chat template, verbatim. It contains no BOS: the tokenizer adds ``<s>``.
SOLAR_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content']%}{{'### System:\\n' + message['content']+'\\n\\n'}}{% endif %}"
    "{% elif message['role'] == 'user' %}{{'### User:\\n' + message['content']+'\\n\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'### Assistant:\\n'  + message['content']}}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
    "{% endfor %}"
)

# Generation stops at EOS and also where the model starts a new turn on its own.
STOP_HEADERS: tuple[str, ...] = ("### User:", "### System:")


def render_solar_chat(messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    """SOLAR_CHAT_TEMPLATE in plain Python (the fake tokenizer uses it; a test pins it to Jinja)."""
    parts: list[str] = []
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "system":
            if content:
                parts.append("### System:\n" + content + "\n\n")
        elif role == "user":
            parts.append("### User:\n" + content + "\n\n")
        elif role == "assistant":
            parts.append("### Assistant:\n" + content)
        if index == len(messages) - 1 and add_generation_prompt:
            parts.append("### Assistant:\n")
    return "".join(parts)
