from pydantic import BaseModel, ConfigDict, Field


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    text: str = Field(min_length=1, max_length=20_000)
    text_pair: str | None = Field(None, max_length=20_000)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[InferInput] = Field(min_length=1, max_length=1024)


class InferOutput(BaseModel):
    index: int
    task: str
    label: str
    scores: dict[str, float]


class InferResponse(BaseModel):
    outputs: list[InferOutput]
