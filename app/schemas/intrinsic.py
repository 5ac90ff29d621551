from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.common import ResourceRef
from app.schemas.jobs import (
    BATCH_DOC,
    MAX_BATCH_TOKENS,
    MAX_STORED_SEED,
    SAID_GROUPS_DOC,
    SEED_DOC,
    TASK_DOC,
    JobPublic,
    Metric,
    SaidGroups,
    TaskType,
    check_batch_tokens,
    method_options,
)

Rate = Annotated[float, Field(gt=0, le=10)]


class D90Create(BaseModel):
    """A d90 search: full fine-tuning for the bar, then a log sweep and bisection over d."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, min_length=1, max_length=255, description="base model id; default: the server's"
    )
    train_dataset: ResourceRef
    eval_dataset: ResourceRef
    method: Literal["said", "did", "lowrank"] = "said"
    rank: int | None = Field(None, ge=1, le=64, description="lowrank: rank r (default 4)")
    targets: list[str] | None = Field(None, min_length=1, max_length=32)
    scales: bool | None = None
    said_groups: SaidGroups | None = Field(None, description=SAID_GROUPS_DOC)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="every run's precision (fp32, the default, or bf16 on CUDA)"
    )
    seed: int = Field(0, ge=0, le=MAX_STORED_SEED, description=SEED_DOC)
    min_d: int = Field(10, ge=1, le=2**31 - 2, description="the smallest d tried; below max_d")
    max_d: int = Field(100_000, ge=2, le=2**31 - 1, description="the largest d tried")
    sweep_points: int = Field(5, ge=2, le=50)
    tolerance: float = Field(
        0.1, gt=0, le=10, description="stop bisecting when hi/lo <= 1 + tolerance (10 %)"
    )
    threshold: float = Field(0.9, gt=0, le=1)
    lr_grid: list[Rate] = Field(
        [0.02, 0.05, 0.1, 0.2],
        min_length=1,
        max_length=10,
        description="learning rates tried at every d (four, as in the paper)",
    )
    seeds: int = Field(
        1,
        ge=1,
        le=10,
        description="seeds for a d whose metric lies within one standard error of the bar; "
        "it passes on their mean",
    )
    full_lr_grid: list[Rate] = Field([2e-5, 5e-5], min_length=1, max_length=10)
    budget_steps: int = Field(200, ge=1, le=1_000_000)
    batch_size: int = Field(32, ge=1, le=4096, description=BATCH_DOC)
    max_length: int = Field(
        128,
        ge=8,
        le=4096,
        description=f"tokens per input; batch_size x max_length at most {MAX_BATCH_TOKENS:,}",
    )
    task: TaskType | None = Field(None, description=TASK_DOC)
    metric: Metric | None = Field(
        None, description="accuracy (default), f1, mcc; regression: pearson (default), spearman"
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="how many workers may share the search's runs: the learning rates of one "
        "d (and of full fine-tuning) run at once on up to this many workers",
    )
    reuse_from: ResourceRef | None = Field(
        None,
        description="id of a d90 search with the same datasets, model, seed, budget, batch "
        "size, max length, metric and full_lr_grid whose finished runs to take instead of "
        "redoing them: its full fine-tuning (the bar) and its runs of this method",
    )

    def options(self) -> dict:
        """The method options that were set (lowrank: rank, targets, scales; SAID: grouping)."""
        return method_options(self)

    @model_validator(mode="after")
    def _range(self) -> D90Create:
        if self.min_d >= self.max_d:
            raise ValueError("min_d must be smaller than max_d")
        check_batch_tokens(self.batch_size, self.max_length)
        return self


class D90Public(JobPublic):
    """The job, plus the search so far: `results` fills in point by point (d, metric, lr,
    passed, seeds), then gains d90, the bracket, `censored` ("left": d90 <= min_d, "right":
    d90 > max_d), `d90_text`, `monotone` and `notes` when the search finishes."""

    results: dict

    @classmethod
    def of(cls, job) -> D90Public:
        results = job.metrics or {}
        if "bar" in results and "monotone" not in results:  # a search from before censoring
            from app.search.plan import upgrade_results  # (imports torch: only for such old rows)

            results = upgrade_results(results)
        return cls(**JobPublic.of(job).model_dump(), results=results)
