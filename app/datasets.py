"""Uploaded datasets: validate the bytes with the engine's reader, and turn stored rows back
into the engine's LabelledText (for workers on any machine)."""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from app.engine.data import ColumnSpec, LabelledText, label_names_from, read_table
from app.errors import InvalidInputError

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


@dataclass
class UploadSummary:
    rows: int
    columns: list[str]
    resolved: ColumnSpec
    label_counts: dict[str, int]
    sha256: str


def _suffix(filename: str) -> str:
    suffix = Path(filename or "").suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInputError(
            f"file name '{filename}' must end with one of {', '.join(SUFFIXES)} "
            "so the format is known"
        )
    return suffix


def parse(content: bytes, filename: str, columns: ColumnSpec | None = None) -> LabelledText:
    with tempfile.NamedTemporaryFile(suffix=_suffix(filename)) as f:
        f.write(content)
        f.flush()
        return read_table(f.name, columns or ColumnSpec(), require_labels=True)


def inspect_upload(
    content: bytes, filename: str, columns: ColumnSpec, max_rows: int
) -> UploadSummary:
    """Validate an upload as labelled training data; raises a 4xx-mapped error otherwise."""
    data = parse(content, filename, columns)
    if len(data.texts) > max_rows:
        raise InvalidInputError(f"{len(data.texts)} rows is over the limit of {max_rows}")
    label_names_from(data.labels or [])  # at least two classes
    counts = dict(sorted(Counter(data.labels or []).items()))
    return UploadSummary(
        len(data.texts), data.all_columns, data.columns, counts, hashlib.sha256(content).hexdigest()
    )
