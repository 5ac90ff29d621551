"""The task file: a trained task as (base model id, base digest, seed, θ_d, λ) plus metadata, in
safetensors (no pickle). Compact on purpose: a d=200 SAID task in float16 is under 1 KB.

The file carries a content digest (sha256 over its metadata and vector bytes), checked on load,
so a corrupted or edited file is refused rather than silently rebuilding another model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from app.engine.errors import ArtifactFormatError, SpecVersionError, SubspaceConfigError
from app.engine.groups import LEGACY_SAID_GROUPS, SAID_GROUPINGS
from app.engine.methods import get_method, known_specs
from app.engine.spec import SPEC_VERSION
from app.engine.task_types import CLASSIFICATION, REGRESSION, TASK_TYPES, OutputSpace

FORMAT_VERSION = 1
MAX_LENGTH = 8192  # tokens; a server also checks the model's own limit
# |θ|, |λ| at most: far above what training reaches (Adam moves a coordinate at most about lr
# per step), far below what overflows: 3e38 passed the finite check and scored NaN
MAX_COORDINATE = 1e6
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# Metadata fields stored as plain strings; every other field is stored as compact JSON.
_STRING_FIELDS = {
    "model",
    "base_digest",
    "method",
    "text_column",
    "text_pair_column",
    "dtype",
    "spec",
    "digest",
    "targets",
    "said_groups",
    "task_type",
}
# Fields that older files lack: left out of the file and the digest when unset, so every file
# written before they existed loads, and hashes, unchanged. (A build that predates a field
# refuses a file that has it: the dataclass takes no unknown keyword.)
_OPTIONAL_FIELDS = ("rank", "targets", "said_groups", "task_type", "target_stats", "lr")


@dataclass(frozen=True)
class TaskArtifact:
    """Everything needed to rebuild a task on a base model with digest `base_digest`.

    theta: (d - m,) and lam: (m,) for SAID (lam None for DID; optional for lowrank), float32 in
    memory, holding exactly the values stored (already rounded when `dtype` is float16).
    rank, targets: lowrank only (targets: comma-separated module-name suffixes).
    said_groups: SAID only: which λ scales which tensors, "layer" or "tensor" (app/engine/
    groups.py); None in files written before groupings existed, which mean "tensor" (`groups`).
    task_type: "classification" or "regression" (app/engine/task_types.py); None in files
    written before regression existed, which are classifiers. labels: the class names (empty
    for regression). target_stats: regression only, the training targets' (mean, std).
    lr: the learning rate it was trained with (picked by the probe under `--lr auto`; the
    probe's losses are in the job's events and the task row, not here: a d=200 file stays
    under 1 KB); None in files written before it existed.
    """

    model: str
    base_digest: str
    seed: int
    method: str
    dim: int
    D: int
    labels: list[str]
    text_column: str
    text_pair_column: str | None
    max_length: int
    theta: torch.Tensor
    lam: torch.Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)
    dtype: str = "float32"
    spec: str = SPEC_VERSION
    format: int = FORMAT_VERSION
    rank: int | None = None
    targets: str | None = None
    said_groups: str | None = None
    task_type: str | None = None
    target_stats: list[float] | None = None
    lr: float | None = None

    @property
    def space(self) -> OutputSpace:
        """What the head's outputs mean (how to score and present them)."""
        stats = None if self.target_stats is None else tuple(self.target_stats)
        return OutputSpace(self.task_type or CLASSIFICATION, tuple(self.labels), stats)

    @property
    def groups(self) -> str | None:
        """SAID's grouping as rebuilt ("tensor" for a file without the key); None otherwise."""
        if self.method != "said":
            return None
        return self.said_groups or LEGACY_SAID_GROUPS

    def __post_init__(self) -> None:
        self._check_fields()
        if self.dtype not in STORAGE_DTYPES:
            raise ArtifactFormatError(f"dtype must be one of {sorted(STORAGE_DTYPES)}")
        stored = STORAGE_DTYPES[self.dtype]
        for name in ("theta", "lam"):
            t = getattr(self, name)
            if t is None:
                continue
            t = t.detach().to("cpu", stored).float().clone()  # exactly what the file holds
            if t.ndim != 1 or not torch.isfinite(t).all():
                raise ArtifactFormatError(f"{name} must be a finite 1-D vector")
            if t.numel() and t.abs().max() > MAX_COORDINATE:
                raise ArtifactFormatError(
                    f"{name} holds {t.abs().max().item():.3g}; a trained task's coordinates stay "
                    f"far below {MAX_COORDINATE:g} (larger ones overflow the rebuilt weights)"
                )
            object.__setattr__(self, name, t)
        try:
            method = get_method(self.method)
        except SubspaceConfigError as exc:
            raise ArtifactFormatError(f"task file names an unknown method: {exc}") from exc
        if self.spec not in method.specs:
            raise SpecVersionError(
                f"a {self.method} task needs projection spec "
                f"{' or '.join(repr(s) for s in sorted(method.specs))}, the file names "
                f"'{self.spec}'"
            )
        if method.scales == "required" and self.lam is None:
            raise ArtifactFormatError(f"{self.method} tasks need λ (one scale per tensor)")
        if method.scales == "forbidden" and self.lam is not None:
            raise ArtifactFormatError(f"{self.method} tasks must not have λ")
        takes_rank = "rank" in method.option_names
        if takes_rank != (self.rank is not None) or (self.targets is not None and not takes_rank):
            raise ArtifactFormatError(
                f"a {self.method} task {'needs' if takes_rank else 'has no'} rank and targets"
            )
        if self.said_groups is not None and (
            "said_groups" not in method.option_names or self.said_groups not in SAID_GROUPINGS
        ):
            raise ArtifactFormatError(
                f"said_groups {self.said_groups!r} does not apply to a {self.method} task"
                if "said_groups" not in method.option_names
                else f"said_groups must be one of {', '.join(SAID_GROUPINGS)}, "
                f"got {self.said_groups!r}"
            )
        self._check_outputs()
        if self.lr is not None and not (
            isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool)
            and math.isfinite(self.lr) and self.lr > 0
        ):  # fmt: skip
            raise ArtifactFormatError(f"lr must be a positive number, got {self.lr!r}")
        m = 0 if self.lam is None else self.lam.numel()
        if self.theta.numel() + m != self.dim:
            raise ArtifactFormatError(
                f"θ and λ hold {self.theta.numel() + m} numbers, d={self.dim}"
            )

    def _check_fields(self) -> None:
        """Types and ranges of the plain fields: a crafted file's metadata is JSON of any
        shape, and a wrong type here failed later (a 500, or a stored task that broke its
        tenant's task list)."""

        def integer(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        checks = [
            (integer(self.seed) and 0 <= self.seed < 2**32, "seed must be an integer in [0, 2^32)"),
            (integer(self.dim) and self.dim >= 1, "dim must be a positive integer"),
            (integer(self.D) and self.D >= 1, "D must be a positive integer"),
            (integer(self.max_length) and 1 <= self.max_length <= MAX_LENGTH,
             f"max_length must be an integer in [1, {MAX_LENGTH}]"),
            (isinstance(self.labels, list) and all(isinstance(x, str) for x in self.labels),
             "labels must be a list of strings"),
            (isinstance(self.metrics, dict) and all(
                isinstance(k, str) and _finite_number(v) for k, v in self.metrics.items()),
             "metrics must map names to finite numbers"),
            (isinstance(self.model, str) and isinstance(self.text_column, str)
             and isinstance(self.text_pair_column, (str, type(None))),
             "model and the column names must be strings"),
            (self.rank is None or (integer(self.rank) and self.rank >= 1),
             "rank must be a positive integer"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ArtifactFormatError(message)
        if len(set(self.labels)) != len(self.labels):
            raise ArtifactFormatError("labels must be distinct (two classes share a name)")

    def _check_outputs(self) -> None:
        if self.task_type not in (None, *TASK_TYPES):
            raise ArtifactFormatError(
                f"task_type must be one of {', '.join(TASK_TYPES)}, got {self.task_type!r}"
            )
        if self.task_type == REGRESSION:
            stats = self.target_stats
            if (
                not isinstance(stats, list)
                or len(stats) != 2
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats)
                or not stats[1] > 0
            ):
                raise ArtifactFormatError("a regression task needs target_stats [mean, std > 0]")
            if self.labels:
                raise ArtifactFormatError("a regression task has no class labels")
        else:
            if self.target_stats is not None:
                raise ArtifactFormatError("target_stats apply to regression tasks only")
            if len(self.labels) < 2:
                raise ArtifactFormatError("a classification task needs at least 2 labels")

    def _metadata(self) -> dict:
        meta = {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("theta", "lam")  # tensors: never deep-copied just to be dropped
            and not (f.name in _OPTIONAL_FIELDS and getattr(self, f.name) is None)
        }
        meta["metrics"] = {k: round(float(v), 4) for k, v in self.metrics.items()}
        meta["lambdas"] = 0 if self.lam is None else self.lam.numel()
        return meta

    def _tensors(self) -> dict[str, torch.Tensor]:
        """One vector θ_d = [θ_{d-m}, λ] as in the paper (λ absent for DID): one tensor header."""
        parts = [self.theta] if self.lam is None else [self.theta, self.lam]
        return {"theta_d": torch.cat(parts).to(STORAGE_DTYPES[self.dtype]).contiguous()}

    @cached_property
    def digest(self) -> str:
        """sha256 over canonical metadata JSON and the stored vector bytes: the task's identity.
        Computed once per instance (serving asks for it on every request)."""
        h = hashlib.sha256(_canonical_json(self._metadata()).encode())
        for name, t in self._tensors().items():
            h.update(name.encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        """The metadata as a plain dict, with the content digest (what `kilotask inspect` shows)."""
        return dict(self._metadata(), digest=self.digest)

    def to_bytes(self) -> bytes:
        meta = self.describe()
        return st_save(self._tensors(), metadata=_flatten(meta))

    def save(self, path: str | Path) -> int:
        """Write the task file; returns its size in bytes."""
        data = self.to_bytes()
        Path(path).write_bytes(data)
        return len(data)

    def with_metrics(self, metrics: dict[str, float]) -> TaskArtifact:
        return replace(self, metrics=dict(metrics))

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskArtifact:
        try:
            tensors = st_load(data)
            header_len = int.from_bytes(data[:8], "little")
            meta = _unflatten(json.loads(data[8 : 8 + header_len])["__metadata__"])
        except (SafetensorError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ArtifactFormatError(f"not a kilotask task file: {exc}") from exc
        if "format" not in meta or "spec" not in meta:
            raise ArtifactFormatError("not a kilotask task file: no kilotask metadata")
        if meta.get("spec") not in known_specs():
            raise SpecVersionError(
                f"task uses projection spec '{meta.get('spec')}'; this build reads "
                f"{', '.join(sorted(known_specs()))}"
            )
        if meta.get("format") != FORMAT_VERSION:
            raise ArtifactFormatError(f"task file format {meta.get('format')} is not supported")
        claimed = meta.pop("digest", None)
        try:
            m = meta.pop("lambdas")
            theta_d = tensors["theta_d"]
            if theta_d.ndim != 1 or not 0 <= m < theta_d.numel():
                raise ArtifactFormatError(f"θ_d has shape {tuple(theta_d.shape)} for m={m}")
            theta, lam = (
                theta_d[: theta_d.numel() - m],
                theta_d[theta_d.numel() - m :] if m else None,
            )
            art = cls(**meta, theta=theta, lam=lam)
        except (TypeError, KeyError) as exc:
            raise ArtifactFormatError(f"task file metadata is incomplete: {exc}") from exc
        if claimed != art.digest:
            raise ArtifactFormatError("task file digest does not match its content: file corrupted")
        return art

    @classmethod
    def load(cls, path: str | Path) -> TaskArtifact:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ArtifactFormatError(f"cannot read task file {path}: {exc.strerror}") from exc
        return cls.from_bytes(data)


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flatten(meta: dict) -> dict[str, str]:
    """One safetensors metadata entry per field (strings as-is, the rest as JSON), None omitted:
    no JSON-in-JSON escaping, which keeps a d=200 task under 1 KB."""
    out = {}
    for key, value in meta.items():
        if value is not None:
            out[key] = value if key in _STRING_FIELDS else _canonical_json(value)
    return out


def _unflatten(flat: dict[str, str]) -> dict:
    meta = {k: v if k in _STRING_FIELDS else json.loads(v) for k, v in flat.items()}
    meta.setdefault("text_pair_column", None)
    return meta


def _canonical_json(obj) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    if isinstance(obj, dict):
        obj = {k: clean(v) for k, v in obj.items()}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
