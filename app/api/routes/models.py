"""Base models this service can train on."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter

from app.api.deps import SettingsDep, TenantDep
from app.api.offload import offload
from app.api.openapi import AUTHED, error_responses
from app.config import Settings
from app.errors import InvalidInputError
from app.schemas.models import ModelPublic, ModelsPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


def check_model_allowed(model_id: str, settings: Settings) -> str:
    """A tenant names a registered id or a folder under KILOTASK_MODELS_DIR, nothing else: any
    other path would let it probe the server's files (the answer said whether a folder
    existed), and a hub id would download unless KILOTASK_ALLOW_HUB is set. The refusal is
    the same whether or not the path exists."""
    from app.engine.base import REGISTRY

    if model_id in REGISTRY:
        return model_id
    root = settings.models_dir
    if root is not None and model_id.startswith("/"):
        path = Path(model_id).resolve()
        if path.is_relative_to(root.resolve()):
            return model_id
    if settings.allow_hub and "/" in model_id and not model_id.startswith(("/", ".")):
        return model_id
    raise InvalidInputError(
        f"model {model_id[:200]!r} is not one this server serves: use a registered id "
        f"({', '.join(sorted(REGISTRY))}) or an absolute folder under the models directory "
        "(KILOTASK_MODELS_DIR); GET /v1/models lists them",
        code="model_not_allowed",
    )


@lru_cache(maxsize=2)
def _base(model_id: str):
    from app.engine.base import load_base  # torch only when a model is actually inspected

    return load_base(model_id, num_labels=2, seed=0)


def method_dim_range(model_id: str, method: str, seed: int, options: dict) -> tuple[int, int]:
    """The d a method accepts on this base with these options (lowrank: rank, targets), or a
    422 that says which option does not fit."""
    from app.engine.errors import SubspaceConfigError
    from app.engine.methods import TaskSettings, get_method

    base = _base(model_id)
    settings = TaskSettings.of(method, 1, seed, **options)
    try:
        spec = get_method(method)
        unknown = set(settings.option_dict) - spec.option_names
        if unknown:
            raise SubspaceConfigError(
                f"option(s) {', '.join(sorted(unknown))} do not apply to method '{method}'"
            )
        return spec.dim_range(base.model, base.seeded, settings)
    except SubspaceConfigError as exc:
        raise InvalidInputError(str(exc), code="invalid_options") from exc


@lru_cache(maxsize=8)
def model_info(model_id: str) -> ModelPublic:
    """Loads the model once per process to count D and hash the weights (a few seconds)."""
    base = _base(model_id)
    from app.engine.base import position_limit
    from app.engine.errors import SubspaceConfigError
    from app.engine.groups import said_scale_count

    scales: dict[str, int | None] = {}
    for grouping in ("layer", "tensor"):
        try:
            scales[grouping] = said_scale_count(base.model, grouping)
        except SubspaceConfigError:  # a family whose layers cannot be told apart
            scales[grouping] = None
    return ModelPublic(
        id=model_id,
        num_parameters=base.num_parameters,
        num_tensors=len(list(base.model.parameters())),
        said_scales=scales,
        base_digest=base.digest,
        max_length=position_limit(base),
    )


@lru_cache(maxsize=64)
def parameter_count(model_id: str, num_labels: int) -> int:
    """D of the model's classifier with `num_labels` outputs, from its config alone (shapes on
    the meta device: no weights, no second copy of the base)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = _base(model_id).model.config
    config = type(config).from_dict({**config.to_dict(), "num_labels": num_labels})
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check_max_length(model_id: str, max_length: int, what: str = "max_length") -> None:
    """422 when `max_length` is more tokens than the model takes: it would fail mid-run."""
    limit = model_info(model_id).max_length
    if max_length > limit:
        raise InvalidInputError(
            f"{what} {max_length} is more than '{model_id}' takes: at most {limit} tokens per "
            f"input (its position embeddings and tokenizer); use {limit} or less",
            code="invalid_max_length",
        )


@router.get("", response_model=ModelsPublic, responses=error_responses(*AUTHED, 422))
async def list_models(settings: SettingsDep, tenant_id: TenantDep) -> ModelsPublic:
    return await offload(tenant_id, _models, settings.default_model)


def _models(default_model: str) -> ModelsPublic:
    from app.engine.base import installed_models

    # registered models not installed here are left out; the default is listed (or errs) always
    ids = sorted(set(installed_models()) | {default_model})
    return ModelsPublic(data=[model_info(i) for i in ids])
