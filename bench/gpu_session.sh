#!/usr/bin/env bash
# Issue 5, GPU session: one command, one H200, ~5-6 minutes (hard stop at $BENCH_TIMEOUT s, 420 by
# default; JSON is written after every phase, so a stop still leaves the figures measured so far;
# the phases run in the order below, so a stop costs the `cb` reference figures first).
#
#   OUT=/some/dir bash bench/gpu_session.sh [extra bench/gpu.py options]
#
# From a session with the device tool: `make gpu-deps` here first, then
#   run(command="bash bench/gpu_session.sh", carry=[".gpu-deps"], timeout_s=480)
# (.gpu-deps: prometheus_client, pure Python, so the GPU memory gauges are scraped as Prometheus
# does; without it the bench checks the function the gauges read and says the scrape was skipped.)
#
# Writes $OUT/env.txt (GPU, driver, versions), $OUT/gpu.log (everything printed; the table is
# last), $OUT/gpu.json and $OUT/issue7.txt (warm-up progress and GPU memory gauge lines).
# Needs only torch (CUDA) and transformers (>= 5.17): no network, no model download, no tokenizer
# file. Sweep of the run:
#   seed:   generate, eager, batch 1 and a static batch of 32 (the tutorial's way)
#   static: our engine (bot/generation/static/, CUDA graphs) with 1, 8, 64 channels, then 256
#           channels with 512-2048-token prompts at once (admission control: must all complete)
#   static-compiled: the same with torch.compile on the decode step's layer parts (compiles at
#           start-up: its warm-up time is part of the result)
#   cb:     transformers' continuous batching manager (bot/generation/local.py, use_cuda_graph)
# Examples of extra options: --engines static  --cuda-graphs off  --compile-level 1
#   --async-batching on  --only seed,hf-static  --new-tokens 128
set -u
OUT="${OUT:-bench/out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .gpu-deps ]; then
    export PYTHONPATH="$PWD/.gpu-deps${PYTHONPATH:+:$PYTHONPATH}"
fi
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1
    "$PY" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1
} > "$OUT/env.txt"
cat "$OUT/env.txt"
timeout --signal=INT --kill-after=30 "${BENCH_TIMEOUT:-420}" "$PY" bench/gpu.py \
    --only seed,engine,stress --engines static,static-compiled,cb --channels 1,8,64 \
    --stress 256 --stress-min 512 --stress-max 2048 --stress-timeout 90 --phase-timeout 120 \
    --json "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log"
status=${PIPESTATUS[0]}
echo "bench/gpu.py exit status: $status (124/130: stopped by the timeout)"
# Issue 7's GPU checks, from the same run: the warm-up progress of CUDA-graph capture and compile
# (bot/generation/warmup.py; the bar itself is drawn by the same class, tested on a CPU terminal)
# and the GPU memory gauges scraped from bot/metrics.py against torch's own figures.
grep -E "warm-up: |GPU memory gauges" "$OUT/gpu.log" > "$OUT/issue7.txt" || true
cat "$OUT/issue7.txt"
exit "$status"
