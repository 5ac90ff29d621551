"""One base classifier answering rows of many lowrank tasks in ONE forward pass.

Every target layer runs its base GEMM once for the whole batch, then adds each row's own
low-rank correction, seed by seed: for the rows of one seed, z = x·Aᵀ (A is shared by all tasks
of a seed), then a batched matmul of z with each row's gathered λ·B (a per-row gather, as
Punica's BGMV), so a row pays for its own seed's rank only, however many seeds share the batch.
Head layers (the seeded ones) apply each task's own weights to that task's rows, in place (no
per-row copies of a head); a head's hidden dense layer in lowrank-v2 uses the seeded weight of
its seed (shared by every task of that seed) plus each row's low-rank correction. Seed-derived
tensors (A, seeded head weights) live in a SeedCache under a byte cap. The base
weights are never written, so model workers on several threads share one model; each thread's
batch lives in a thread-local context.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.base import BaseModel, init_std, seeded_value
from app.engine.errors import BaseModelMismatchError, SubspaceConfigError
from app.engine.lowrank.config import LowRankConfig
from app.engine.lowrank.layout import (
    LowRankLayout,
    Target,
    layout_for,
    projected_dim,
    projections_for,
    seeded_a,
    task_factors,
)
from app.engine.lowrank.seed_cache import SeedCache

SEED_CACHE_BYTES = 256 * 2**20  # a model's own cap when no cache is shared with it (serving's is)


@dataclass
class LowRankFactors:
    """A lowrank task ready to serve: λ_t·B_t for every target (adapters, then head targets) in
    one flat buffer, and its dense head tensors (seeded init + λ·δ). About 4·(rank·Σ out +
    head) bytes: a head's hidden dense layer is kept at rank r in lowrank-v2, not whole."""

    seed: int
    layout: LowRankLayout
    b: torch.Tensor  # (layout.b_size,) float32: [λ_t·B_t row-major] in all_targets order
    head: dict[str, torch.Tensor]  # parameter name -> full value
    num_labels: int
    offsets: dict[str, int] = field(default_factory=dict)  # target name -> offset in b

    def __post_init__(self) -> None:
        off = 0
        for t in self.layout.all_targets:
            self.offsets[t.name] = off
            off += t.out_features * self.layout.rank

    @property
    def nbytes(self) -> int:
        tensors = [self.b, *self.head.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def b_of(self, target: Target) -> torch.Tensor:
        """λ_t·B_t: (out, rank) in float32 (a view when stored in float32)."""
        off, r = self.offsets[target.name], self.layout.rank
        return self.b[off : off + target.out_features * r].view(target.out_features, r).float()

    def head_of(self, name: str) -> torch.Tensor | None:
        """A dense head tensor in float32 (None when the task has none of that name)."""
        value = self.head.get(name)
        return None if value is None else value.float()


@dataclass
class _Rows:
    """Rows of one target layer that share a seed: A of that seed (at the group's largest rank)
    and each row's λ·B, zero-padded to that rank. `rows` None: every row of the batch; a 2-D `b`
    (out, R): one task answers every row."""

    rows: torch.Tensor | None
    a: torch.Tensor  # (R, in)
    b: torch.Tensor  # (n, out, R), or (out, R)


@dataclass
class _Batch:
    """What the hooks read for one forward: per target and head module, what to add."""

    targets: dict[str, list[_Rows]]  # name -> its rows, seed by seed
    heads: dict[str, list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]]]
    # head modules some row moves at rank r: name -> [(row indices, how those rows compute)]
    head_targets: dict[str, list[tuple[torch.Tensor, _HeadRows]]] = field(default_factory=dict)


@dataclass
class _HeadRows:
    """Rows of one head module that compute alike: dense per-row weights (`w` (n, out, in), a
    lowrank-v1 task's), or one seed's seeded weight `w` (out, in) plus per-row low rank."""

    w: torch.Tensor
    bias: torch.Tensor  # (n, out)
    a: torch.Tensor | None = None  # (R, in): A of the seed at the group's largest rank
    b: torch.Tensor | None = None  # (n, out, R)


class MixedLowRankModel:
    """Serves lowrank tasks of one base (any label count, seed, rank and targets) from
    `base.model`, whose own weights are never modified."""

    def __init__(
        self,
        base: BaseModel,
        device: str | torch.device = "cpu",
        seed_cache: SeedCache | None = None,
        storage_dtype: torch.dtype = torch.float32,
    ) -> None:
        """`storage_dtype`: how a task's factors are kept between requests (computed in
        float32 and used in float32 either way; float16 halves a resident task)."""
        self.base = base
        self.storage_dtype = storage_dtype
        self.device = torch.device(device)
        self.model = base.model.to(self.device).eval()
        self._modules = dict(self.model.named_modules())
        self._std = init_std(self.model)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._hooked: set[str] = set()
        self.seeds = SeedCache(SEED_CACHE_BYTES) if seed_cache is None else seed_cache
        self._layouts: dict[tuple, LowRankLayout] = {}
        self._skeletons: dict[int, nn.Module] = {}  # label count -> meta-device classifier

    # ---- rebuilding a task -------------------------------------------------------------------
    def layout(self, config: LowRankConfig, num_labels: int) -> LowRankLayout:
        key = (config.rank, config.targets, config.scales, num_labels, config.spec)
        with self._lock:
            if key not in self._layouts:
                self._layouts[key] = layout_for(
                    self._skeleton(num_labels), self.base.seeded, config
                )
            return self._layouts[key]

    def _skeleton(self, num_labels: int) -> nn.Module:
        """The classifier's shapes for `num_labels` labels, without storage."""
        if num_labels not in self._skeletons:
            from transformers import AutoModelForSequenceClassification

            cfg = type(self.model.config).from_dict(
                {**self.model.config.to_dict(), "num_labels": num_labels}
            )
            with torch.device("meta"):
                self._skeletons[num_labels] = AutoModelForSequenceClassification.from_config(cfg)
        return self._skeletons[num_labels]

    def check_compatible(self, task_digest: str, task_D: int, num_labels: int) -> None:
        """Refuse a task trained on other base weights (digest), or with another shape."""
        if task_digest != self.base.digest:
            raise BaseModelMismatchError(
                f"task was trained on a base with digest {task_digest[:12]}…, but "
                f"'{self.base.model_id}' has digest {self.base.digest[:12]}…: use the same base"
            )
        D = sum(p.numel() for p in self._skeleton(num_labels).parameters())
        if task_D != D:
            raise BaseModelMismatchError(f"task expects D={task_D} parameters, this base has {D}")

    @torch.no_grad()
    def build(
        self,
        config: LowRankConfig,
        num_labels: int,
        theta: torch.Tensor,
        lam: torch.Tensor | None,
    ) -> LowRankFactors:
        """A task's factors from θ_d: one small projection and its seeded head (a few ms)."""
        layout = self.layout(config, num_labels)
        if tuple(theta.shape) != (projected_dim(layout, config.dim),):
            raise SubspaceConfigError(
                f"θ has shape {tuple(theta.shape)}, expected ({projected_dim(layout, config.dim)},)"
            )
        if (lam is None) != (layout.num_scales == 0) or (
            lam is not None and lam.numel() != layout.num_scales
        ):
            raise SubspaceConfigError(f"λ must have {layout.num_scales} entries")
        projections = projections_for(layout, config.dim, config.seed, self.device)
        bs, heads = task_factors(
            layout,
            theta.to(self.device, torch.float32),
            None if lam is None else lam.to(self.device, torch.float32),
            projections,
        )
        b = torch.cat([x.reshape(-1) for x in bs]) if bs else torch.empty(0, device=self.device)
        head = {
            name: seeded_value(name, shape, config.seed, self._std).to(self.device) + delta
            for (name, shape), delta in zip(layout.head, heads, strict=True)
        }
        self._ensure_hooks(layout)
        head = {name: value.to(self.storage_dtype) for name, value in head.items()}
        return LowRankFactors(config.seed, layout, b.to(self.storage_dtype), head, num_labels)

    def _ensure_hooks(self, layout: LowRankLayout) -> None:
        with self._lock:
            for t in layout.targets:
                if t.name not in self._hooked:
                    self._modules[t.name].register_forward_hook(self._target_hook(t.name))
                    self._hooked.add(t.name)
            head_modules = {n.rsplit(".", 1)[0] for n, _ in layout.head}
            for module_name in head_modules | {t.name for t in layout.head_targets}:
                if module_name not in self._hooked:
                    module = self._modules[module_name]
                    if not isinstance(module, nn.Linear):
                        raise SubspaceConfigError(
                            f"head layer '{module_name}' is not nn.Linear: cannot serve mixed"
                        )
                    module.register_forward_hook(self._head_hook(module_name))
                    self._hooked.add(module_name)

    def _seeded_weight(self, seed: int, target: Target) -> torch.Tensor:
        """A head target's seeded weight for `seed`: shared by every task of that seed (2.4 MB
        on mpnet-base, so not one per task), kept in the seed cache."""
        shape = (target.out_features, target.in_features)
        return self.seeds.get(
            (id(self), "w", seed, target.name),
            lambda: seeded_value(target.name + ".weight", shape, seed, self._std).to(self.device),
        )

    def _a_of(self, seed: int, target: Target, rank: int) -> torch.Tensor:
        """A of `seed` for `target`, its first `rank` rows (those are rank r's A)."""
        a = self.seeds.get(
            (id(self), "a", seed, target.name),
            lambda: seeded_a(seed, target, rank).to(self.device),
            enough=lambda found: found.shape[0] >= rank,
        )
        return a[:rank]

    # ---- one mixed forward -------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, rows: list[LowRankFactors], encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, C_max) logits for N encoded rows, row i answered by task rows[i]; entries past a
        row's own label count are padding (zero weights) for the caller to drop."""
        self._local.batch = self._prepare(rows)
        try:
            return self.model(**encoded).logits.float()
        finally:
            self._local.batch = None

    def _prepare(self, rows: list[LowRankFactors]) -> _Batch:
        uniq: dict[int, int] = {}
        tasks: list[LowRankFactors] = []
        index = []
        for f in rows:
            if id(f) not in uniq:
                uniq[id(f)] = len(tasks)
                tasks.append(f)
            index.append(uniq[id(f)])
        if len(tasks) == 1:
            f = tasks[0]
            r = f.layout.rank
            targets = {t.name: [_Rows(None, self._a_of(f.seed, t, r), f.b_of(t))]
                       for t in f.layout.targets}  # fmt: skip
        else:
            targets = self._seed_groups(tasks, index)
        lowrank_heads = {t.name: t for f in tasks for t in f.layout.head_targets}
        heads = self._heads(tasks, index, skip=lowrank_heads.keys())
        head_targets = {name: self._head_rows(tasks, index, t) for name, t in lowrank_heads.items()}
        return _Batch(targets, heads, head_targets)

    def _seed_groups(self, tasks: list[LowRankFactors], index: list[int]) -> dict[str, list[_Rows]]:
        """Per target layer, its rows grouped by seed: each group pays its own rank only (the
        largest among its tasks; a smaller rank's B is zero-padded)."""
        by_seed: dict[int, list[int]] = {}
        for u, f in enumerate(tasks):
            by_seed.setdefault(f.seed, []).append(u)
        names = {t.name: t for f in tasks for t in f.layout.targets}
        has = [{t.name for t in f.layout.targets} for f in tasks]
        out: dict[str, list[_Rows]] = {}
        placed: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor | None]] = {}
        # a seed whose tasks share one layout (the common case): every row's λ·B gathered
        # once, each target a view of it, instead of a stack and a gather per target
        rows_b: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # seed -> (B, rows)
        for seed, members in by_seed.items():
            if all(tasks[u].layout is tasks[members[0]].layout for u in members):
                position = {u: i for i, u in enumerate(members)}
                rows = [row for row, u in enumerate(index) if u in position]
                local = torch.tensor([position[index[r]] for r in rows], device=self.device)
                where = None if len(rows) == len(index) else torch.tensor(rows, device=self.device)
                stacked = torch.stack([tasks[u].b for u in members])
                rows_b[seed] = stacked.index_select(0, local).float(), where
        for name, t in names.items():
            groups = []
            for seed, members in by_seed.items():
                members = [u for u in members if name in has[u]]
                if not members:
                    continue
                rank = max(tasks[u].layout.rank for u in members)
                if seed in rows_b:
                    flat, where = rows_b[seed]
                    off, size = tasks[members[0]].offsets[name], t.out_features * rank
                    b = flat[:, off : off + size].view(-1, t.out_features, rank)
                    groups.append(_Rows(where, self._a_of(seed, t, rank), b))
                    continue
                if all(tasks[u].layout.rank == rank for u in members):
                    b = torch.stack([tasks[u].b_of(t) for u in members])
                else:
                    b = torch.zeros(len(members), t.out_features, rank, device=self.device)
                    for i, u in enumerate(members):
                        b[i, :, : tasks[u].layout.rank] = tasks[u].b_of(t)
                key = tuple(members)  # the same rows for every target the members share
                if key not in placed:
                    position = {u: i for i, u in enumerate(members)}
                    rows = [row for row, u in enumerate(index) if u in position]
                    local = torch.tensor([position[index[r]] for r in rows], device=self.device)
                    every = len(rows) == len(index)
                    placed[key] = local, None if every else torch.tensor(rows, device=self.device)
                local, where = placed[key]
                groups.append(_Rows(where, self._a_of(seed, t, rank), b[local]))
            out[name] = groups
        return out

    def _head_rows(
        self, tasks: list[LowRankFactors], index: list[int], target: Target
    ) -> list[tuple[torch.Tensor, _HeadRows]]:
        """The rows of a head module that lowrank-v2 tasks move at rank r, grouped by how they
        compute: per seed (seeded weight, per-row bias and B), and lowrank-v1 rows (dense)."""
        name = target.name
        groups: dict[object, list[int]] = {}
        for row, u in enumerate(index):
            f = tasks[u]
            key = f.seed if name in f.offsets else "dense"
            groups.setdefault(key, []).append(row)
        out = []
        for key, rows in groups.items():
            members = [tasks[index[r]] for r in rows]
            bias = torch.stack([f.head_of(name + ".bias") for f in members])
            where = torch.tensor(rows, device=self.device)
            if key == "dense":
                w = torch.stack([f.head_of(name + ".weight") for f in members])
                out.append((where, _HeadRows(w, bias)))
                continue
            rank = max(f.layout.rank for f in members)
            b = torch.zeros(len(rows), target.out_features, rank, device=self.device)
            for i, f in enumerate(members):
                b[i, :, : f.layout.rank] = f.b_of(target)
            a = self._a_of(key, target, rank)
            out.append((where, _HeadRows(self._seeded_weight(key, target), bias, a, b)))
        return out

    def _heads(
        self, tasks: list[LowRankFactors], index: list[int], skip=()
    ) -> dict[str, list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]]]:
        """Per head module, each task's own weight and bias with the rows it answers (None:
        every row), applied in place by the hook: no head is copied per row."""
        segments: dict[int, list[int]] = {}
        for row, u in enumerate(index):
            segments.setdefault(u, []).append(row)
        heads = {}
        module_names = {n.rsplit(".", 1)[0] for f in tasks for n in f.head} - set(skip)
        for m in module_names:
            heads[m] = [
                (
                    None if len(tasks) == 1 else torch.tensor(rows, device=self.device),
                    tasks[u].head_of(m + ".weight"),
                    tasks[u].head_of(m + ".bias"),
                )
                for u, rows in segments.items()
            ]
        return heads

    def _target_hook(self, name: str):
        def add_rows(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            batch = getattr(self._local, "batch", None)
            if batch is None or name not in batch.targets:
                return output
            x = args[0]
            for g in batch.targets[name]:
                if g.b.dim() == 2:  # one task answers every row: output += (x·Aᵀ)·(λB)ᵀ in place
                    flat = output.view(-1, output.shape[-1])  # a fresh tensor of this forward's
                    flat.addmm_(F.linear(x, g.a).view(flat.shape[0], -1), g.b.t())
                    continue
                xs = x if g.rows is None else x.index_select(0, g.rows)
                n = xs.shape[0]
                z = F.linear(xs, g.a).reshape(n, -1, g.a.shape[0])  # (n, T, R)
                corr = torch.bmm(z, g.b.transpose(1, 2)).view(n, *output.shape[1:])
                if g.rows is None:
                    output = output + corr
                else:
                    output.index_add_(0, g.rows, corr)  # a fresh tensor of this forward's
            return output

        return add_rows

    def _head_hook(self, name: str):
        def rows_head(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            batch = getattr(self._local, "batch", None)
            if batch is not None and name in batch.head_targets:
                return _grouped_head(args[0], batch.head_targets[name])
            if batch is None or name not in batch.heads:
                return output
            segments = batch.heads[name]
            x = args[0]
            if segments[0][0] is None:  # one task
                return F.linear(x, segments[0][1], segments[0][2])
            x3 = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, T, in)
            width = max(w.shape[0] for _, w, _ in segments)
            y = x3.new_zeros(x3.shape[0], x3.shape[1], width)  # padding columns stay 0
            for rows, w, b in segments:
                y[rows, :, : w.shape[0]] = F.linear(x3.index_select(0, rows), w, b)
            return y.view(*x.shape[:-1], width)

        return rows_head


def _grouped_head(x: torch.Tensor, groups: list[tuple[torch.Tensor, _HeadRows]]) -> torch.Tensor:
    """A head module's output for rows computed group by group (`_head_rows`)."""
    x3 = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, T, in)
    out_features = groups[0][1].bias.shape[1]
    y = x3.new_empty(x3.shape[0], x3.shape[1], out_features)
    for rows, g in groups:
        xs = x3[rows]
        if g.a is None:  # dense per-row weights
            y[rows] = torch.baddbmm(g.bias.unsqueeze(1), xs, g.w.transpose(1, 2))
            continue
        z = F.linear(xs, g.a)  # (n, T, R)
        y[rows] = F.linear(xs, g.w) + g.bias.unsqueeze(1) + torch.bmm(z, g.b.transpose(1, 2))
    return y.view(*x.shape[:-1], out_features)


def output_rows(logits: torch.Tensor, num_labels: list[int]) -> list[torch.Tensor]:
    """Each row's own head outputs (padding columns dropped), in float32."""
    return [logits[i, :c].float() for i, c in enumerate(num_labels)]


def bytes_per_task(layout: LowRankLayout) -> int:
    return 4 * (layout.b_size + sum(math.prod(s) for _, s in layout.head))
