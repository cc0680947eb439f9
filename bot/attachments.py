"""Files attached to a question: what they are, the text read from them, and their place in the
prompt (issue 15, attached files).

Reading (``kind_of``, ``read_file``): text-like files (plain text, Markdown, logs, CSV, JSON, YAML,
source code: any UTF-8 text) are kept as they are; PDFs go through the knowledge base's extractor
(``bot.kb.extract``, pypdf). A file that is an image, audio, video or an archive (by its media type
or name) is not even downloaded; a file that turns out to hold binary data, text that is not UTF-8,
a broken PDF or a PDF without text is recorded with its ``AttachmentProblem``. Downloading is the
adapters' part (``adapters.attachment_download``); ``read_file`` is blocking (pypdf): call it on a
thread.

The prompt (``files_in_prompt``): a user turn's readable files follow its text, each between
``[file: NAME]`` and ``[end of file: NAME]``, all of them together within ``budget`` tokens of the
model's own tokenizer (``SOLARBOT_ATTACHMENT_TOKEN_BUDGET``). The budget is shared out so that small
files are read whole and the rest is split evenly among the larger ones; a file cut to fit ends with
``FILE_CUT_MARKER`` so the model knows. For the newest question the budget is further capped by the
room its text leaves in the context window (after the system prompt and the question itself): the
files are cut before the question ever is. Earlier turns carry their files too (a follow-up can ask
about them), subject to the normal history trimming. The block is part of the turn's content, so it
is neutralised with it (``bot.conversation.neutralise``): a file cannot forge a turn either.

The reply (``FilesInPrompt.notes``): one polite line per file of the newest question that was not
read, or was cut, or found no room (``bot.texts``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from bot import texts
from bot.conversation import Turn, turn_content
from bot.errors import KnowledgeBaseError
from bot.generation.engine import Tokenizer
from bot.kb.extract import BlockKind, Format, decode_text, extract, format_for
from bot.records import Attachment, AttachmentProblem, Role, StoredMessage

# Files read per message; more are answered with a polite line (Discord allows 10 per message).
MAX_FILES = 10

# Tokens kept free where the question and its files meet: counts are not additive across a join.
JOIN_MARGIN = 8

FILE_CUT_MARKER = "[… the rest of this file was left out to fit the prompt]"

_BINARY_PREFIXES = ("image/", "audio/", "video/", "font/", "model/")
_BINARY_TYPES = frozenset(
    {
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/x-7z-compressed",
        "application/x-rar-compressed",
        "application/vnd.rar",
        "application/x-bzip2",
        "application/x-xz",
        "application/java-archive",
        "application/x-msdownload",
        "application/vnd.microsoft.portable-executable",
        "application/x-executable",
        "application/wasm",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    }
)
_BINARY_SUFFIXES = frozenset(
    [
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".webp",
        ".bmp",
        ".tif",
        ".tiff",
        ".ico",
        ".heic",
        ".svgz",
        ".mp3",
        ".wav",
        ".ogg",
        ".flac",
        ".m4a",
        ".mp4",
        ".mov",
        ".avi",
        ".mkv",
        ".webm",
        ".zip",
        ".gz",
        ".tgz",
        ".tar",
        ".7z",
        ".rar",
        ".bz2",
        ".xz",
        ".jar",
        ".exe",
        ".dll",
        ".so",
        ".dylib",
        ".bin",
        ".class",
        ".pyc",
        ".o",
        ".a",
        ".wasm",
        ".doc",
        ".docx",
        ".xls",
        ".xlsx",
        ".ppt",
        ".pptx",
        ".odt",
        ".ods",
        ".odp",
        ".iso",
        ".dmg",
        ".apk",
        ".ttf",
        ".otf",
        ".woff",
        ".woff2",
        ".psd",
        ".sqlite",
        ".db",
    ]
)


class FileKind(enum.Enum):
    PDF = "pdf"
    TEXT = "text"  # or unknown: read, then judged by its bytes
    BINARY = "binary"  # known not to be text: not downloaded


def kind_of(name: str, media_type: str) -> FileKind:
    """What a file is, from its name and the media type the platform gave."""
    media = media_type.split(";")[0].strip().lower()
    if format_for(name, media or None) is Format.PDF:
        return FileKind.PDF
    if media.startswith(_BINARY_PREFIXES) or media in _BINARY_TYPES:
        return FileKind.BINARY
    if PurePosixPath(name.lower()).suffix in _BINARY_SUFFIXES:
        return FileKind.BINARY
    return FileKind.TEXT


def unread(name: str, media_type: str, problem: AttachmentProblem, *, size: int = 0) -> Attachment:
    """The record of a file that was not read."""
    return Attachment(
        name=clean_name(name), media_type=clean_media_type(media_type), size=size, problem=problem
    )


def read_file(name: str, media_type: str, data: bytes) -> Attachment:
    """The text of a downloaded file, or why it has none. Blocking (pypdf): run it on a thread."""
    size = len(data)
    looks_pdf = data.startswith(b"%PDF")
    kind = kind_of(name, media_type)
    if kind is FileKind.PDF or looks_pdf:
        try:
            extracted = extract(data, fmt=Format.PDF, fallback_title=name)
        except KnowledgeBaseError:
            return unread(name, media_type, AttachmentProblem.UNREADABLE, size=size)
        text = "\n\n".join(
            f"[{block.text}]" if block.kind is BlockKind.HEADING else block.text
            for block in extracted.blocks
        )
        if not any(block.kind is not BlockKind.HEADING for block in extracted.blocks):
            return unread(name, media_type, AttachmentProblem.UNREADABLE, size=size)
    elif kind is FileKind.BINARY:
        return unread(name, media_type, AttachmentProblem.BINARY, size=size)
    else:
        try:
            text = decode_text(data)
        except KnowledgeBaseError as exc:
            binary = "binary" in str(exc)
            problem = AttachmentProblem.BINARY if binary else AttachmentProblem.UNREADABLE
            return unread(name, media_type, problem, size=size)
    return Attachment(
        name=clean_name(name), media_type=clean_media_type(media_type), size=size, text=text
    )


def clean_name(name: str) -> str:
    """A file name as stored and shown: one line, printable, at most 200 characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in name).split())
    return flat[:200] or "file"


def clean_media_type(media_type: str) -> str:
    flat = "".join(c for c in media_type if c.isprintable() and not c.isspace())
    return flat[:100]


def question_text(text: str, attachments: Sequence[Attachment]) -> str:
    """The text stored for a message: ``text``, or a stand-in when a message is only files."""
    if text.strip() or not attachments:
        return text
    return texts.ATTACHMENT_ONLY_QUESTION


# ---------------------------------------------------------------------- the prompt


@dataclass(frozen=True, kw_only=True)
class FittedFiles:
    """A turn's files as the prompt shows them: ``block`` (empty without readable files), the
    positions (among the turn's attachments) of the files cut to fit (``cut``) and of those that
    found no room at all (``left_out``)."""

    block: str
    cut: tuple[int, ...] = ()
    left_out: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class FilesInPrompt:
    """The history's turns with their files, and the reply's lines about the newest one's."""

    turns: list[Turn]
    notes: tuple[str, ...] = ()


def files_in_prompt(
    messages: Sequence[StoredMessage],
    turns: Sequence[Turn],
    *,
    tokenizer: Tokenizer,
    system_prompt: str,
    prompt_budget: int,
    budget: int,
) -> FilesInPrompt:
    """``turns`` (built from ``messages``, one for one) with each user turn's readable files after
    its text, within ``budget`` tokens per message; the newest one's also within the room its text
    leaves in ``prompt_budget`` (the prompt's tokens). ``budget`` 0: files are left out."""
    if len(messages) != len(turns):
        raise ValueError("files_in_prompt: one turn per message")
    if budget <= 0 or not any(m.attachments for m in messages):
        return FilesInPrompt(turns=list(turns))
    result: list[Turn] = []
    notes: tuple[str, ...] = ()
    last = len(turns) - 1
    for index, (message, turn) in enumerate(zip(messages, turns, strict=True)):
        if message.role is not Role.USER or not message.attachments:
            result.append(turn)
            continue
        allowed = budget
        if index == last:
            allowed = min(budget, _room_after(tokenizer, system_prompt, turn, prompt_budget))
        fitted = fit_files(tokenizer, message.attachments, budget=allowed)
        if fitted.block:
            turn = Turn(
                role=turn.role, text=f"{turn.text}\n\n{fitted.block}", author_name=turn.author_name
            )
        result.append(turn)
        if index == last:
            notes = reply_notes(message.attachments, fitted)
    return FilesInPrompt(turns=result, notes=notes)


def _room_after(tokenizer: Tokenizer, system_prompt: str, newest: Turn, prompt_budget: int) -> int:
    """Tokens left in the prompt once the system prompt and the newest question are in it (the
    files and their blank line are what fills it then)."""
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages = [*head, {"role": "user", "content": turn_content(newest) + "\n\n"}]
    rendered = tokenizer.render_chat(messages, add_generation_prompt=True)
    return prompt_budget - len(tokenizer.encode(rendered, add_bos=True)) - JOIN_MARGIN


def _header(name: str) -> str:
    return f"[file: {name}]"


def _footer(name: str) -> str:
    return f"[end of file: {name}]"


def _render(parts: Sequence[tuple[str, str, bool]]) -> str:
    """The files' block: each file's (kept) text between its header and footer."""
    blocks = []
    for name, text, cut in parts:
        lines = [_header(name)]
        if text:
            lines.append(text)
        if cut:
            lines.append(FILE_CUT_MARKER)
        lines.append(_footer(name))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def fit_files(
    tokenizer: Tokenizer, attachments: Sequence[Attachment], *, budget: int
) -> FittedFiles:
    """The readable ``attachments`` as one block of at most ``budget`` tokens (see the module
    docstring): small files whole, the rest cut evenly, each cut one marked."""
    positions = [i for i, a in enumerate(attachments) if a.problem is None]
    if not positions:
        return FittedFiles(block="")
    readable = [attachments[i] for i in positions]
    names = [a.name for a in readable]

    def measure(text: str) -> int:
        return len(tokenizer.encode(text, add_bos=False))

    if budget <= 0 or measure(_render([(n, "", True) for n in names])) > budget:
        return FittedFiles(block="", left_out=tuple(positions))
    cap = 16 * (budget + 16)  # characters: more than ``budget`` tokens of any text
    heads = [a.text[:cap] for a in readable]
    needs = [
        measure(head) if len(a.text) <= cap else budget + 1
        for head, a in zip(heads, readable, strict=True)
    ]
    whole = _render([(n, a.text, False) for n, a in zip(names, readable, strict=True)])
    if sum(needs) <= budget and measure(whole) <= budget:
        return FittedFiles(block=whole)
    available = budget - measure(_render([(n, "", True) for n in names]))
    for _ in range(8):
        allotments = _share(needs, available)
        parts: list[tuple[str, str, bool]] = []
        for name, head, need, allotment in zip(names, heads, needs, allotments, strict=True):
            if allotment >= need:
                parts.append((name, head, False))
            else:
                parts.append((name, _prefix_within(tokenizer, head, allotment), True))
        block = _render(parts)
        over = measure(block) - budget
        if over <= 0:
            marked = [
                (p, kept) for p, (_, kept, was_cut) in zip(positions, parts, strict=True) if was_cut
            ]
            return FittedFiles(
                block=block,
                cut=tuple(p for p, kept in marked if kept),
                left_out=tuple(p for p, kept in marked if not kept),  # only the marker shown
            )
        available -= over  # token counts are not additive across the joins: take it back
    return FittedFiles(block="", left_out=tuple(positions))


def _share(needs: Sequence[int], available: int) -> list[int]:
    """Water-filling: every file gets what it needs if that is no more than an even share of
    what is left; the larger ones split the rest evenly."""
    allotments = [0] * len(needs)
    left = max(available, 0)
    order = sorted(range(len(needs)), key=lambda i: needs[i])
    for place, index in enumerate(order):
        share = left // (len(needs) - place)
        allotments[index] = min(needs[index], share)
        left -= allotments[index]
    return allotments


def _prefix_within(tokenizer: Tokenizer, text: str, tokens: int) -> str:
    """The longest beginning of ``text`` found that is at most ``tokens`` tokens (cut between
    characters; what is kept is a true prefix of the file's text)."""
    if tokens <= 0 or not text:
        return ""
    ids = tokenizer.encode(text, add_bos=False)
    length = min(len(text), len(tokenizer.decode(ids[:tokens]).rstrip("\ufffd")))

    def fits(n: int) -> bool:
        return len(tokenizer.encode(text[:n], add_bos=False)) <= tokens

    if fits(length):
        return text[:length]
    low, high = 0, length  # fits(low), not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return text[:low]


# ---------------------------------------------------------------------- the reply


def _shown(name: str) -> str:
    """A file name for a reply line: in code quotes, which neither platform formats inside."""
    flat = clean_name(name).replace("`", "'")
    return f"`{flat[:100]}`"


def reply_notes(
    attachments: Sequence[Attachment], fitted: FittedFiles | None = None
) -> tuple[str, ...]:
    """One polite line per file not read, cut, or left out for want of room."""
    lines: list[str] = []
    for position, attachment in enumerate(attachments):
        name = _shown(attachment.name)
        if attachment.problem is not None:
            lines.append(PROBLEM_TEXTS[attachment.problem].format(name=name))
        elif fitted is not None and position in fitted.left_out:
            lines.append(texts.ATTACHMENT_NO_ROOM.format(name=name))
        elif fitted is not None and position in fitted.cut:
            lines.append(texts.ATTACHMENT_CUT.format(name=name))
    return tuple(lines)


PROBLEM_TEXTS = {
    AttachmentProblem.TOO_BIG: texts.ATTACHMENT_TOO_BIG,
    AttachmentProblem.BINARY: texts.ATTACHMENT_BINARY,
    AttachmentProblem.UNREADABLE: texts.ATTACHMENT_UNREADABLE,
    AttachmentProblem.DOWNLOAD_FAILED: texts.ATTACHMENT_DOWNLOAD_FAILED,
    AttachmentProblem.TOO_MANY: texts.ATTACHMENT_TOO_MANY,
}


def notice(notes: Sequence[str]) -> str:
    """The lines about the files, as the reply's opening (empty without any)."""
    return "\n".join(notes) + "\n\n" if notes else ""
