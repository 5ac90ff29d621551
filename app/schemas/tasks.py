from __future__ import annotations

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from app.schemas.common import ErrorDetail, PageInfo, UtcDatetime


class TaskPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    job_id: str | None
    model: str
    base_digest: str
    spec: str
    seed: int
    method: str
    dim: int
    num_parameters: int
    dtype: str
    label_names: list[str]
    text_column: str
    text_pair_column: str | None
    max_length: int
    metrics: dict
    digest: str
    rank: int | None = None  # lowrank only
    targets: str | None = None  # lowrank only: adapted module names, comma-separated
    said_groups: str | None = None  # SAID only: "layer" or "tensor" (older tasks: "tensor")
    task_type: str | None = None  # "classification" or "regression" (older: classification)
    target_stats: list[float] | None = None  # regression: the training targets' [mean, std]
    recipe: dict | None = Field(
        None,
        description="how it was trained: the learning rate used and, when the probe picked "
        'it (learning_rate "auto"), each rate\'s held-out loss',
    )
    bytes: int = Field(validation_alias=AliasChoices("size_bytes", "bytes"))
    created_at: UtcDatetime

    @model_validator(mode="after")
    def _said_grouping(self) -> TaskPublic:
        if self.method == "said" and self.said_groups is None:
            self.said_groups = "tensor"  # stored before groupings existed: one λ per tensor
        self.task_type = self.task_type or "classification"
        return self


class TasksPage(PageInfo):
    data: list[TaskPublic]


class TaskBatchItem(BaseModel):
    """One file of a batch import: 201 stored, 200 already stored (the task is the existing
    one), or the 4xx a single import would answer, with its error."""

    index: int
    filename: str
    status: int
    task: TaskPublic | None = None
    error: ErrorDetail | None = None


class TaskBatchResult(BaseModel):
    data: list[TaskBatchItem]
    created: int
    existing: int
    failed: int
