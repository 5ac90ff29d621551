"""The ML core of kilotask: fastfood-v1 projection, DID/SAID subspace models, trainer, task
files and reconstruction. Pure torch + transformers: nothing here imports the web, database or
queue layers, and nothing reads settings or the environment beyond the HF hub switches."""

from app.engine.artifact import TaskArtifact
from app.engine.base import BaseModel, load_base, resolve_model_path
from app.engine.data import ColumnSpec, LabelledText, read_table
from app.engine.errors import (
    ArtifactFormatError,
    BaseModelMismatchError,
    CheckpointError,
    DataFormatError,
    EngineError,
    ModelNotFoundError,
    SpecVersionError,
    SubspaceConfigError,
)
from app.engine.fastfood import FastfoodProjection, Projection, get_projection, project
from app.engine.pipeline import Prediction, TrainOutcome, TrainRequest, predict_task, train_task
from app.engine.reconstruct import load_task_model, reconstruct
from app.engine.spec import SPEC_VERSION
from app.engine.subspace import SubspaceConfig, SubspaceModel
from app.engine.trainer import TrainCallbacks, TrainConfig, TrainingCancelled

__all__ = [
    "SPEC_VERSION",
    "ArtifactFormatError",
    "BaseModel",
    "BaseModelMismatchError",
    "CheckpointError",
    "ColumnSpec",
    "DataFormatError",
    "EngineError",
    "FastfoodProjection",
    "LabelledText",
    "ModelNotFoundError",
    "Prediction",
    "Projection",
    "SpecVersionError",
    "SubspaceConfig",
    "SubspaceConfigError",
    "SubspaceModel",
    "TaskArtifact",
    "TrainCallbacks",
    "TrainConfig",
    "TrainOutcome",
    "TrainRequest",
    "TrainingCancelled",
    "get_projection",
    "load_base",
    "load_task_model",
    "predict_task",
    "project",
    "read_table",
    "reconstruct",
    "resolve_model_path",
    "train_task",
]
