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

# Intake limits (bot/limits.py). Nothing is stored when a message is refused.
LIMIT_TOO_LONG = (
    "Sorry, that message is too long for me ({length:,} characters; the limit is {limit:,}). "
    "Please shorten it or send it in parts."
)
LIMIT_USER_RATE = (
    "You're sending messages faster than I can take them. Please slow down and try again in "
    "{seconds} s."
)
LIMIT_CHANNEL_RATE = (
    "This channel is sending me messages faster than I can take them. Please try again in "
    "{seconds} s."
)
LIMIT_QUEUE_FULL = (
    "I already have {limit} questions waiting in this channel. Please wait for some answers "
    "before asking more."
)
# The daily token quota (SOLARBOT_USER_DAILY_TOKENS): {wait} is e.g. "3 h 05 min", {zone} the
# usage time zone (SOLARBOT_USAGE_TIMEZONE).
LIMIT_DAILY_TOKENS = (
    "You've reached today's allowance of {quota:,} tokens, so I can't answer more questions from "
    "you today. It resets in {wait} (at midnight, {zone} time)."
)

# The console adapter.
CONSOLE_BANNER = (
    "solarbot console: type a message and press Enter. "
    "/channel NAME switches conversation, /help lists commands, /quit or Ctrl-D leaves."
)
# The console's own commands, after the chat sub-commands in the console's /help.
CONSOLE_HELP = (
    "/channel NAME: talk in another conversation (each keeps its own history)\n"
    "/quit: leave (replies still being written are finished first)"
)
CONSOLE_LOADING = "Loading the model: what you type now is answered once it is ready."
CONSOLE_READY = "Model {model} ready ({seconds:.1f} s)."
CONSOLE_SWITCHED = "Now talking in #{channel}."
CONSOLE_CHANNEL = "You are talking in #{channel}; /channel NAME switches."
CONSOLE_BOT_NAME = "solarbot"

# Chat sub-commands (bot/commands.py), shared by the chat platforms. Markdown; adapters convert it.
# {command} is how the bot is invoked there (e.g. "/solar").
COMMAND_HELP = (
    "**{command} QUESTION**: ask me something; the answer is posted in this channel\n"
    "{private_line}"
    "**{command} {p}help**: this help\n"
    "**{command} {p}status**: the model, the queue and this channel's settings\n"
    "**{command} {p}forget**: clear this channel's conversation history{forget_note}\n"
    "**{command} {p}prompt TEXT**: set this channel's system prompt (admins only); "
    "`{command} {p}prompt` shows it, `{command} {p}prompt reset` restores the default\n"
    "**{command} {p}off** / **{command} {p}on**: stop / start answering in this channel "
    "(admins only)\n"
    "**{command} {p}length N**: keep my replies under N characters (admins only); "
    "`{command} {p}length reset` removes the limit\n"
    "**{command} {p}language X**: answer in language X, e.g. `{command} {p}language German` "
    "(admins only); `{command} {p}language reset` lets me choose again\n"
    "**{command} {p}resume**: answer again where someone asked for a human\n"
    "**{command} {p}mode auto**: answer every new question posted in this channel, each in a "
    "thread of its own, without a mention (admins only); `{command} {p}mode mention` answers "
    "only mentions again\n"
    "**{command} {p}kb NAME[,NAME]**: answer from these knowledge-base collections, citing them "
    "(admins only); `{command} {p}kb off` stops, `{command} {p}kb mode strict` answers only from "
    "them, `{command} {p}kb mode assist` also from general knowledge, `{command} {p}kb status` "
    "shows it\n"
    "Settings apply to the whole channel, threads included.\n"
    "{extra}"
)
COMMAND_HELP_PRIVATE_LINE = "**{command} --private QUESTION**: only you see the answer\n"
COMMAND_HELP_FORGET_ADMINS = " (admins only)"
COMMAND_FORGOT = "Done: I forgot this channel's history ({count} message(s))."
COMMAND_PROMPT_SET = "This channel's system prompt is now:\n> {prompt}"
COMMAND_PROMPT_RESET = "This channel uses the default system prompt again."
COMMAND_PROMPT_SHOW_CUSTOM = "This channel's system prompt:\n> {prompt}"
COMMAND_PROMPT_SHOW_DEFAULT = "This channel uses the default system prompt:\n> {prompt}"
COMMAND_PROMPT_TOO_LONG = "That system prompt is too long ({length} characters; at most {limit})."
# The prompt measured in the model's tokens (bot/prompt_room.py): the room is what is left of the
# prompt budget (context window - reply tokens) for the conversation's history and the question.
COMMAND_PROMPT_NO_ROOM = (
    "That system prompt is too long for the model: it takes {tokens:,} tokens and would leave "
    "{room:,} for the conversation and the question (at least {minimum:,} are needed). "
    "Please shorten it."
)
COMMAND_PROMPT_ROOM = "It takes {tokens:,} tokens, which leaves {room:,} tokens for the conversation and the question."
COMMAND_PROMPT_ROOM_UNKNOWN = (
    "(The model's tokenizer is not loaded yet, so I couldn't measure it in tokens; it fits the "
    "character limit.)"
)
COMMAND_RESUMED = (
    "I'm back: I answer again in {count} conversation(s) here that waited for a human."
)
COMMAND_RESUME_NOTHING = "Nothing to resume: no conversation here is waiting for a human."
COMMAND_SWITCHED_ON = "I'm on in this channel: I answer questions here again."
COMMAND_SWITCHED_OFF = (
    "I'm off in this channel: I won't answer here until an admin uses `{command} {p}on`."
)
COMMAND_LENGTH_SET = "My replies in this channel now stop at {limit:,} characters."
COMMAND_LENGTH_RESET = "My replies in this channel have no length limit again."
COMMAND_LENGTH_SHOW = "Replies in this channel: {state}."
COMMAND_LENGTH_INVALID = (
    "`{command} {p}length` needs a number of characters from {low:,} to {high:,}, "
    "or `reset` (got {value!r})."
)
COMMAND_LANGUAGE_SET = "I now answer in {language} in this channel."
COMMAND_LANGUAGE_RESET = "I no longer get a language instruction in this channel."
COMMAND_LANGUAGE_SHOW = "Language in this channel: {state}."
COMMAND_LANGUAGE_INVALID = (
    "`{command} {p}language` needs a language name of at most {limit} letters, e.g. German "
    "or Brazilian Portuguese, or `reset` (got {value!r})."
)
COMMAND_ADMINS_ONLY = "Sorry, only admins can use `{command} {p}{name}` here."
COMMAND_NO_ADMINS = (
    "Sorry, `{command} {p}{name}` needs an admin, and no admins are configured "
    "(ask whoever runs me to set {setting})."
)
COMMAND_STATUS = (
    "**Model:** {model}\n"
    "**Queue:** {queued} question(s) waiting or being answered\n"
    "**This channel:** {prompt_state}; replies {enabled}\n"
    "**Reply length:** {length_state}\n"
    "**Language:** {language_state}\n"
    "**Knowledge base:** {kb_state}\n"
    "**Mode:** {mode_state}\n"
    "**Waiting for a human:** {handoffs} conversation(s)\n"
    "**Admins:** {admins}"
)
# Auto-answer channels (bot/auto_answer.py): ``mode auto|mention``.
MODE_STATE = {
    "mention": "mention (I answer when I'm mentioned)",
    "auto": "auto (every new question here gets an answer in its own thread)",
}
# A person's message with no text (a file alone) as stored when it hands a thread to a human.
AUTO_NO_TEXT = "(a message without text)"
# The name of a thread started on a question without a line of text (Discord, mode auto).
DISCORD_THREAD_NAME = "Question"
MODE_SHOW = "Mode in this channel: {state}."
MODE_SET = {
    "auto": (
        "Mode auto: every new message posted in this channel gets an answer in a thread of its "
        "own, no mention needed. The asker can follow up in the thread; when someone else writes "
        "there I leave the thread to them (`{command} {p}resume` brings me back)."
    ),
    "mention": "Mode mention: I answer here only when I'm mentioned again.",
}
MODE_INVALID = "`{command} {p}mode` takes `auto` or `mention` (got {value!r})."
MODE_NOT_HERE = (
    "Here every message gets an answer already; `mode auto` is for Slack and Discord channels."
)
COMMAND_STATUS_PROMPT_DEFAULT = "default system prompt"
COMMAND_STATUS_PROMPT_CUSTOM = 'custom system prompt ({length} characters): "{excerpt}"'
COMMAND_STATUS_ENABLED = "on"
COMMAND_STATUS_DISABLED = "off"
COMMAND_STATUS_LENGTH = "at most {limit:,} characters"
COMMAND_STATUS_NO_LENGTH = "no limit"
COMMAND_STATUS_LANGUAGE = '{language} ("Answer in {language}." is added to the system prompt)'
COMMAND_STATUS_NO_LANGUAGE = "not set"
COMMAND_STATUS_ADMINS = "configured"
COMMAND_STATUS_NO_ADMINS = "none configured"
COMMAND_UNKNOWN = "I don't know `{command} {p}{word}`. Here is what I know:\n{help}"
CHANNEL_DISABLED = "I'm switched off in this channel."
# A message the platform delivered but solarbot cannot store as it is (see bot/storable.py).
MESSAGE_UNREADABLE = "Sorry, I can't take that message: {reason}."
NOT_ALLOWED_HERE = "Sorry, I'm not enabled in this workspace or channel."

# The Slack adapter.
SLACK_THINKING = ":hourglass_flowing_sand: Thinking…"
SLACK_ASKED = "<@{user}> asked: {question}"
SLACK_NOT_IN_CHANNEL = (
    "I'm not a member of this channel, so only you will see my answer "
    "(invite me with `/invite @solarbot` to answer in the channel)."
)
SLACK_EMPTY_MENTION = "Yes? Ask me something after the mention, e.g. `@solarbot what is SOLAR?`"
# Buttons under every Slack answer (adapters/slack_buttons.py; button texts: at most 75 chars).
SLACK_FEEDBACK_GOOD = "Good answer"
SLACK_FEEDBACK_BAD = "Bad answer"
SLACK_HANDOFF_BUTTON = "Talk to a human"
# Slack assistant threads (adapters/slack_assistant.py). Statuses follow the app's name ("solarbot
# is thinking…"); {position}: questions ahead in the queue.
SLACK_ASSISTANT_GREETING = (
    "Hi! I'm solarbot, SOLAR-10.7B-Instruct running on our own servers. Ask me anything, "
    "or start with one of the suggestions below."
)
SLACK_ASSISTANT_PROMPTS_TITLE = "Try one of these:"
SLACK_ASSISTANT_THINKING = "is thinking…"
SLACK_ASSISTANT_QUEUED = "is thinking… ({position} ahead of you in the queue)"
# The default SOLARBOT_SLACK_SUGGESTED_PROMPTS: (title, message) pairs.
SLACK_SUGGESTED_PROMPTS = (
    ("What can you do?", "What can you help me with, and what should I not ask you?"),
    (
        "Explain a concept",
        "Explain the difference between a process and a thread, with an example.",
    ),
    ("Write some code", "Write a Python function that checks whether a string is a palindrome."),
    ("Improve my writing", "Make this text clearer and shorter: "),
)
SLACK_HANDOFF_NOT_YOURS = (
    "Only the person who asked (or an admin) can hand this conversation to a human. "
    'You can ask for one yourself by writing "{keyword}".'
)

# The Discord adapter.
DISCORD_THINKING = "Thinking…"
DISCORD_QUEUED = "Queued (position {position})…"
DISCORD_EMPTY_REPLY = "(I have no answer to that.)"
DISCORD_ATTACHMENT = "[attachment: {name} ({kind})]"
DISCORD_STICKER = "[sticker: {name}]"
DISCORD_PRIVILEGED_INTENT = (
    "SOLARBOT_DISCORD_TOKEN: Discord refused the connection because the Message Content intent is "
    "off. Open https://discord.com/developers/applications, select this bot's application, go to "
    "Bot > Privileged Gateway Intents, switch on MESSAGE CONTENT INTENT, save, and start again."
)
DISCORD_LOGIN_FAILED = (
    "SOLARBOT_DISCORD_TOKEN: Discord rejected the token. Copy it again from "
    "https://discord.com/developers/applications > your application > Bot > Reset Token."
)
DISCORD_NO_TOKEN = (
    "SOLARBOT_DISCORD_TOKEN is not set: create a bot in the Discord Developer Portal and put its "
    "token in SOLARBOT_DISCORD_TOKEN (see docs/discord.md)."
)
DISCORD_EMPTY_MENTION = "Yes? Ask me something after the mention, e.g. `@solarbot what is SOLAR?`"

# Printed after "model not found" at start-up.
TRY_WITHOUT_MODEL = (
    "to try solarbot without a model: solarbot run --engine fake (or make run ENGINE=fake)"
)

# Appended to the system prompt of a channel with a language set (`language X`).
LANGUAGE_INSTRUCTION = "Answer in {language}."

# `solarbot report` (bot/tools/data.py).
REPORT_CHANNELS = (
    "Feedback per channel (👍/👎 reactions on replies; threads count with their channel):"
)
REPORT_NO_REPLIES = "No replies yet."
REPORT_WORST = "Worst-rated answers (most 👎 first):"
REPORT_NO_DOWNVOTES = "No answer has a 👎."
REPORT_WORST_LINE = "job {job} in {where}: 👎 {down}, 👍 {up}"
REPORT_QUESTION = "  Q: {text}"
REPORT_ANSWER = "  A: {text}"

# `solarbot usage` (bot/tools/data.py).
USAGE_SINCE = "Tokens replies cost since {since} ({zone}; {days} day(s), today included):"
USAGE_USERS = "Per user (prompt tokens in, generated tokens out):"
USAGE_CHANNELS = "Per channel (threads count with their channel):"
USAGE_NONE = "No replies generated."
USAGE_TOTAL = "total"

# solarbot export / forget --channel without --workspace (bot/tools/data.py).
DATA_EXPORTED = "exported {count} message(s)"
DATA_CHANNEL_FOUND_IN = "channel {channel} is stored under workspace {workspace}: using it"
DATA_CHANNEL_AMBIGUOUS = (
    "channel {channel} of {platform} is stored under several workspaces ({workspaces}); "
    "say which with --workspace (Slack team id / Discord guild id)"
)
DATA_CHANNEL_UNKNOWN = "nothing is stored for channel {channel} of {platform} in any workspace"
DATA_CHANNEL_ELSEWHERE = (
    "nothing is stored for channel {channel} of {platform} under workspace {workspace!r}; "
    "it is stored under: {workspaces}"
)

# Human handoff (bot/intake.py; SOLARBOT_HANDOFF_KEYWORDS). {support} is the platform's ping of the
# support group/role followed by a space, or "" when none is configured; {resume} how to resume.
HANDOFF_NOTICE = (
    "{support}Someone here asked for a human, so I'm handing this conversation over and staying "
    "quiet in it{resume}."
)
HANDOFF_RESUME_HINT = " (`{command}` brings me back)"
HANDOFF_WAITING = (
    "This conversation is waiting for a human, so I'm staying quiet (`{command}` brings me back)."
)

# `solarbot forget` when the write-ahead log could not be emptied (the service held a read open).
FORGET_NOT_ERASED = (
    "warning: deleted, but older copies may stay in the SQLite write-ahead log (the -wal file) "
    "until the service's next checkpoint; run forget again when it is idle, or stop it first"
)

# A handoff whose ping is held back (SOLARBOT_HANDOFF_PING_COOLDOWN_SECONDS, _WORKSPACE_PINGS): the
# conversation is handed over all the same; nobody is pinged again.
HANDOFF_ALREADY_NOTIFIED = (
    "I'm handing this conversation over to a human and staying quiet in it. The support team was "
    "notified a short while ago, so I haven't pinged them again; someone will look here as soon "
    "as they can."
)

# Knowledge base in a channel (`kb`, bot/commands.py). {state} is KB_STATE or KB_STATE_NONE.
KB_STATE = "{collections} ({mode} mode)"
KB_STATE_NONE = "none attached"
KB_SHOW = "Knowledge base in this channel: {state}."
KB_ATTACHED = "Knowledge base in this channel: {state}. I'll answer from it and cite my sources."
KB_DETACHED = "This channel no longer answers from a knowledge base."
KB_MODE_SET = {
    "strict": (
        "Knowledge-base mode: strict. I answer only from the attached sources, and say so when "
        "they don't cover a question."
    ),
    "assist": (
        "Knowledge-base mode: assist. I answer from the attached sources first and may add "
        "general knowledge."
    ),
}
KB_INVALID = (
    "`{command} {p}kb` takes collection names (`NAME` or `NAME,NAME`), `off`, `status`, or "
    "`mode strict` / `mode assist` (got {value!r})."
)
KB_UNKNOWN = "No such knowledge-base collection: {missing}. Known collections: {known}."
KB_NONE_YET = "none yet (add documents with `solarbot kb add`)"

# Answering from a knowledge base (bot/worker.py, bot/citations.py).
KB_SOURCES = "**Sources:**"
KB_SOURCES_PLAIN = "Sources:"
# Put before the numbered passages in the system turn; {mode_rule} is one of the two below.
KB_INTRO = (
    "Answer from the numbered sources below. After each statement taken from a source, cite it "
    "with its number in brackets, like [1] or [2][3]. Cite only the numbers listed here. "
    "{mode_rule}\n\nSources:"
)
KB_RULE_STRICT = (
    "Use only these sources: if they do not answer the question, say that you don't know "
    "instead of guessing."
)
KB_RULE_ASSIST = (
    "Prefer these sources; where they do not cover the question you may answer from general "
    "knowledge, without a citation."
)
# Strict mode, nothing relevant found: said instead of guessing (the engine is not asked).
KB_DONT_KNOW = "I don't know: I found nothing about that in this channel's sources.{handoff}"
# {keyword}: the first SOLARBOT_HANDOFF_KEYWORDS entry (platforms that hand over only).
KB_HANDOFF_HINT = ' If you need a person, write "{keyword}" and I\'ll hand this over to the team.'

# `solarbot kb` (docs/knowledge-base.md).
KB_ADDED = (
    "kb: collection {collection!r}: {added} added, {replaced} replaced, {unchanged} unchanged, "
    "{removed} removed, {chunks} chunk(s) written, {errors} error(s)"
)
KB_NO_COLLECTIONS = "kb: no collections yet (add documents with `solarbot kb add SOURCE...`)"
KB_NO_SUCH_COLLECTION = "kb: no collection {collection!r}"
KB_REMOVED_DOCUMENT = "kb: removed {source} from {collection!r}"
KB_NOT_STORED = "kb: {source} is not in {collection!r}"
KB_REMOVED_COLLECTION = "kb: removed collection {collection!r} ({documents} document(s))"
KB_NO_HITS = "kb: nothing found for that query"
KB_TOKENIZER_MISSING = (
    "kb: cannot load the tokenizer of SOLARBOT_MODEL={model!r} (chunks are counted in its "
    "tokens): {reason}. Point SOLARBOT_MODEL at a local model folder, or unset "
    "SOLARBOT_OFFLINE to fetch the tokenizer files"
)

# Learning from the team (bot/learning.py): the title of a chat message an admin marked with 📚.
KB_LEARNED_TITLE = "{author} in chat: {excerpt}"
KB_LEARNED_SOMEONE = "Someone"
# A queued question's placeholder in a channel with a knowledge base (bot/answering.py).
KB_WHILE_WAITING = "While I write an answer, these may help: {links}"

# `solarbot report`: knowledge-base documents in 👎-rated replies (bot/tools/data.py).
REPORT_DOCUMENTS = "Knowledge-base documents in 👎-rated answers (most first):"
REPORT_NO_DOCUMENTS = "No 👎-rated answer was given knowledge-base passages."
REPORT_DOCUMENT_LINE = "{replies} answer(s), 👎 {down}: [{collection}] {title} {link}"
KB_OTHER_HOSTS = "{count} sitemap entries on other hosts left out (--any-host follows them)"
# Support hours and reminders (SOLARBOT_SUPPORT_HOURS, SOLARBOT_HANDOFF_REMINDER_MINUTES;
# bot/handoff_followups.py). {back} is when the team is back, e.g. "Mon 09:00 Europe/Berlin time,
# in 14 h 30 min"; {ago} how long ago the asker asked, e.g. "2 h 05 min".
HANDOFF_AFTER_HOURS = (
    "Someone here asked for a human, so I'm handing this conversation over and staying quiet in "
    "it. The support team is off duty right now: they'll be notified when they're back ({back})."
)
HANDOFF_BACK = "{when} {zone} time, in {wait}"
HANDOFF_HELD_PING = (
    "Someone asked for a human here {ago} ago, outside support hours; the conversation is "
    "waiting for you."
)
HANDOFF_REMINDER = "Reminder: someone asked for a human here {ago} ago and nobody has answered yet."

# Discord application commands (adapters/discord_commands.py). Descriptions: at most 100 characters.
DISCORD_ASK_DESCRIPTION = "Ask solarbot a question"
DISCORD_ASK_QUESTION = "Your question"
DISCORD_ASK_PRIVATE = "Only you see the answer"
DISCORD_ASK_FILE = "A file to read with the question (a log, code, a PDF...)"
DISCORD_SOLAR_DESCRIPTION = "solarbot's settings and commands for this channel"
DISCORD_SLASH = {
    "help": "The commands",
    "status": "The model, the queue and this channel's settings",
    "forget": "Clear this channel's conversation history",
    "prompt": "Show or set this channel's system prompt (setting: admins only)",
    "on": "Start answering in this channel (admins only)",
    "off": "Stop answering in this channel (admins only)",
    "length": "Show or set the longest reply in characters (setting: admins only)",
    "language": "Show or set the language I answer in (setting: admins only)",
    "kb": "Show or set this channel's knowledge-base collections (setting: admins only)",
    "mode": "Show or set when I answer here: auto or on mention (setting: admins only)",
    "resume": "Answer again where someone asked for a human",
}
DISCORD_SLASH_OPTIONS = {
    ("prompt", "text"): "The new system prompt, or reset; leave out to show it",
    ("length", "characters"): "Stop replies at this many characters; leave out to show the limit",
    ("length", "reset"): "Remove the limit",
    ("language", "name"): "A language such as German, or reset; leave out to show it",
    ("kb", "collections"): "Collections to answer from (comma-separated), or off",
    ("kb", "mode"): "strict: only from the collections; assist: also general knowledge",
    ("mode", "mode"): "auto: answer every new message here; mention: only when mentioned",
}
DISCORD_SLASH_HELP_EXTRA = (
    "Slash commands: `/ask question:...` (`private:True`: only you see the answer) and "
    "`/solar` followed by any command above, e.g. `/solar status`.\n"
)
DISCORD_NOT_HERE = "Sorry, I don't answer here."
DISCORD_ALREADY_HANDLED = "I'm on it already."
DISCORD_COMMAND_GUILD_FORBIDDEN = (
    "SOLARBOT_DISCORD_COMMAND_GUILD: Discord refused to register the slash commands in server "
    "{guild}: invite the bot to that server with the applications.commands scope (see "
    "docs/discord.md), or unset the variable to register them globally."
)

# Buttons under every Discord answer (adapters/discord_buttons.py): 👍, 👎 and this one.
DISCORD_BUTTON_HUMAN = "Talk to a human"
# The user turn stored when someone asks for a human with the button (history, exports).
DISCORD_BUTTON_HUMAN_TURN = "(asked for a human with the button)"
DISCORD_BUTTON_RATED = {
    "up": "Thanks! Your 👍 on this answer is noted.",
    "down": "Thanks! Your 👎 on this answer is noted; it helps us improve.",
}
DISCORD_BUTTON_UNKNOWN = (
    "Sorry, this button is not one of mine (or its answer is gone): nothing was recorded."
)
DISCORD_BUTTON_NOT_YET = "This answer is still being finished; please try again in a moment."
DISCORD_BUTTON_HUMAN_ASKER_ONLY = (
    "Only the person who asked this question, or an admin, can hand it to a human. "
    "Ask your own question if you need one."
)
# Attached files (bot/attachments.py): one line each in the reply, before the answer. {name} is
# the file's name in code quotes.
ATTACHMENT_TOO_BIG = "📎 I couldn't read {name}: it is larger than I can take."
ATTACHMENT_BINARY = "📎 I couldn't read {name}: I can read text files and PDFs only."
ATTACHMENT_UNREADABLE = (
    "📎 I couldn't read {name}: it looks damaged, holds no text, or isn't UTF-8 text."
)
ATTACHMENT_DOWNLOAD_FAILED = "📎 I couldn't download {name}, so I answered without it."
ATTACHMENT_TOO_MANY = "📎 I didn't read {name}: that's more files than I read in one message."
ATTACHMENT_CUT = "📎 {name} is long: I read only its beginning."
ATTACHMENT_NO_ROOM = "📎 I had no room left to read {name} along with your question."
# The question stored (and given to the model) for a message that is only attached files.
ATTACHMENT_ONLY_QUESTION = "(no question: please look at the attached files)"
