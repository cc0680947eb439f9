"""Helpers for the knowledge-base tests: SOLAR's tokenizer as files (no model, no torch), and a
PDF written by hand (so a test controls every byte of it), and the check that PostgreSQL's BM25
statistics match the stored chunks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, inspect, text

from bot.generation.solar import SOLAR_CHAT_TEMPLATE
from tests.support.tiny_model import solar_tokenizer_file


def build_solar_tokenizer(out: Path) -> Path:
    """SOLAR's tokenizer files (tokenizer.json, tokenizer_config.json, chat template) in ``out``,
    what ``bot.prompt_room.FileTokenizer`` and ``load_tokenizer`` read."""
    from transformers import LlamaTokenizer

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(solar_tokenizer_file(), Path(tmp) / "tokenizer.model")
        tokenizer = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, add_eos_token=False)
    tokenizer.chat_template = SOLAR_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def minimal_pdf(pages: list[list[str]], *, title: str | None = None) -> bytes:
    """A valid PDF with one Helvetica text line per string, one page per list."""
    objects: list[str] = []
    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects.append("<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for index, lines in enumerate(pages):
        stream = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(
            f"{_pdf_string(line)} '" for line in lines
        )
        stream += " ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_ids[index] + 1} 0 R >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    info_id = None
    if title is not None:
        objects.append(f"<< /Title {_pdf_string(title)} >>")
        info_id = len(objects)
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    trailer = f"<< /Size {len(objects) + 1} /Root 1 0 R"
    if info_id is not None:
        trailer += f" /Info {info_id} 0 R"
    out += f"trailer\n{trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


RECOUNT_TERMS = """
SELECT d.collection_id, u.lexeme, count(*)
FROM kb_chunks AS c
JOIN kb_documents AS d ON d.id = c.document_id
CROSS JOIN LATERAL unnest(tsvector_to_array(c.search)) AS u(lexeme)
GROUP BY d.collection_id, u.lexeme
"""
RECOUNT_SIZES = """
SELECT d.collection_id, count(*), sum(c.token_count)
FROM kb_chunks AS c JOIN kb_documents AS d ON d.id = c.document_id
GROUP BY d.collection_id
"""


def assert_ranking_statistics_exact(engine: Engine) -> None:
    """PostgreSQL: the BM25 statistics (``kb_terms``, ``kb_collection_sizes``, migration 0016)
    are exactly what the stored chunks give, counted afresh. SQLite: there are none (FTS5 keeps
    its own)."""
    with engine.connect() as connection:
        if engine.dialect.name != "postgresql":
            names = set(inspect(connection).get_table_names())
            assert not {"kb_terms", "kb_collection_sizes"} & names
            return
        kept = {tuple(row) for row in connection.execute(text("SELECT * FROM kb_terms"))}
        counted = {tuple(row) for row in connection.execute(text(RECOUNT_TERMS))}
        sizes = {
            tuple(row) for row in connection.execute(text("SELECT * FROM kb_collection_sizes"))
        }
        recounted = {tuple(row) for row in connection.execute(text(RECOUNT_SIZES))}
    assert kept == counted
    # A collection whose documents all went keeps a row of zeros.
    assert {row for row in sizes if row[1] != 0} == recounted
    assert all(row[2] == 0 for row in sizes if row[1] == 0)


def build_tiny_embedder(folder: Path, words: Sequence[str]) -> Path:
    """A sentence-embedding model for ``SOLARBOT_KB_EMBEDDINGS`` in ``folder``: a BERT-like
    encoder (2 layers, 32 wide) with random weights (seeded) and a WordPiece tokenizer knowing
    ``words``. Nothing is downloaded."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    known = sorted({word.lower() for word in words})
    vocab.write_text("\n".join(specials + known) + "\n")
    BertTokenizer(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(14)
    config = BertConfig(
        vocab_size=len(specials) + len(known),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(folder)
    return folder
