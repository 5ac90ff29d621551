"""Commands that run the service: serve (API, sweeper, supervised local worker), worker,
migrate; and the settings and database they open (shared with `keys`)."""

from __future__ import annotations

import argparse
import json
import sys


def service_settings():
    """The service settings, or KilotaskError (one line, exit 2) naming a bad KILOTASK_* value."""
    from pydantic import ValidationError

    from app.config import get_settings
    from app.errors import KilotaskError

    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        what = f"setting KILOTASK_{where.upper()}" if where else "settings"
        raise KilotaskError(f"bad {what}: {first['msg']}") from None


def open_database():
    """Settings and a session factory on a database that exists and is at the schema head
    (data folder made, migrations run), or KilotaskError if it cannot be opened."""
    from sqlalchemy.exc import OperationalError

    from app.db.migrate import prepare_database
    from app.db.session import session_factory
    from app.errors import KilotaskError

    settings = service_settings()
    try:
        prepare_database(settings)
    except (OperationalError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        where = settings.database_url.split("@")[-1]
        raise KilotaskError(f"cannot open the database {where}: {reason}") from None
    return settings, session_factory(settings)


def migrate(args: argparse.Namespace) -> int:
    settings, _ = open_database()
    print(json.dumps({"database": settings.database_url.split("@")[-1], "schema": "head"}))
    return 0


def worker(args: argparse.Namespace) -> int:
    from workers.celery_app import app

    app.worker_main(
        [
            "worker",
            "-Q",
            "gpu",
            "-P",
            "solo",
            f"--loglevel={args.loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def _die_with_parent() -> None:
    """Linux: the local worker gets SIGTERM when `serve` exits, however it exits (uvicorn
    re-raises the signal that stopped it, so a `finally` is not enough)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve(args: argparse.Namespace) -> int:
    """Migrate, make a first API key if there is none, start the sweeper and a supervised
    local worker process (the embedded broker is a folder, so API and worker share it), then
    serve until interrupted."""
    import uvicorn

    from app.config import get_settings
    from app.db.migrate import prepare_database, private_file
    from app.db.models import ApiKey
    from app.db.session import session_factory
    from app.jobs import supervisor
    from app.jobs.sweeper import Sweeper
    from app.records.keys import create_key

    settings = get_settings()
    prepare_database(settings)
    with session_factory(settings)() as session:
        if session.query(ApiKey).count() == 0:
            _, key = create_key(session, "local")
            path = private_file(settings.data_dir / "api_key", key + "\n")
            # never the key itself: logs are read by more people than the key's owner
            print(f"kilotask: created an API key for tenant 'local' in {path} (mode 0600)",
                  file=sys.stderr)  # fmt: skip
    sweeper = Sweeper(settings).start()
    worker = None
    if not args.no_worker:
        worker = supervisor.WorkerSupervisor(
            [sys.executable, "-m", "app.cli", "worker", "--loglevel=WARNING"],
            on_exit=sweeper.worker_died,
            # its own process group keeps our shutdown signals from it; it dies with us
            popen_options={"start_new_session": True, "preexec_fn": _die_with_parent},
        ).start()
        supervisor.install(worker)
    _keep_stop_signals()
    try:
        uvicorn.run("app.main:app", host=args.host, port=args.port)
    finally:
        sweeper.stop()
        if worker is not None:  # SIGTERM: it checkpoints its job and hands it back, then exits
            print(f"kilotask: stopping the worker (up to {settings.shutdown_grace_s:g} s for its "
                  "job to checkpoint)", file=sys.stderr)  # fmt: skip
            worker.stop(timeout=settings.shutdown_grace_s)
    return 0


def _keep_stop_signals() -> None:
    """uvicorn stops on SIGTERM or SIGINT, then raises the signal again under the handler it
    found: with Python's defaults that killed `serve` before its `finally` could stop the worker
    (which kept training, orphaned, holding the job's lease). These handlers do nothing, so
    `serve` returns from uvicorn and shuts its worker down."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
