"""A small, realistic knowledge base for the answering tests: the support docs of a made-up backup
tool, "Tidewater", in the shape `solarbot kb add` stores them (one document per page, chunks by
heading), plus the questions people ask about it and questions it does not cover.

The relevance threshold of strict mode (``bot.answering.DEFAULT_MIN_RELEVANCE``) was calibrated on
these: tests/test_kb_answering.py checks that every on-topic question's best passage reaches it and
that no off-topic question's does."""

from __future__ import annotations

from bot.kb.embeddings import Embedder, passage_text
from bot.knowledge import ChunkDraft
from storage.repository import Repository
from storage.repository.knowledge import DocumentVectors

COLLECTION = "tidewater"
BASE = "https://docs.tidewater.example"

# source -> (title, [(heading path, text)])
PAGES: dict[str, tuple[str, list[tuple[tuple[str, ...], str]]]] = {
    "install": (
        "Installing the Tidewater agent",
        [
            (
                ("Linux",),
                "Download the agent package for your distribution and install it with "
                "sudo dpkg -i tidewater-agent.deb or sudo rpm -i tidewater-agent.rpm. The "
                "installer registers the tidewater systemd service and starts it.",
            ),
            (
                ("Windows",),
                "Run TidewaterSetup.msi as an administrator. The agent installs as a Windows "
                "service named Tidewater Agent and starts at boot.",
            ),
        ],
    ),
    "schedules": (
        "Backup schedules",
        [
            (
                ("Creating a schedule",),
                "A schedule runs a backup plan automatically. Open Plans, choose the plan, "
                "then Schedule, and pick hourly, daily or weekly runs with a start time. "
                "Schedules use the agent's local time zone.",
            ),
            (
                ("Retention",),
                "Retention decides how long snapshots are kept. The default keeps 7 daily, 4 "
                "weekly and 12 monthly snapshots; older snapshots are pruned after each run.",
            ),
        ],
    ),
    "restore": (
        "Restoring files",
        [
            (
                ("Restore a single file",),
                "To restore a file, open Snapshots, pick the snapshot by date, browse to the "
                "file and choose Restore. The file is written next to the original with a "
                ".restored suffix unless you choose Overwrite.",
            ),
            (
                ("Restore a whole machine",),
                "Bare-metal restore boots the Tidewater recovery image from USB and writes the "
                "full disk image of the chosen snapshot back to the machine's disk.",
            ),
        ],
    ),
    "encryption": (
        "Encryption and keys",
        [
            (
                ("Encryption at rest",),
                "Every snapshot is encrypted with AES-256 before it leaves the machine. The "
                "encryption key is derived from the repository passphrase, which Tidewater "
                "never stores: if you lose the passphrase, the backups cannot be decrypted.",
            ),
        ],
    ),
}

# Questions as users ask them, and the page that answers each.
ON_TOPIC = {
    "how do I install the agent on Windows?": "install",
    "can I restore a single file from last week's snapshot?": "restore",
    "how long are old snapshots kept?": "schedules",
    "what happens if I lose my passphrase?": "encryption",
    "how do I set up a daily backup schedule?": "schedules",
    "is my backup encrypted?": "encryption",
}
# Questions the docs do not cover (some share a word with them).
OFF_TOPIC = [
    "what's the weather in Paris tomorrow?",
    "can you recommend a good pasta recipe?",
    "who won the football world cup in 2014?",
    "how do I file my tax return in Germany?",
    "what is the capital of Australia?",
    "write me a poem about the sea and the moon",
]


def link(source: str) -> str:
    return f"{BASE}/{source}"


def fill(
    repository: Repository, collection: str = COLLECTION, *, embedder: Embedder | None = None
) -> None:
    """Store the pages (with their chunks' vectors when given an ``embedder``)."""
    for source, (title, parts) in PAGES.items():
        vectors = None
        if embedder is not None:
            rows = embedder.embed([passage_text(title, path, text) for path, text in parts])
            vectors = DocumentVectors(model=embedder.model_id, vectors=rows.tolist())
        repository.add_document(
            collection=collection,
            source_uri=link(source),
            title=title,
            link=link(source),
            checksum=f"sum-{source}",
            chunks=[
                ChunkDraft(
                    position=position,
                    heading_path=headings,
                    text=text,
                    token_count=len(text.split()),
                )
                for position, (headings, text) in enumerate(parts)
            ],
            vectors=vectors,
        )
