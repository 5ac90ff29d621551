"""The d90 job: app.d90.run_d90 over a job's datasets, with its state kept in the database.

Resumable across workers: the search's state (every finished run's metric) is the job's
checkpoint, rewritten after each run, so a redelivered job replays the search and runs only
what is missing. The curve so far is the job's metrics, updated after each d.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sqlalchemy.orm import Session

from app.d90 import STATE, D90Setup, SearchMismatchError, run_d90
from app.db.models import Dataset, Job
from app.engine.artifact import TaskArtifact
from app.engine.intrinsic import D90Plan
from app.jobs import add_event


def run_d90_job(
    session: Session, job: Job, callbacks, labelled, device: str
) -> TaskArtifact | None:
    """Run the search of `job`; returns the smallest passing task (None if none passed)."""
    hp = dict(job.hyperparameters)
    setup = D90Setup(
        job.model, hp["budget_steps"], hp["batch_size"], hp["max_length"], hp["metric"], job.seed
    )
    plan = D90Plan(
        method=job.method,
        min_d=hp["min_d"],
        max_d=hp["max_d"],
        sweep_points=hp["sweep_points"],
        tolerance=hp["tolerance"],
        threshold=hp["threshold"],
        lr_grid=tuple(hp["lr_grid"]),
        full_lr_grid=tuple(hp["full_lr_grid"]),
    )
    train = labelled(session.get(Dataset, job.train_dataset_id))
    eval_ = labelled(session.get(Dataset, job.eval_dataset_id))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if job.checkpoint is not None:
            (out / STATE).write_bytes(job.checkpoint)
        full_from = _bar_source(session, hp.get("full_from"), out / "bar")

        def on_event(kind: str, data: dict) -> None:
            if kind == "run_finished":
                job.checkpoint = (out / STATE).read_bytes()
            if kind == "point":
                job.metrics = data["partial"]
            shown = {k: v for k, v in data.items() if k != "partial"}
            add_event(session, job.id, "d90", event=kind, **shown)
            session.commit()

        result = run_d90(setup, plan, train, eval_, out, device, callbacks, on_event, full_from)
        job.metrics = {"setup": setup.__dict__} | result.to_dict()
        best = out / "d90-task.safetensors"
        return TaskArtifact.load(best) if result.d90 is not None and best.exists() else None


def _bar_source(session: Session, source_id: str | None, folder: Path) -> Path | None:
    """The search whose full fine-tuning to reuse, as a folder run_d90 can read (it checks the
    settings and data match; the API checked the source belongs to the same tenant)."""
    if not source_id:
        return None
    source = session.get(Job, source_id)
    if source is None or source.checkpoint is None:
        raise SearchMismatchError(f"full_from: search {source_id} is gone or has no runs")
    folder.mkdir()
    (folder / STATE).write_bytes(source.checkpoint)
    return folder
