"""bench/gpu.py --tiny runs in the suite (on the CPU), so the GPU benchmark never rots.

Figures are not asserted (a shared CPU is noisy); the shape of the report, the correctness check
against ``generate`` and the stress phase's outcome (everything completes, nothing fails) are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
ROW_FIELDS = {
    "name",
    "channels",
    "new_tokens",
    "decode_tok_s",
    "aggregate_tok_s",
    "ttft_p50_s",
    "ttft_p95_s",
    "wall_s",
    "peak_mem_gib",
}


def test_gpu_benchmark_tiny_runs_on_cpu_and_reports_everything(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [
            sys.executable,
            "bench/gpu.py",
            "--tiny",
            "--only",
            "seed,engine,stress",
            "--stress",
            "256",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())

    assert data["meta"]["mode"] == "tiny-cpu"
    assert data["errors"] == []
    assert set(data["engines"]) == {"static", "cb"}  # ours and transformers' manager
    for kind in ("static", "cb"):
        check = data["check"][kind]
        assert check["passed"] and check["exact_required"], kind
        assert all(row["matching_prefix"] == row["tokens"] for row in check["prompts"]), kind
        engine = data["engines"][kind]
        assert engine["warmup_s"] >= 0 and engine["cache_tokens"] > 0
        # No CUDA here: no GPU gauges (on a GPU the same check compares them with torch's).
        assert engine["gpu_memory_gauges"] == {
            "passed": True,
            "scrape": "done",
            "scraped": {},
            "expected": "none (no CUDA)",
        }

    rows = {row["name"]: row for row in data["phases"]}
    assert {"seed generate b1", "seed generate b4"} <= set(rows)
    for name in ("seed generate b1", "seed generate b4", "static 1ch", "cb 64ch"):
        row = rows[name]
        assert set(row) >= ROW_FIELDS, name
        assert row["aggregate_tok_s"] > 0 and row["ttft_p95_s"] >= row["ttft_p50_s"] >= 0, name
    for kind in ("static", "cb"):
        for count in (1, 8, 64):
            row = rows[f"{kind} {count}ch"]
            assert row["channels"] == row["completed"] == count and row["failed"] == 0
            assert row["short_streams"] == 0  # EOS ignored: every stream ran to new_tokens
            assert row["decode_tok_s"] > 0

    # 256 channels with long prompts at once (the first engine only): more than one prefill
    # batch holds, so requests queue; all complete and the engine stays healthy.
    stress = rows["static stress 256ch"]
    assert stress["completed"] == 256 and stress["failed"] == 0
    assert stress["most_queued"] > 0 and stress["health_ready_after"]

    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("targets: n/a")
    table = "\n".join(lines[-16:])
    assert "agg/seed b1" in table and "static 64ch" in table and "cb 64ch" in table
    assert "static: 1-channel decode ours/seed" in table
    assert table.count("correctness vs generate: PASS") == 2


def test_full_size_table_reports_targets_per_engine(tmp_path: Path) -> None:
    """The GPU-only branch of the report (targets PASS/FAIL), fed with a stored tiny run's rows."""
    sys.path.insert(0, str(ROOT))
    from bench import gpu

    report = gpu.Report(str(tmp_path / "r.json"), {"mode": "solar-shape"})
    report.data["engines"] = {"static": {"warmup_s": 12.5, "cache_tokens": 4096}, "cb": {}}
    report.data["check"] = {"static": {"passed": True}}
    rows = [
        ("seed generate b1", 1, 13.9, 13.5, 0.05, 0.05),
        ("seed generate b32", 32, 12.0, 418.0, 0.4, 0.4),
        ("static 1ch", 1, 160.0, 150.0, 0.02, 0.02),
        ("static 64ch", 64, 55.0, 3200.0, 0.7, 1.2),
        ("cb 64ch", 64, 9.0, 600.0, 2.0, 3.0),
    ]
    for name, channels, decode, aggregate, p50, p95 in rows:
        report.add(
            {
                "name": name,
                "channels": channels,
                "decode_tok_s": decode,
                "aggregate_tok_s": aggregate,
                "ttft_p50_s": p50,
                "ttft_p95_s": p95,
                "peak_mem_gib": 60.0,
            }
        )
    text = gpu.table(report)
    assert "static: 1-channel decode ours/seed 11.51x; correctness vs generate: PASS" in text
    assert "static targets: 1ch decode >= 150: PASS (160.0); 64ch aggregate >= 3000: PASS" in text
    assert "64ch TTFT p95 <= 1.5 s: PASS (1.2); warm-up <= 90 s: PASS (12.5)" in text
    assert (
        "cb targets: 1ch decode >= 150: not measured; 64ch aggregate >= 3000: FAIL (600.0)" in text
    )
    assert "correctness vs generate: not run" in text
    assert json.loads((tmp_path / "r.json").read_text())["phases"][0]["name"] == "seed generate b1"
