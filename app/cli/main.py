"""`kilotask`: parse the command line, run the command, and turn the errors a user can fix into
one line on stderr and exit status 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from app.cli import d90, keys, service, tasks
from app.cli.parser import build_parser

COMMANDS = {
    "train": tasks.train,
    "predict": tasks.predict,
    "inspect": tasks.inspect,
    "export": tasks.export,
    "import": tasks.import_dir,
    "d90": d90.d90,
    "migrate": service.migrate,
    "keys": keys.keys,
    "serve": service.serve,
    "worker": service.worker,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.cli.client import ServerError
    from app.engine.errors import EngineError
    from app.errors import KilotaskError

    try:
        return COMMANDS[args.command](args)
    except EngineError as exc:
        print(f"kilotask: error: {exc}", file=sys.stderr)
        return 2
    except ServerError as exc:
        print(f"kilotask: error: {exc}", file=sys.stderr)
        return 2
    except KilotaskError as exc:
        print(f"kilotask: error: {exc.message}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"kilotask: error: no such file: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kilotask: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # piped into `head`, which stopped reading: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is silent
        return 0
