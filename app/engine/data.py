"""Labelled text for sequence classification and regression: read TSV/CSV/JSONL tables, map
labels, tokenize and batch. It depends only on the stdlib, torch and transformers so the CLI,
the service and the workers can all read user data the same way, with errors that say what to
fix."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from app.engine.errors import DataFormatError

if TYPE_CHECKING:
    from app.engine.task_types import OutputSpace

LABEL_CANDIDATES = ("label", "labels", "Quality", "quality", "y", "target", "score")
TEXT_CANDIDATES = ("sentence", "text", "sentence1", "#1 String", "question", "premise")
PAIR_CANDIDATES = (
    ("sentence1", "sentence2"),
    ("#1 String", "#2 String"),
    ("question", "sentence"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
)
DELIMITERS = {".tsv": "\t", ".csv": ","}
JSON_SUFFIXES = (".jsonl", ".json")
_MISSING = object()
_NO_HEADER = (
    "the file seems to have no header row; its first row must name every column "
    "(or name the columns yourself: kilotask --columns a,b,c)."
)


@dataclass(frozen=True)
class ColumnSpec:
    """Column names to read; None means auto-detect."""

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None


@dataclass
class LabelledText:
    """Rows of a table: texts (and second texts for pair tasks) with their label strings."""

    texts: list[str]
    text_pairs: list[str] | None
    labels: list[str] | None
    columns: ColumnSpec  # the resolved column names
    all_columns: list[str]


MAX_COLUMNS = 1024  # a data set of text and labels needs a few; a wider one is a mistake
Row = tuple[int, list[Any]]  # (line number, cells in header order)


def _check_width(path: Path, columns: int) -> None:
    if columns > MAX_COLUMNS:
        raise DataFormatError(
            f"{path.name}: the header has {columns} columns; at most {MAX_COLUMNS} are read "
            "(keep the text, text pair and label columns)."
        )


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFormatError(f"{path.name}: line {line} is not valid UTF-8.") from None


def _read_delimited(
    path: Path, text: str, delimiter: str, names: Sequence[str] | None = None
) -> tuple[list[str], list[Row]]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:  # line_num after a row is that row's (last) line
        rows: list[Row] = [(reader.line_num, cells) for cells in reader]
    except csv.Error as exc:
        raise DataFormatError(f"{path.name}: line {reader.line_num}: {exc}") from None
    while rows and not rows[-1][1]:
        rows.pop()  # trailing empty lines
    if not rows:
        raise DataFormatError(f"{path.name}: the file is empty; it needs a header row and data.")
    if names is not None:  # a headerless file: the caller names its columns
        rows = [(0, list(names))] + rows
    header = rows[0][1]
    _check_width(path, len(header))
    seen: set[str] = set()
    for i, name in enumerate(header):
        why = "an empty name" if not name else "a duplicated name" if name in seen else ""
        seen.add(name)
        if why:
            raise DataFormatError(
                f"{path.name}: the first row has {why} in column {i + 1}: {_NO_HEADER}"
            )
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            raise DataFormatError(
                f"{path.name}: line {line} has {len(cells)} fields, the header has "
                f"{len(header)}. Check for stray delimiters or missing cells."
            )
    return header, rows[1:]


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list[Row]]:
    header: list[str] | None = None
    rows: list[Row] = []
    for line, content in enumerate(text.splitlines(), 1):
        if not content.strip():
            continue
        try:
            obj = json.loads(content)
        except (json.JSONDecodeError, RecursionError):  # nesting deeper than Python's stack
            obj = None
        if not isinstance(obj, dict):
            raise DataFormatError(
                f"{path.name}: line {line} is not a JSON object; write one object per line."
            )
        if header is None:
            header = list(obj)
            _check_width(path, len(header))
        rows.append((line, [obj.get(k, _MISSING) for k in header]))
    if header is None:
        raise DataFormatError(f"{path.name}: the file has no JSON objects.")
    return header, rows


def _looks_like_data(cells: Sequence[str]) -> bool:
    return any(
        c.strip().lstrip("+-").isdigit() or (len(c) > 40 and " " in c.strip()) for c in cells
    )


def _resolve(name: str, header: list[str], columns: ColumnSpec, require_labels: bool) -> ColumnSpec:
    def first(candidates: Sequence[str], kind: str) -> str:
        found = next((c for c in candidates if c in header), None)
        if found is None:
            raise DataFormatError(
                f"{name}: no {kind} column found (looked for {list(candidates)}); columns are "
                f"{header}. Pass --{kind}-column."
            )
        return found

    text, pair, label = columns.text, columns.text_pair, columns.label
    for column, option in ((text, "text"), (pair, "text-pair"), (label, "label")):
        if column is not None and column not in header:
            raise DataFormatError(
                f"{name}: no column {column!r}; columns are {header}. Pass --{option}-column."
            )
    if text is None:
        if pair is None:
            text, pair = next(
                ((a, b) for a, b in PAIR_CANDIDATES if {a, b} <= set(header)), (None, None)
            )
        if text is None:
            text = first([c for c in TEXT_CANDIDATES if c != pair], "text")
    if label is None:
        try:
            label = first(LABEL_CANDIDATES, "label")
        except DataFormatError:
            if require_labels:
                raise
    return ColumnSpec(text, pair, label)


def _cell(name: str, line: int, column: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is _MISSING:
        raise DataFormatError(f"{name}: line {line} has no key {column!r}. Add it to every row.")
    if isinstance(value, (int, float, bool)):
        return str(value)
    kind = "null" if value is None else f"a {type(value).__name__}"
    raise DataFormatError(f"{name}: line {line}: {column!r} is {kind}; use a string or a number.")


def read_table(
    path: str | os.PathLike,
    columns: ColumnSpec = ColumnSpec(),
    require_labels: bool = True,
    names: Sequence[str] | None = None,
) -> LabelledText:
    """Read a labelled table (.tsv, .csv with a header row; .jsonl/.json, one object per line).

    Columns left as None in `columns` are auto-detected. With `require_labels=False` a table
    without a label column is accepted (labels=None), e.g. for prediction input. `names` reads
    a .tsv/.csv that has no header row (GLUE's CoLA): its columns get these names, in order.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DELIMITERS and suffix not in JSON_SUFFIXES:
        raise DataFormatError(
            f"{path.name}: unsupported file type {suffix!r}; use .tsv, .csv, .jsonl or .json."
        )
    text = _decode(path)
    if names is not None and suffix not in DELIMITERS:
        raise DataFormatError(f"{path.name}: column names apply to .tsv/.csv files only.")
    if suffix in DELIMITERS:
        header, rows = _read_delimited(path, text, DELIMITERS[suffix], names)
    else:
        header, rows = _read_jsonl(path, text)
    if not rows:
        raise DataFormatError(f"{path.name}: the file has a header row but no data rows.")
    try:
        spec = _resolve(path.name, header, columns, require_labels)
    except DataFormatError:
        if suffix in DELIMITERS and _looks_like_data(header):
            raise DataFormatError(
                f"{path.name}: the first row {header} looks like data: {_NO_HEADER}"
            ) from None
        raise

    def column(name: str) -> list[str]:
        i = header.index(name)
        return [_cell(path.name, line, name, cells[i]) for line, cells in rows]

    labels = None
    if spec.label is not None:
        labels = [value.strip() for value in column(spec.label)]
        for (line, _), value in zip(rows, labels, strict=True):
            if not value:
                raise DataFormatError(f"{path.name}: line {line} has an empty {spec.label!r}.")
    pairs = column(spec.text_pair) if spec.text_pair else None
    return LabelledText(column(spec.text), pairs, labels, spec, list(header))


class TokenizedDataset(torch.utils.data.Dataset):
    """Every row tokenized once up front (no padding): lists of token ids per row, and the
    row's training target (a class index, or a standardised number) when `space` is given."""

    KEYS = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(
        self, data: LabelledText, tokenizer, max_length: int, space: OutputSpace | None
    ) -> None:
        self.features: dict[str, list[list[int]]] = {}
        if data.texts:
            args = (data.texts, data.text_pairs) if data.text_pairs is not None else (data.texts,)
            encoded = tokenizer(*args, truncation=True, max_length=max_length)
            self.features = {k: list(encoded[k]) for k in self.KEYS if k in encoded}
        self.space = space
        self.labels: list | None = None
        if space is not None and data.labels is not None:
            self.labels = space.targets(data.labels)
        self._len = len(data.texts)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[i] for k, v in self.features.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def split_rows(data: LabelledText, count: int, seed: int) -> tuple[LabelledText, LabelledText]:
    """(the other rows, `count` rows drawn with `seed`), each in the file's order: a held-out
    slice that is the same for every run on the same data and seed."""
    n = len(data.texts)
    picked = set(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].tolist())

    def rows(keep) -> LabelledText:
        idx = [i for i in range(n) if keep(i)]
        pairs = None if data.text_pairs is None else [data.text_pairs[i] for i in idx]
        labels = None if data.labels is None else [data.labels[i] for i in idx]
        return replace(data, texts=[data.texts[i] for i in idx], text_pairs=pairs, labels=labels)

    return rows(lambda i: i not in picked), rows(lambda i: i in picked)


def collate(batch: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the rows to the longest in the batch: LongTensors, and labels as given (class
    indices as a LongTensor, regression targets as a FloatTensor)."""
    out: dict[str, torch.Tensor] = {}
    for key in batch[0]:
        values = [row[key] for row in batch]
        if key != "labels":
            width = max(len(v) for v in values)
            pad = pad_token_id if key == "input_ids" else 0
            values = [v + [pad] * (width - len(v)) for v in values]
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = torch.tensor(values)  # int64 or float32, from the Python values
    return out


def batches_per_epoch(n_rows: int, batch_size: int) -> int:
    """Batches in one pass over `n_rows` rows (the last, partial batch counts)."""
    return -(-n_rows // batch_size)


def make_loader(
    dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    pad_token_id: int,
    epoch: int = 0,
    skip_batches: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded batches of one epoch, in an order fixed by (seed, epoch) when shuffling. The first
    `skip_batches` batches are skipped without being built: a run resumed at step k of an epoch
    sees exactly the batches k.. of an uninterrupted one."""
    order = list(range(len(dataset)))
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(dataset), generator=generator).tolist()
    for start in range(skip_batches * batch_size, len(order), batch_size):
        yield collate([dataset[i] for i in order[start : start + batch_size]], pad_token_id)
