"""Where full fine-tuning checkpoints live: a folder every worker can reach, not the job row.

A subspace checkpoint is a few KB (θ_d, λ, Adam state) and stays in the job row. A full
fine-tuning checkpoint holds the weights, both Adam moments and a best copy, about 4.2 × 4D
bytes (385 MB for MiniLM-L6, 1.85 GB for BERT-base: over PostgreSQL's 1 GB bytea limit), so it
is a file in settings.checkpoint_dir and the row keeps only its name. Each attempt writes its
own file, so a worker that lost its lease cannot overwrite the file of the attempt that
replaced it; the row points at a file only through the lease's fenced writes.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("kilotask.checkpoints")


class CheckpointStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def name(self, job_id: str, attempt: int) -> str:
        return f"{job_id}.attempt-{attempt}.ckpt"

    def path(self, name: str) -> Path:
        return self.folder / Path(name).name  # a name, never a path out of the folder

    def start(self, job_id: str, attempt: int, previous: str | None) -> Path:
        """This attempt's checkpoint file, seeded from the previous attempt's (if it is still
        there: else the job starts over, which is slower but correct)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        mine = self.path(self.name(job_id, attempt))
        mine.unlink(missing_ok=True)
        if previous and self.path(previous).exists():
            try:  # a hard link costs nothing; the trainer replaces the file, never edits it
                os.link(self.path(previous), mine)
            except OSError:
                shutil.copyfile(self.path(previous), mine)
        elif previous:
            log.warning("job %s: checkpoint %s is gone; starting over", job_id, previous)
        return mine

    def remove(self, job_id: str) -> None:
        """Delete every attempt's file of a job that has ended."""
        if self.folder.is_dir():
            for path in self.folder.glob(f"{job_id}.attempt-*.ckpt*"):
                path.unlink(missing_ok=True)
