"""The `kilotask` command line: one module per command group (tasks: train, predict, export,
inspect; d90; serve, worker, migrate; keys), the parser, the progress bar and the HTTP client.

Errors the user can fix exit with status 2 and one line on stderr, never a traceback.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched at run time unless asked
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.cli.main import main  # noqa: E402  (the `kilotask` entry point: app.cli:main)

__all__ = ["main"]
