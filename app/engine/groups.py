"""SAID's scale groups: which λ multiplies which parameter tensor (docs/PROJECTION.md).

SAID (paper §3) trades m of the d coordinates for scales: θ_i = θ_0,i + λ_{g(i)}·P(θ_{d-m})_i,
where g maps each parameter tensor i to one of m groups. Two groupings:

* `layer` (the default for new tasks; the paper's "for m layers, we trade m parameters"): one λ
  for the embeddings, one per transformer layer and one for the rest (pooler, head, norms and
  shared position tables outside the layers). RoBERTa-large: m = 1 + 24 + 1 = 26. An
  encoder-decoder (BART, T5) has one λ per encoder layer and one per decoder layer.
* `tensor` (kilotask's first SAID, and what a task file without a `said_groups` key means):
  one λ per parameter tensor. RoBERTa-large: m = 393.

The grouping is a pure function of the parameter names (canonical order, app/engine/base.py),
so a task file needs only the grouping's name to be rebuilt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.errors import SubspaceConfigError

SAID_GROUPINGS = ("layer", "tensor")
DEFAULT_SAID_GROUPS = "layer"
LEGACY_SAID_GROUPS = "tensor"  # task files written before groupings existed

# A transformer layer's index in a parameter name. The leftmost match names the layer (T5's
# `block.<i>` comes before its sub-layers' `layer.<j>`); the part of the name before it names the
# layer stack: exactly one, or an encoder and a decoder (BART, T5).
_ALBERT_LAYER = re.compile(r"(?:^|\.)albert_layer_groups\.(\d+)\.albert_layers\.(\d+)\.")
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|block)\.(\d+)\.")
# A name with one of these components (outside the layers) belongs to the embeddings group:
# encoder-only families' embedding modules, and BART's and T5's token/position tables.
EMBEDDING_PARTS = frozenset(
    {"embeddings", "embeddings_project", "embedding_hidden_mapping_in"}
    | {"shared", "embed_tokens", "embed_positions", "layernorm_embedding"}
)
_STACK_ROLES = ("encoder", "decoder")  # the two stacks of an encoder-decoder, in λ order
# Config fields that hold the number of transformer layers (checked against the names found).
_LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layers", "num_layers")


@dataclass(frozen=True)
class ScaleGroups:
    """A grouping of the tensors of one model.

    names: one per λ, in λ order (`embeddings`, `layer.0` … `layer.L-1`, `rest`; for `tensor`
    grouping the parameter names themselves).
    of_tensor: the λ index of each tensor, in canonical order.
    """

    grouping: str
    names: tuple[str, ...]
    of_tensor: tuple[int, ...]

    @property
    def m(self) -> int:
        return len(self.names)

    def runs(self, sizes: Sequence[int]) -> tuple[list[int], list[int]]:
        """Consecutive tensors of one group merged: (run sizes, λ index per run). For `tensor`
        grouping the runs are the tensors themselves."""
        run_sizes: list[int] = []
        run_groups: list[int] = []
        for size, g in zip(sizes, self.of_tensor, strict=True):
            if run_groups and run_groups[-1] == g and self.grouping != "tensor":
                run_sizes[-1] += size
            else:
                run_sizes.append(size)
                run_groups.append(g)
        return run_sizes, run_groups

    def members(self) -> dict[str, list[int]]:
        """Group name -> the indices (canonical order) of its tensors."""
        out: dict[str, list[int]] = {name: [] for name in self.names}
        for i, g in enumerate(self.of_tensor):
            out[self.names[g]].append(i)
        return out


def check_grouping(grouping: str) -> None:
    if grouping not in SAID_GROUPINGS:
        raise SubspaceConfigError(
            f"SAID groups must be one of {', '.join(SAID_GROUPINGS)}, got {grouping!r}"
        )


def _layer_of(name: str) -> tuple[str, tuple[int, ...]] | None:
    """(stack prefix, layer index) of a parameter inside a transformer layer, else None."""
    found = [m for m in (_ALBERT_LAYER.search(name), _LAYER.search(name)) if m is not None]
    if not found:
        return None
    first = min(found, key=lambda m: m.start())
    return name[: first.start()], tuple(int(g) for g in first.groups())


def _stack_labels(stacks: set[str]) -> dict[str, tuple[int, str]] | None:
    """Stack prefix -> (order, group-name prefix). One stack is unlabelled (`layer.<i>`, as
    ever); an encoder and a decoder under one parent are different layers, encoder first
    (`encoder.layer.<i>`, `decoder.layer.<i>`). None for any other set of stacks."""
    if len(stacks) == 1:
        return {next(iter(stacks)): (0, "")}
    split = {s: s.rpartition(".") for s in stacks}
    roles = {last for _, _, last in split.values()}
    if len(stacks) != 2 or roles != set(_STACK_ROLES) or len({p for p, _, _ in split.values()}) > 1:
        return None
    return {s: (_STACK_ROLES.index(last), last + ".") for s, (_, _, last) in split.items()}


def _expected_layers(config) -> int | None:
    if config is None:
        return None
    if getattr(config, "model_type", None) == "albert":  # layers share weights by group
        return int(config.num_hidden_groups) * int(config.inner_group_num)
    if getattr(config, "is_encoder_decoder", False):  # BART: encoder_layers; T5: num_layers
        encoder = getattr(config, "encoder_layers", None) or getattr(config, "num_layers", None)
        decoder = getattr(config, "decoder_layers", None) or getattr(
            config, "num_decoder_layers", None
        )
        if isinstance(encoder, int) and isinstance(decoder, int):
            return encoder + decoder
    for field in _LAYER_COUNT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int):
            return value
    return None


def said_groups(names: Sequence[str], grouping: str, config=None) -> ScaleGroups:
    """The grouping of the tensors `names` (canonical order). `config` (the model's
    transformers config), when given, checks that the layers found are the model's layers.
    Raises SubspaceConfigError, suggesting `tensor`, when the names cannot be grouped by layer."""
    check_grouping(grouping)
    if grouping == "tensor":
        return ScaleGroups("tensor", tuple(names), tuple(range(len(names))))
    kinds: list[tuple[str, tuple[int, ...]] | str] = []
    stacks: set[str] = set()
    for name in names:
        layer = _layer_of(name)
        if layer is not None:
            stacks.add(layer[0])
            kinds.append(layer)
        elif EMBEDDING_PARTS & set(name.split(".")):
            kinds.append("embeddings")
        else:
            kinds.append("rest")
    labels = _stack_labels(stacks) if stacks else {}
    hint = "; use --said-groups tensor (one λ per tensor) for this model"
    example = ", ".join(list(names)[:3])
    if not stacks:
        raise SubspaceConfigError(
            "cannot group this model's parameters by layer: no parameter name has a layer index "
            f"('encoder.layer.<i>.', 'transformer.layer.<i>.', 'layers.<i>.'; names like {example})"
            + hint
        )
    if "embeddings" not in kinds:
        raise SubspaceConfigError(
            "cannot group this model's parameters by layer: no parameter belongs to an "
            f"'embeddings' module (names like {example})" + hint
        )
    if labels is None:
        raise SubspaceConfigError(
            "cannot group this model's parameters by layer: it has more than one stack of "
            f"layers ({', '.join(sorted(stacks))}) and they are not one encoder and one "
            "decoder" + hint
        )
    keys = [(labels[k[0]][0], k[1]) if isinstance(k, tuple) else k for k in kinds]
    layers = sorted({k for k in keys if isinstance(k, tuple)})
    expected = _expected_layers(config)
    if expected is not None and len(layers) != expected:
        raise SubspaceConfigError(
            f"cannot group this model's parameters by layer: its names give {len(layers)} "
            f"layers, its config says {expected}" + hint
        )
    index = {key: 1 + i for i, key in enumerate(layers)}
    has_rest = "rest" in kinds
    rest = 1 + len(layers)
    of_tensor = tuple(0 if k == "embeddings" else rest if k == "rest" else index[k] for k in keys)
    prefix = {order: label for order, label in labels.values()}
    group_names = (
        ("embeddings",)
        + tuple(prefix[o] + "layer." + ".".join(str(i) for i in key) for o, key in layers)
        + (("rest",) if has_rest else ())
    )
    return ScaleGroups("layer", group_names, of_tensor)


def said_groups_of_model(model, grouping: str) -> ScaleGroups:
    """The grouping of a classifier's parameters (canonical order), checked against its config."""
    from app.engine.base import canonical_names

    return said_groups(canonical_names(model), grouping, getattr(model, "config", None))


def said_scale_count(model, grouping: str = DEFAULT_SAID_GROUPS) -> int:
    """m: how many of SAID's d are scales on this model under `grouping`."""
    return said_groups_of_model(model, grouping).m
