"""Platform-neutral records that cross the seams between adapters, intake, storage and the worker."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from bot import dedupe
from bot.errors import InvalidIncomingError
from bot.storable import check_attachment_storable, check_storable


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Rating(enum.StrEnum):
    """Feedback on a reply: a 👍 or 👎 reaction."""

    UP = "up"
    DOWN = "down"


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class KnowledgeMode(enum.StrEnum):
    """How a channel with knowledge-base collections answers (``kb mode``)."""

    STRICT = "strict"  # only from the sources; "I don't know" (and the handoff) when none fit
    ASSIST = "assist"  # the sources first, general knowledge allowed


class AnswerMode(enum.StrEnum):
    """When a channel's messages get an answer (``mode``)."""

    MENTION = "mention"  # only messages that mention (or command) the bot
    AUTO = "auto"  # every new top-level message from a person, in a thread (bot.auto_answer)


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, kw_only=True)
class ConversationKey:
    """Where a conversation lives. Empty strings mean "none" (no workspace, not in a thread)."""

    platform: str
    channel: str
    workspace: str = ""
    thread: str = ""


_STORED_FIELDS = (
    "platform",
    "workspace",
    "channel",
    "thread",
    "author_id",
    "author_name",
    "message_id",
    "dedupe_key",
)


class AttachmentProblem(enum.StrEnum):
    """Why an attached file was not read (``bot.attachments``): the reply says so in one line."""

    TOO_BIG = "too_big"  # over SOLARBOT_ATTACHMENT_MAX_BYTES
    BINARY = "binary"  # not text or a PDF (an image, an archive, ...)
    UNREADABLE = "unreadable"  # a broken PDF, text that is not UTF-8, a PDF without text
    DOWNLOAD_FAILED = "download_failed"  # 404, timeout, refused, a host we may not ask
    TOO_MANY = "too_many"  # past the files read per message


@dataclass(frozen=True, kw_only=True)
class Attachment:
    """A file attached to a user message, as stored with the turn: its name, and the text read
    from it (``text``) or why it could not be read (``problem``; ``text`` is then empty)."""

    name: str
    media_type: str = ""
    size: int = 0  # bytes (as downloaded, else as the platform declared)
    text: str = ""
    problem: AttachmentProblem | None = None


@dataclass(frozen=True, kw_only=True)
class Incoming:
    """One user message addressed to the bot, as every adapter reports it."""

    platform: str
    channel: str
    author_id: str
    text: str
    message_id: str
    workspace: str = ""
    thread: str = ""
    author_name: str = ""
    dedupe_key: str = ""
    # Platform details the egress needs to answer (e.g. the message to reply to). Opaque to the core.
    reply_target: Mapping[str, str] = field(default_factory=dict)
    # Files attached to the message, read by the adapter (``bot.attachments``).
    attachments: tuple[Attachment, ...] = ()

    def __post_init__(self) -> None:
        for name in ("platform", "channel", "author_id", "message_id"):
            if not getattr(self, name).strip():
                raise InvalidIncomingError(f"incoming message has an empty {name}")
        if not self.text.strip():
            raise InvalidIncomingError("incoming message has no text")
        if not self.dedupe_key:
            key = dedupe.dedupe_key(self.platform, self.workspace, self.channel, self.message_id)
            object.__setattr__(self, "dedupe_key", key)
        object.__setattr__(self, "reply_target", _frozen(self.reply_target))
        check_storable(
            {name: getattr(self, name) for name in _STORED_FIELDS},
            text=self.text,
            reply_target=self.reply_target,
        )
        for attachment in self.attachments:
            check_attachment_storable(attachment.name, attachment.media_type, attachment.text)

    @property
    def conversation(self) -> ConversationKey:
        return ConversationKey(
            platform=self.platform,
            workspace=self.workspace,
            channel=self.channel,
            thread=self.thread,
        )


@dataclass(frozen=True, kw_only=True)
class EnqueueResult:
    job_id: int
    conversation_id: int
    message_id: int
    created: bool  # False when the dedupe key was seen before: nothing new was stored
    # Set (with every id 0 and created False) when a limit refused the message: nothing was
    # stored and the user was told why (bot/limits.py).
    refused: str | None = None
    # The conversation is handed to a human: with ``created`` this message asked for one (its
    # turn is stored, its job cancelled); without, it was ignored (nothing stored).
    handoff: bool = False
    # With a new handoff: the conversation's questions no worker had started, cancelled with it.
    cancelled: int = 0


@dataclass(frozen=True, kw_only=True)
class StoredMessage:
    id: int
    role: Role
    text: str
    author_id: str
    author_name: str
    platform_message_id: str | None
    token_count: int | None
    created_at: datetime
    attachments: tuple[Attachment, ...] = ()  # files attached to a user turn


@dataclass(frozen=True, kw_only=True)
class ClaimedJob:
    """A job this worker now holds a lease on. ``attempt`` is 1 for the first try."""

    id: int
    conversation_id: int
    conversation: ConversationKey
    message_id: int
    worker_id: str
    attempt: int
    lease_until: datetime
    reply_target: Mapping[str, str]
    reply_text: str | None  # set when an earlier attempt generated the reply but could not post it
    reply_message_ids: tuple[str, ...]
    # What that reply opens with (attachment notes, the shortened-question notice; "" for none).
    reply_notice: str = ""
    system_prompt: str | None = None  # the channel's override (threads use their channel's)
    max_reply_chars: int | None = None  # the channel's reply cap in characters (None = no cap)
    language: str | None = None  # the channel's reply language (None = not set)
    history: tuple[StoredMessage, ...] = ()  # newest turns up to the trigger, when asked for
    # The channel's knowledge-base collections (answers cite their passages) and how it answers.
    kb_collections: tuple[str, ...] = ()
    kb_mode: KnowledgeMode = KnowledgeMode.ASSIST
    enqueued_at: datetime | None = None  # when the job was enqueued (latency metrics)
    # Unique to this job forever and the same in every attempt: what idempotency keys and nonces
    # sent to a platform are made of (see ``storage.repository.jobs.job_key``).
    job_key: str = ""


@dataclass(frozen=True, kw_only=True)
class JobTrace:
    """How a reply was made: prompt size in real tokens, engine time, the model's id and the
    knowledge-base chunks (their ids, in the order numbered [1]..[k]) given to the model."""

    prompt_tokens: int
    generation_ms: int
    model_id: str
    chunk_ids: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    id: int
    conversation_id: int
    message_id: int
    dedupe_key: str
    status: JobStatus
    attempts: int
    worker_id: str | None
    error: str | None
    reply_text: str | None
    reply_message_ids: tuple[str, ...]
    # The reply's trace, set when the job is done (a reply generated by an earlier attempt and
    # only delivered later keeps the numbers of the attempt that generated it).
    prompt_tokens: int | None = None
    generation_ms: int | None = None
    model_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class ChannelConfig:
    """A channel's settings (its threads share them). None = the default."""

    system_prompt: str | None = None
    enabled: bool = True
    max_reply_chars: int | None = None  # the longest reply in characters
    language: str | None = None  # e.g. "German": the model is told to answer in it
    # Knowledge-base collections answers come from (``kb NAME[,NAME]``; empty = none) and how.
    kb_collections: tuple[str, ...] = ()
    kb_mode: KnowledgeMode = KnowledgeMode.ASSIST
    answer_mode: AnswerMode = AnswerMode.MENTION  # ``mode auto|mention``


@dataclass(frozen=True, kw_only=True)
class ThreadState:
    """What decides whether a message nobody addressed to the bot gets an answer
    (``Repository.thread_state``, ``bot.auto_answer``): its channel's mode and switch, and its
    conversation's first asker ("" when nothing is stored there) and handoff."""

    answer_mode: AnswerMode
    enabled: bool
    asker: str
    handed_off: bool


@dataclass(frozen=True, kw_only=True)
class AnswerRecord:
    """A bot reply as its buttons need it (``Repository.answer_of`` by job, ``reply_origin`` by
    one of its messages, never by an id a client sends): where it was posted, who asked the
    question, the platform ids of the messages that hold it, and its reply target."""

    job_id: int
    conversation: ConversationKey
    asker_id: str
    message_ids: tuple[str, ...]
    reply_target: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class FeedbackRecord:
    job_id: int
    user_id: str
    rating: Rating
    platform_message_id: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class ChannelFeedback:
    """A channel's replies (done jobs, threads included) and the reactions on them."""

    platform: str
    workspace: str
    channel: str
    replies: int
    up: int
    down: int


@dataclass(frozen=True, kw_only=True)
class RatedReply:
    job_id: int
    platform: str
    workspace: str
    channel: str
    up: int
    down: int
    question: str
    answer: str


@dataclass(frozen=True, kw_only=True)
class FeedbackReport:
    channels: tuple[ChannelFeedback, ...]
    worst: tuple[RatedReply, ...]  # most 👎 first (then fewest 👍), only replies with a 👎


@dataclass(frozen=True, kw_only=True)
class DownvotedDocument:
    """A knowledge-base document and how many 👎-rated replies were given its passages."""

    collection: str
    title: str
    link: str
    replies: int  # replies with at least one 👎 whose prompt held a passage of it
    down: int  # the 👎 on those replies


@dataclass(frozen=True, kw_only=True)
class UsageLine:
    """Tokens spent on replies for one user or one channel (``Repository.usage``): ``replies``
    counts the jobs whose reply was generated; ``tokens_in`` are their prompts' tokens (the job
    trace), ``tokens_out`` the reply's tokens (stored with the reply). ``who`` is the user id or
    the channel."""

    platform: str
    workspace: str
    who: str
    replies: int
    tokens_in: int
    tokens_out: int

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


@dataclass(frozen=True, kw_only=True)
class UsageReport:
    """Per-user and per-channel token totals since ``since`` (most tokens first)."""

    since: datetime
    users: tuple[UsageLine, ...]
    channels: tuple[UsageLine, ...]


class FollowupKind(enum.StrEnum):
    """What a handoff follow-up posts to the support group (``storage.repository.followups``)."""

    PING = "ping"  # the ping held back outside support hours, due when they start
    REMINDER = "reminder"  # nobody answered the handoff within the reminder time


@dataclass(frozen=True, kw_only=True)
class ClaimedFollowup:
    """A due follow-up leased to one sender until ``claimed_until``."""

    id: int
    kind: FollowupKind
    job_id: int
    conversation: ConversationKey
    reply_target: Mapping[str, str]
    handoff_at: datetime
    asked_at: datetime
    claimed_until: datetime
    job_key: str
