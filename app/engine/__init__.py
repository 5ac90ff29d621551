"""The ML core of kilotask: fastfood-v1 projection, DID/SAID subspace models, the lowrank
method (lowrank-v1) and its mixed-task forward, the method registry, task types
(classification, regression), trainer, task files,
reconstruction and export. Pure torch + transformers: nothing here imports the web, database or
queue layers, and nothing reads settings or the environment beyond the HF hub switches and
KILOTASK_MODELS_DIR (where installed base models such as mpnet-base live)."""

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
from app.engine.export import export_task
from app.engine.fastfood import FastfoodProjection, Projection, project

# Importing a method's module registers it (app/engine/methods.py), as PEFT's tuners do: every
# import of an app.engine module runs this file first, so every method is registered by the time
# any code can look one up.
from app.engine.lowrank import LowRankConfig, LowRankModel, MixedLowRankModel
from app.engine.methods import Method, TaskSettings, get_method, method_names, register
from app.engine.pipeline import Prediction, TrainOutcome, TrainRequest, predict_task, train_task
from app.engine.projections import get_projection
from app.engine.reconstruct import load_task_model, reconstruct
from app.engine.spec import SPEC_VERSION
from app.engine.subspace import SubspaceConfig, SubspaceModel
from app.engine.task_types import TASK_TYPES, OutputSpace, fit_output_space
from app.engine.trainer import TrainCallbacks, TrainConfig, TrainingCancelled

__all__ = [
    "SPEC_VERSION",
    "TASK_TYPES",
    "ArtifactFormatError",
    "BaseModel",
    "BaseModelMismatchError",
    "CheckpointError",
    "ColumnSpec",
    "DataFormatError",
    "EngineError",
    "FastfoodProjection",
    "LabelledText",
    "LowRankConfig",
    "LowRankModel",
    "Method",
    "MixedLowRankModel",
    "ModelNotFoundError",
    "OutputSpace",
    "Prediction",
    "Projection",
    "SpecVersionError",
    "SubspaceConfig",
    "SubspaceConfigError",
    "SubspaceModel",
    "TaskArtifact",
    "TaskSettings",
    "TrainCallbacks",
    "TrainConfig",
    "TrainOutcome",
    "TrainRequest",
    "TrainingCancelled",
    "export_task",
    "fit_output_space",
    "get_method",
    "get_projection",
    "load_base",
    "load_task_model",
    "method_names",
    "predict_task",
    "project",
    "read_table",
    "reconstruct",
    "register",
    "resolve_model_path",
    "train_task",
]
