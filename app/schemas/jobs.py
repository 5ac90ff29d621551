from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.common import PageInfo, ResourceRef, UtcDatetime

MAX_SEED = 2**32 - 1
# Job and task rows store the seed in a 32-bit signed column (PostgreSQL INTEGER): the API takes
# seeds up to that until the column is widened; the engine itself takes up to MAX_SEED.
MAX_STORED_SEED = 2**31 - 1
SEED_DOC = f"seed of the projection and the head, 0 to {MAX_STORED_SEED}"
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
SaidGroups = Literal["layer", "tensor"]
TaskType = Literal["classification", "regression"]
TASK_DOC = (
    "classification (the default) or regression (one output, MSE loss, metrics pearson and "
    'spearman, predictions as {"score": x}); a label column of many distinct numbers must say'
)
Metric = Literal["accuracy", "f1", "mcc", "pearson", "spearman"]
SAID_GROUPS_DOC = (
    "SAID: one λ per transformer layer plus one for the embeddings and one for the rest "
    "('layer', the paper's, default) or one per weight tensor ('tensor')"
)


def method_options(body) -> dict:
    """The method options a job or search body set (lowrank: rank, targets, scales; SAID:
    said_groups); a method refuses the ones it does not take (422 invalid_options)."""
    opts = {"rank": body.rank, "targets": body.targets, "scales": body.scales,
            "said_groups": body.said_groups}  # fmt: skip
    return {k: v for k, v in opts.items() if v is not None}


MAX_BATCH_TOKENS = 65_536  # batch_size x max_length: one step's activations stay bounded
BATCH_DOC = f"inputs per step; batch_size x max_length at most {MAX_BATCH_TOKENS:,} tokens"


def check_batch_tokens(batch_size: int, max_length: int) -> None:
    """One step's activations stay bounded, whatever the two fields' own ranges allow."""
    if batch_size * max_length > MAX_BATCH_TOKENS:
        raise ValueError(
            f"batch_size x max_length is {batch_size * max_length:,} tokens per "
            f"step; at most {MAX_BATCH_TOKENS:,} (for example 128 x 512): lower one"
        )


class Hyperparameters(BaseModel):
    """Training settings; unset ones take the engine's defaults (learning rate: a probe)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(None, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    learning_rate: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] | None = Field(
        "auto",
        description='a rate, or "auto" (default): a short probe of four rates on a held-out '
        "slice of the training data picks it (its choice and losses are the job's lr_probe "
        "event and the task's recipe); null: the fixed default, 0.2 subspace (θ's rate at "
        "d = 1000, scaled by √(1000/d)), 3e-5 full",
    )
    patience: int | None = Field(
        3,
        ge=0,
        le=10_000,
        description="stop after this many evaluations in a row without a better metric "
        "(the best state is kept); 0: never stop early",
    )
    batch_size: int = Field(32, ge=1, le=4096, description=BATCH_DOC)
    max_length: int = Field(
        128,
        ge=8,
        le=4096,
        description="tokens per input, at most the model's own limit "
        "(GET /v1/models: max_length, 512 for the registered models); batch_size x "
        f"max_length at most {MAX_BATCH_TOKENS:,}",
    )
    eval_every: int | None = Field(None, ge=1, le=10_000_000)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    metric: Metric | None = Field(
        None,
        description="picks the best state: accuracy (default), f1, mcc; regression: "
        "pearson (default), spearman",
    )
    data_seed: int = Field(0, ge=0, le=MAX_SEED)
    storage_dtype: Literal["float32", "float16"] = "float32"
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="fp32 (default) or bf16 autocast on CUDA (the subspace delta is still "
        "applied in fp32, so small deltas are not rounded away)",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> Hyperparameters:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("give either epochs or max_steps, not both")
        check_batch_tokens(self.batch_size, self.max_length)
        return self


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, min_length=1, max_length=255, description="base model id; default: the server's"
    )
    train_dataset: ResourceRef
    eval_dataset: ResourceRef | None = None
    method: Literal["said", "did", "lowrank", "full"]
    dim: int = Field(
        1000, ge=1, le=2**31 - 1, description="subspace dimension d (SAID counts its λs)"
    )
    seed: int = Field(0, ge=0, le=MAX_STORED_SEED, description=SEED_DOC)
    rank: int | None = Field(None, ge=1, le=64, description="lowrank: rank r (default 4)")
    targets: list[str] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="lowrank: names of the nn.Linear layers to adapt (default: query, value)",
    )
    scales: bool | None = Field(None, description="lowrank: one learned scale per target")
    said_groups: SaidGroups | None = Field(None, description=SAID_GROUPS_DOC)
    task: TaskType | None = Field(None, description=TASK_DOC)
    hyperparameters: Hyperparameters = Hyperparameters()

    def options(self) -> dict:
        """The method options that were set (lowrank: rank, targets, scales; SAID: grouping)."""
        return method_options(self)


class Progress(BaseModel):
    step: int
    total: int | None


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    kind: Literal["train", "d90"] = "train"
    status: JobStatus
    model: str
    method: str
    task: str = "classification"
    dim: int
    seed: int
    train_dataset: str
    eval_dataset: str | None
    hyperparameters: dict
    options: dict = {}
    progress: Progress
    metrics: dict
    error: JobError | None
    task_id: str | None
    attempts: int
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None

    @classmethod
    def of(cls, job) -> JobPublic:
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            model=job.model,
            method=job.method,
            task=job.task_type or "classification",
            dim=job.dim,
            seed=job.seed,
            train_dataset=job.train_dataset_id,
            eval_dataset=job.eval_dataset_id,
            hyperparameters=job.hyperparameters,
            options=job.options or {},
            progress=Progress(step=job.step, total=job.total_steps),
            metrics=job.metrics or {},
            error=JobError(code=job.error_code, message=job.error_message or "")
            if job.error_code
            else None,
            task_id=job.task_id,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobsPage(PageInfo):
    data: list[JobPublic]


class JobEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    type: str
    data: dict
    created_at: UtcDatetime


class JobEventsPage(BaseModel):
    data: list[JobEventPublic]
