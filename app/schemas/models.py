from pydantic import BaseModel


class ModelPublic(BaseModel):
    id: str
    num_parameters: int  # D with a 2-class head (a k-class head adds (k - 2)·(hidden + 1))
    num_tensors: int  # SAID's m with said_groups "tensor"
    said_scales: dict[str, int | None]  # SAID's m by grouping; null where it cannot group
    base_digest: str
    max_length: int  # the most tokens one input may have (position embeddings, tokenizer)


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
