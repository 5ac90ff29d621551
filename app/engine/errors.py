"""The engine's error tree. Each error has a stable snake_case `code` for the service layer;
errors about a bad value also subclass ValueError so plain `except ValueError` still works."""


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "engine_error"


class DataFormatError(EngineError, ValueError):
    """A data file is unreadable or does not match the columns and labels asked for."""

    code = "data_format_error"


class ModelNotFoundError(EngineError, ValueError):
    """A base model id is neither registered, a local folder, nor reachable on the hub."""

    code = "model_not_found"


class SubspaceConfigError(EngineError, ValueError):
    """A subspace setting (method, d, seed) cannot work with this model."""

    code = "invalid_subspace_config"


class ArtifactFormatError(EngineError, ValueError):
    """A task file is not a readable kilotask task (or is corrupted)."""

    code = "artifact_format_error"


class SpecVersionError(EngineError, ValueError):
    """A task file was written with a projection spec this version cannot rebuild."""

    code = "spec_version_unsupported"


class BaseModelMismatchError(EngineError, ValueError):
    """A task was trained on a base model whose weights differ from the one offered."""

    code = "base_model_mismatch"


class CheckpointError(EngineError, ValueError):
    """A training checkpoint does not belong to this run or cannot be read."""

    code = "checkpoint_error"
