from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import ResourceRef

MAX_TEXT = 20_000


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: ResourceRef
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    text_pair: str | None = Field(None, max_length=MAX_TEXT)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[InferInput] = Field(min_length=1, max_length=1024)


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
