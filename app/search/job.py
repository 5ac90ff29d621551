"""The d90 job: app.search.d90.run_d90 over a job's datasets, with its state kept in the database.

Resumable across workers: the search's state (every finished run's metric) is the job's
checkpoint, rewritten after each run, so a redelivered job replays the search and runs only
what is missing. The curve so far is the job's metrics, updated after each d. Every run goes
through the run board (app/search/board.py), which keeps each run's task file, so a resumed
search still has the task of a d found before the crash, and which lets up to `workers` workers
share the runs of one d: the search's worker posts them, asks for helpers, and does runs
itself until all are done, so it never waits on a helper that is not there.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Dataset, Job
from app.engine.artifact import TaskArtifact
from app.engine.errors import EngineError
from app.engine.trainer import TrainCallbacks, TrainingCancelled
from app.jobs.leases import Lease, LeaseLost, worker_name
from app.jobs.queue import enqueue_d90_help
from app.jobs.reporter import JobReporter
from app.jobs.service import FINISHED, add_event
from app.records.datasets import labelled
from app.records.tasks import task_storer
from app.search.board import Claimed, RunBoard
from app.search.d90 import STATE, run_d90, train_run
from app.search.outputs import parse_run_key, task_file_name, with_generalisation
from app.search.plan import D90Plan, Run, run_key
from app.search.setup import D90Setup, SearchMismatchError, scale_info

POLL_S = 0.5


def setup_and_plan(job: Job, hp: dict | None = None) -> tuple[D90Setup, D90Plan]:
    """The search's settings from its job (or from `hp`, its hyperparameters as updated)."""
    hp = dict(job.hyperparameters if hp is None else hp)
    setup = D90Setup(
        job.model,
        hp["budget_steps"],
        hp["batch_size"],
        hp["max_length"],
        hp["metric"],
        job.seed,
        tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                     for k, v in (job.options or {}).items())),
        hp.get("precision", "fp32"),
        hp.get("device"),  # the search's device type, recorded when it starts: helpers match it
        job.task_type,
    )  # fmt: skip
    plan = D90Plan(
        method=job.method,
        min_d=hp["min_d"],
        max_d=hp["max_d"],
        sweep_points=hp["sweep_points"],
        tolerance=hp["tolerance"],
        threshold=hp["threshold"],
        lr_grid=tuple(hp["lr_grid"]),
        full_lr_grid=tuple(hp["full_lr_grid"]),
        seeds=int(hp.get("seeds", 1)),  # searches stored before seeds existed have none
    )
    return setup, plan


def run_search(session: Session, job: Job, lease: Lease, settings: Settings, device: str) -> str:
    """Run (or resume) the search of `job` under `lease`; returns its final status. The search
    keeps its state (its record of runs) for reuse by later searches."""
    reporter = JobReporter(lease)
    try:
        artifact, metrics = run_d90_job(session, job, reporter, settings, device)
    except TrainingCancelled:
        reporter.finish("cancelled")
        return "cancelled"
    except EngineError as exc:
        reporter.finish("failed", exc.code, str(exc))
        return "failed"
    except LeaseLost:
        raise
    except Exception as exc:
        session.rollback()
        reporter.finish_crashed(exc)
        raise
    reporter.finish("succeeded", values={"metrics": metrics}, also=task_storer(job, artifact))
    return "succeeded"


def run_d90_job(
    session: Session, job: Job, reporter: JobReporter, settings: Settings, device: str
) -> tuple[TaskArtifact | None, dict]:
    """Run the search of `job`; returns the smallest passing task (None if none passed) and
    the job's final metrics. Progress goes through `reporter`'s fenced writes."""
    hp = dict(job.hyperparameters)
    if "device" not in hp:  # recorded, so helpers on another device type refuse to join
        hp["device"] = torch.device(device).type
        reporter.record({"hyperparameters": hp})
        reporter.flush(wait=True)
    setup, plan = setup_and_plan(job, hp)
    train = labelled(session.get(Dataset, job.train_dataset_id))
    eval_ = labelled(session.get(Dataset, job.eval_dataset_id))
    board = RunBoard(session, job.id, settings.run_lease_s)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if job.checkpoint is not None:
            (out / STATE).write_bytes(job.checkpoint)
        (out / "runs").mkdir()
        for key, (_, task) in board.finished().items():  # task files of runs before a crash
            if task is not None:
                (out / "runs" / task_file_name(*parse_run_key(key))).write_bytes(task)
        reuse = _reuse_source(session, job.hyperparameters.get("reuse_from"), out / "reused")

        def on_event(kind: str, data: dict) -> None:
            if kind == "run_started":
                data = data | {"worker": worker_name(), "role": "search"}
            values = {}
            if kind == "run_finished":  # the search's state: a resumed search skips the run
                values["checkpoint"] = (out / STATE).read_bytes()
            if kind == "point":
                values["metrics"] = data["partial"]
            shown = {k: v for k, v in data.items() if k != "partial"}
            reporter.record(values, "d90", event=kind, **shown)
            reporter.flush(wait=kind == "run_finished")

        workers = int(job.hyperparameters.get("workers", 1))
        spread = _spread(settings, job, board, workers, reporter)
        result = run_d90(setup, plan, train, eval_, out, device, reporter, on_event, reuse, spread)
        metrics = {"setup": setup.__dict__} | scale_info(setup, plan.method, train)
        metrics |= with_generalisation(result.to_dict(), out, setup.metric)
        best = out / "d90-task.safetensors"
        found = result.d90 is not None and best.exists()
        return (TaskArtifact.load(best) if found else None), metrics


def _spread(settings: Settings, job: Job, board: RunBoard, workers: int, reporter: JobReporter):
    """Post the runs, ask for up to `workers - 1` helpers, then do runs here while there are
    pending ones and collect the helpers' results as they land."""

    def spread(
        runs: list[Run], run_here: Callable[[str, int, float], tuple[float, bytes | None]]
    ) -> Iterable[tuple[Run, float, bytes | None]]:
        wanted = {run_key(*r): r for r in runs}
        board.post(runs)
        for _ in range(min(workers, len(runs)) - 1):
            enqueue_d90_help(settings, job.id)
        reported: set[str] = set()
        while len(reported) < len(wanted):
            for key, (metric, task) in board.finished(list(wanted)).items():
                if key not in reported:
                    reported.add(key)
                    yield wanted[key], metric, task
            if len(reported) == len(wanted):
                break
            claimed = board.claim(list(wanted))
            if claimed is not None:
                with board.beating(claimed):
                    metric, task = run_here(*claimed.run)
                board.finish(claimed, metric, task)
                continue
            if reporter.should_stop():
                raise TrainingCancelled("cancel requested while helpers were training")
            time.sleep(POLL_S)

    return spread


class _HelperCallbacks(TrainCallbacks):
    """A helper only watches for cancellation; the search's worker reports progress."""

    def __init__(self, session: Session, job: Job) -> None:
        self.session, self.job, self._last = session, job, 0.0

    def should_stop(self) -> bool:
        if time.monotonic() - self._last < 0.5:
            return False
        self._last = time.monotonic()
        self.session.refresh(self.job, ["cancel_requested"])
        return self.job.cancel_requested


def help_search(session: Session, job_id: str, settings: Settings, device: str) -> int:
    """Do pending runs of the search `job_id` until none is left; returns how many it did."""
    job = session.get(Job, job_id)
    if job is None or job.kind != "d90" or job.status in FINISHED:
        return 0
    setup, _ = setup_and_plan(job)
    train = labelled(session.get(Dataset, job.train_dataset_id))
    eval_ = labelled(session.get(Dataset, job.eval_dataset_id))
    board = RunBoard(session, job_id, settings.run_lease_s)
    done = 0
    while (claimed := board.claim()) is not None:
        kind, d, lr = claimed.run
        add_event(session, job_id, "d90", event="run_started", kind=kind, d=d, lr=lr,
                  worker=worker_name(), role="helper")  # fmt: skip
        session.commit()
        try:
            with board.beating(claimed):
                metric, task = train_run(
                    setup, train, eval_, claimed.run, device, _HelperCallbacks(session, job)
                )
        except TrainingCancelled:
            return done
        except EngineError:  # the search's own worker will hit it too and fail the job
            _release(board, claimed)
            return done
        board.finish(claimed, metric, task)
        done += 1
    return done


def _release(board: RunBoard, claimed: Claimed) -> None:
    board.session.rollback()
    board.release(claimed)


def _reuse_source(session: Session, source_id: str | None, folder: Path) -> Path | None:
    """The search whose runs to reuse, as a folder run_d90 can read: its state and its runs'
    task files (run_d90 checks the settings and data match; the API checked the tenant)."""
    if not source_id:
        return None
    source = session.get(Job, source_id)
    if source is None or source.checkpoint is None:
        raise SearchMismatchError(f"reuse_from: search {source_id} is gone or has no runs")
    (folder / "runs").mkdir(parents=True)
    (folder / STATE).write_bytes(source.checkpoint)
    for key, (_, task) in RunBoard(session, source_id).finished().items():
        if task is not None:
            (folder / "runs" / task_file_name(*parse_run_key(key))).write_bytes(task)
    return folder
