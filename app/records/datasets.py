"""Uploaded datasets: validate the bytes with the engine's reader, and turn stored rows back
into the engine's LabelledText (for workers on any machine)."""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from app.db.models import Dataset
from app.engine.data import ColumnSpec, LabelledText, read_table
from app.engine.errors import DataFormatError
from app.engine.task_types import fit_output_space, label_names_from
from app.errors import InvalidInputError

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


@dataclass
class UploadSummary:
    rows: int
    columns: list[str]
    resolved: ColumnSpec
    label_counts: dict[str, int]
    sha256: str


MAX_NAME = 255  # file and column names are stored in 255-character columns


def _printable(name: str) -> bool:
    return name.isprintable() and len(name) <= MAX_NAME


def _suffix(filename: str) -> str:
    if not _printable(filename or ""):
        raise InvalidInputError(
            f"file name must be at most {MAX_NAME} printable characters, got {filename[:80]!r}"
        )
    suffix = Path(filename or "").suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInputError(
            f"file name '{filename}' must end with one of {', '.join(SUFFIXES)} "
            "so the format is known"
        )
    return suffix


def parse(content: bytes, filename: str, columns: ColumnSpec | None = None) -> LabelledText:
    """Read an upload with the engine's reader, via a temporary file whose name the engine's
    messages would show: they name the uploaded file instead."""
    with tempfile.NamedTemporaryFile(suffix=_suffix(filename)) as f:
        f.write(content)
        f.flush()
        try:
            return read_table(f.name, columns or ColumnSpec(), require_labels=True)
        except DataFormatError as exc:
            shown = Path(filename).name or filename
            raise DataFormatError(str(exc).replace(Path(f.name).name, shown)) from None


def inspect_upload(
    content: bytes, filename: str, columns: ColumnSpec, max_rows: int
) -> UploadSummary:
    """Validate an upload as labelled training data; raises a 4xx-mapped error otherwise."""
    data = parse(content, filename, columns)
    for name in (data.columns.text, data.columns.text_pair, data.columns.label):
        if name is not None and not _printable(name):
            raise InvalidInputError(
                f"column name {name[:80]!r} must be at most {MAX_NAME} printable characters"
            )
    if len(data.texts) > max_rows:
        raise InvalidInputError(f"{len(data.texts)} rows is over the limit of {max_rows}")
    label_names_from(data.labels or [])  # at least two classes
    counts = dict(sorted(Counter(data.labels or []).items()))
    return UploadSummary(
        len(data.texts), data.all_columns, data.columns, counts, hashlib.sha256(content).hexdigest()
    )


def check_task_type(
    label_counts: dict, task_type: str | None, metric: str | None, max_labels: int | None = None
) -> None:
    """Refuse at submission (422, from DataFormatError) a job or search whose training labels
    do not fit its task type or metric, rather than failing it on a worker later: a numeric
    column with no task type, a non-number for regression, accuracy for regression."""
    space = fit_output_space(task_type, list(label_counts))
    if max_labels is not None and len(space.labels) > max_labels:
        raise InvalidInputError(
            f"the training data has {len(space.labels)} classes; this server trains at most "
            f"{max_labels} (KILOTASK_MAX_LABELS): a numeric column meant as a target needs "
            '"task": "regression"',
            code="too_many_labels",
        )
    if metric is not None:
        space.check_metric(metric)


def labelled(ds: Dataset) -> LabelledText:
    """A stored dataset as the engine reads it, with the columns resolved at upload."""
    return parse(
        ds.content, ds.filename, ColumnSpec(ds.text_column, ds.text_pair_column, ds.label_column)
    )
