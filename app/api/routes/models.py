"""Base models this service can train on."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.api.deps import SettingsDep, TenantDep
from app.schemas.models import ModelPublic, ModelsPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


@lru_cache(maxsize=8)
def model_info(model_id: str) -> ModelPublic:
    """Loads the model once per process to count D and hash the weights (a few seconds)."""
    from app.engine.base import load_base  # torch only when a model is actually inspected

    base = load_base(model_id, num_labels=2, seed=0)
    return ModelPublic(
        id=model_id,
        num_parameters=base.num_parameters,
        num_tensors=len(list(base.model.parameters())),
        base_digest=base.digest,
    )


@router.get("", response_model=ModelsPublic)
async def list_models(settings: SettingsDep, _: TenantDep) -> ModelsPublic:
    from app.engine.base import REGISTRY

    ids = sorted(set(REGISTRY) | {settings.default_model})
    return ModelsPublic(data=[await run_in_threadpool(model_info, i) for i in ids])
