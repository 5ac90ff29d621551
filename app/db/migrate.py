"""Run the Alembic migrations programmatically: the only way the schema is made."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from alembic.config import Config

from alembic import command

if TYPE_CHECKING:
    from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["url"] = url
    return config


def private_dir(path: Path) -> Path:
    """A folder only this user can enter (0700): it holds the database and the first key."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def private_file(path: Path, text: str | None = None) -> Path:
    """Create `path` readable by this user only (0600) before anything is in it; with `text`,
    write it. An existing file is made 0600 too."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | (os.O_TRUNC if text is not None else 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        if text is not None:
            os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path


def upgrade(url: str, revision: str = "head") -> None:
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///") :])
        db.parent.mkdir(parents=True, exist_ok=True)
        private_file(db)  # SQLite gives its -wal and -shm files the database file's mode
    command.upgrade(alembic_config(url), revision)


def prepare_database(settings: Settings) -> None:
    """Make the data folder (0700) and bring the schema to head: what every command that
    opens the database does first, so it works in a fresh HOME before the first `serve`."""
    private_dir(settings.data_dir)
    upgrade(settings.database_url)
