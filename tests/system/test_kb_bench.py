"""bench/kb.py runs end to end on a tiny corpus (figures are not asserted, only that it reports
them and scores what it finds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.kb_support import build_tiny_embedder
from tests.support.processes import ROOT, clean_env


def run_bench(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    corpus = tmp_path / "html"
    (corpus / "library").mkdir(parents=True)
    (corpus / "library" / "json.html").write_text(
        "<h1>json — JSON encoder and decoder</h1><p>Use json.loads to parse a JSON string.</p>"
    )
    (corpus / "library" / "csv.html").write_text(
        "<h1>csv — CSV File Reading and Writing</h1><p>csv.reader reads rows of a file.</p>"
    )
    (corpus / "genindex.html").write_text("<p>json csv index of everything</p>")
    questions = tmp_path / "questions.json"
    questions.write_text(
        json.dumps(
            [
                {"question": "turn a JSON string into a dict", "pages": ["library/json.html"]},
                {"question": "read rows from a csv file", "pages": ["library/csv.html"]},
            ]
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "bench/kb.py",
            "--corpus",
            str(corpus),
            "--questions",
            str(questions),
            "--rounds",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=clean_env({}),
    )
    assert result.returncode == 0, result.stderr
    return result


def test_the_kb_benchmark_runs_on_a_tiny_corpus(tmp_path: Path) -> None:
    result = run_bench(tmp_path)
    assert "corpus: 2 pages" in result.stdout  # the generated index page is left out
    assert "hybrid: no embedding model given (set SOLARBOT_KB_EMBEDDINGS" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("kb: 2 chunks, recall@5 1.00, mrr@10 1.00, p95 ")
    assert last.endswith("n/a (postgresql)")


def test_the_kb_benchmark_adds_a_hybrid_row_with_an_embedding_model(tmp_path: Path) -> None:
    words = "json encoder decoder use loads to parse a string csv file reading writing reader reads"
    model = build_tiny_embedder(tmp_path / "embedder", words.split())
    result = run_bench(tmp_path, "--embeddings", str(model))
    [hybrid] = [line for line in result.stdout.splitlines() if line.startswith("hybrid")]
    assert hybrid.startswith("hybrid (sqlite, embedder/32, reciprocal rank fusion): 2 chunks")
    assert "recall@5 1.000" in hybrid  # two pages: both are in any first five
