from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.common import ResourceRef

MAX_TEXT = 20_000  # characters per text
MAX_INPUTS = 1024  # inputs per call
MAX_CALL_TEXT = 1_000_000  # characters per call, all inputs together


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: ResourceRef
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    text_pair: str | None = Field(None, max_length=MAX_TEXT)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[InferInput] = Field(
        min_length=1,
        max_length=MAX_INPUTS,
        description=f"at most {MAX_INPUTS} inputs of at most {MAX_TEXT} characters each, and "
        f"{MAX_CALL_TEXT:,} characters in all (a call is tokenized whole: this bounds what one "
        "call costs everyone else)",
    )

    @model_validator(mode="after")
    def _bounded(self) -> InferRequest:
        total = sum(len(i.text) + len(i.text_pair or "") for i in self.inputs)
        if total > MAX_CALL_TEXT:
            raise ValueError(
                f"the inputs hold {total:,} characters; one call takes at most "
                f"{MAX_CALL_TEXT:,}: split it into several calls"
            )
        return self


class InferOutput(BaseModel):
    """A classification task's label and class probabilities, or a regression task's score."""

    index: int
    task: str
    label: str | None = Field(None, description="classification: the predicted label")
    scores: dict[str, float] | None = Field(
        None, description="classification: the probability of each label"
    )
    score: float | None = Field(None, description="regression: the predicted value")


class InferResponse(BaseModel):
    outputs: list[InferOutput]


class PinState(BaseModel):
    """A pin or unpin: the task, its content digest, and where it stands now."""

    task: str
    digest: str | None = Field(None, description="pin: the task's content digest")
    pinned: bool
    resident: bool | None = Field(None, description="unpin: whether it is still in memory")


class ServingState(BaseModel):
    """This process's serving state (`/v1/serving`): of the resident tasks, only the caller's
    own are listed; the rest are totals."""

    model_config = ConfigDict(extra="allow")

    cache: dict = Field(description="materialised SAID/DID tasks: budget, residency, hit rates")
    lowrank: dict = Field(description="resident lowrank factors: budget, counts, hit rates")
    projection_cache: dict
    device: str
    batches: int
    mean_batch_size: float
    largest_batch: int
    max_batch: int
    workers: int
    max_wait_ms: float
