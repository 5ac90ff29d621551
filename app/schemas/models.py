from pydantic import BaseModel


class ModelPublic(BaseModel):
    id: str
    num_parameters: int  # D with a 2-class head (a k-class head adds (k - 2)·(hidden + 1))
    num_tensors: int  # m: how many of SAID's d are per-tensor scales
    base_digest: str
    max_length: int  # the most tokens one input may have (position embeddings, tokenizer)


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
