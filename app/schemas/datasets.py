from pydantic import BaseModel, ConfigDict

from app.schemas.common import PageInfo, UtcDatetime


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    rows: int
    columns: list[str]
    text_column: str
    text_pair_column: str | None
    label_column: str | None
    label_counts: dict[str, int]
    sha256: str
    created_at: UtcDatetime


class DatasetsPage(PageInfo):
    data: list[DatasetPublic]
