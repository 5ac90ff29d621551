from pydantic import BaseModel


class ModelPublic(BaseModel):
    id: str
    num_parameters: int  # D with a 2-class head (a k-class head adds (k - 2)·(hidden + 1))
    base_digest: str


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
