"""Expanding a table spec into a graph of content-hashed stages (DESIGN.md, "The flow of one table").

Stage kinds, in dependency order:
  testset   the real test clips of a dataset (frames, first frames, boxes), shared by every row on it
  train     ONE epoch of one row, initialised from the previous epoch's stage (or the base model)
  generate  the test videos of a trained row (or of the untrained base model: the "SVD" row)
  evaluate  the metrics of one generated set with one detector (Table V: two detectors, one generation)
  render    the table (always re-rendered; its output lives in results/, not in the store)

A stage's identity is the sha256 of the canonical JSON of exactly the config that influences it,
with its inputs named by content, not location (benchmark/identity.py: a weights path or hub id ->
its sha256 or commit, a dataset root -> its split's sample list).
A train epoch that uses the diffusion loss only leaves the feature-loss keys (variant, alpha,
lambda, ...) out of its hash, so every staged row and "SVD fine-tuned" share one epoch-1 stage.
The key lists live in config (configs/benchmark/_stage_hash.yaml), not here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, ListConfig, OmegaConf

from ablations.registry import Row, TableSpec
from data.cli import ConfigKeyError, InputError
from trainers.alignment import is_alignment

# Bump when the meaning of a stage changes (what a stage computes from the same config): every hash
# changes with it, so no old output is reused for the new meaning.
STAGE_SCHEMA = 1
HASH_LEN = 12
KINDS = ("testset", "train", "ctrlv_bbox", "ctrlv_box2video", "generate", "evaluate", "render")

# The video backbone a Ctrl-V row's Box2Video steers (Table II) is a row of this table: backbone
# `b` on dataset `d` takes the overrides of its row `<d>_<b>` ("SVD fine-tuned", "SVD + LSA"), so the
# backbone's train stages are that row's own stages (shared by hash); "svd" is the base model.
BACKBONE_TABLE = "I"
BASE_MODEL_BACKBONE = "svd"


# ------------------------------------------------------------------------------------ hashing
def canonical(obj: Any) -> Any:
    """A JSON-ready, order-independent copy: dict keys sorted (by json), tuples as lists, paths as
    strings, integral floats as ints (YAML `100` and `100.0` mean the same lambda)."""
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return repr(obj)
        return int(obj) if obj.is_integer() else obj
    raise TypeError(f"cannot hash a config value of type {type(obj).__name__}: {obj!r}")


def canonical_json(obj: Any) -> str:
    return json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stage_hash(kind: str, config: dict) -> str:
    payload = canonical_json({"schema": STAGE_SCHEMA, "kind": kind, "config": config})
    return hashlib.sha256(payload.encode()).hexdigest()[:HASH_LEN]


def drop_keys(cfg: dict, dotted: Sequence[str]) -> dict:
    """A deep copy of `cfg` without the dotted keys (absent keys are ignored)."""
    out = copy.deepcopy(cfg)
    for key in dotted:
        node, parts = out, key.split(".")
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def select(cfg: dict, key: str, default: Any = None) -> Any:
    """`OmegaConf.select` on a plain-dict config (stage configs and results stay plain dicts: they are
    hashed and saved as YAML / JSON); a node comes back as a plain container."""
    value = OmegaConf.select(OmegaConf.create(cfg), key, default=default)
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def with_value(cfg: dict, key: str, value: Any) -> dict:
    """A copy of the plain-dict config `cfg` with `key` set (`OmegaConf.update`, made if absent)."""
    node = OmegaConf.create(cfg)
    OmegaConf.update(node, key, value, merge=False)
    return OmegaConf.to_container(node)


class Resolver(Protocol):
    """Turns override strings (`group=option`, `a.b=value`, as on the command line) into a resolved
    plain-dict config. `base` is the config with the profile and the user's overrides only."""

    base: dict
    user_overrides: list[str]

    def resolve(self, overrides: list[str]) -> dict: ...


class DictResolver:
    """A resolver over a plain dict, for tests and programmatic use: `group=option` picks a dict
    from `groups[group][option]`; any other `a.b=v` sets a key (v parsed as YAML)."""

    def __init__(
        self, base: dict, groups: dict[str, dict[str, dict]] | None = None, user_overrides: Sequence[str] = ()
    ):
        self.groups = groups or {}
        self.user_overrides = list(user_overrides)
        self._raw = copy.deepcopy(base)
        self.base = self.resolve([])

    def resolve(self, overrides: list[str]) -> dict:
        import yaml

        cfg = copy.deepcopy(self._raw)
        for ov in list(self.user_overrides) + list(overrides):
            key, value = split_override(ov)
            if key in self.groups:
                if value not in self.groups[key]:
                    raise InputError(f"{key}={value}: unknown option; valid: {sorted(self.groups[key])}")
                cfg[key] = copy.deepcopy(self.groups[key][value])
            else:
                cfg = with_value(cfg, key, yaml.safe_load(value))
        return cfg


def split_override(ov: str) -> tuple[str, str]:
    if "=" not in ov:
        raise InputError(f"override {ov!r} is not of the form key=value")
    key, value = ov.split("=", 1)
    return key.lstrip("+~"), value


def format_override(key: str, value: Any) -> str:
    """A spec value as a Hydra override string (lists/dicts as YAML flow, strings quoted if needed)."""
    if isinstance(value, str):
        safe = all(ch.isalnum() or ch in "_-./:" for ch in value)
        return f"{key}={value}" if safe and value else f"{key}='{value}'"
    return f"{key}={json.dumps(value)}"


def row_overrides(spec: TableSpec, row: Row, base: dict, user_overrides: Sequence[str]) -> list[str]:
    """Hydra overrides of one row: table defaults < row's own < (for `data` only) the command line.

    The row's keys win over the command line (a table defines its rows: `adapter=lora` on the
    command line must not turn Table IV's U-Net rows into LoRA rows); `data=...` on the command line
    replaces every row's dataset (that is what `benchmark.run table=III data=kitti` asks). Without
    it, the profile's `benchmark.data_stand_in` maps the paper's datasets (smoke: synthetic clips)
    and `benchmark.data_roots[<dataset>]` gives the row's data.root.
    """
    merged = {**spec.overrides, **row.overrides}
    user = dict(split_override(o) for o in user_overrides)
    if "data" in user:
        merged.pop("data", None)
        dataset = user["data"]
    elif "data" in merged:
        stand_in = select(base, "benchmark.data_stand_in", {}) or {}
        dataset = merged["data"] = stand_in.get(merged["data"], merged["data"])
    else:
        dataset = None
    # A row's model (Table VI: model=ltx) may have a stand-in in this profile (smoke: the tiny model of
    # the same classes, with the clip length its VAE needs): overrides that replace it, the command
    # line's own keys winning
    model_stand_in = select(base, "benchmark.model_stand_in", {}) or {}
    if "model" in merged and "model" not in user and merged["model"] in model_stand_in:
        for k, v in dict(model_stand_in[merged["model"]]).items():
            if k not in user:
                merged[k] = v
    # Per-dataset roots: a table may mix datasets, so one data.root cannot serve every row
    root = (select(base, "benchmark.data_roots", {}) or {}).get(dataset) if dataset else None
    if root is not None and "data.root" not in user and "data.root" not in merged:
        merged["data.root"] = str(root)
    return [format_override(k, v) for k, v in merged.items()]


# ------------------------------------------------------------------------------------ the graph
@dataclass
class Stage:
    kind: str
    hash: str
    config: dict  # what identifies the stage (hashed; saved as stage_config.yaml)
    run_cfg: dict  # the full resolved config the runner executes (first row using it)
    deps: tuple[str, ...] = ()
    params: dict = field(default_factory=dict)  # epoch / objective / detector / ...
    rows: list[str] = field(default_factory=list)

    def describe(self) -> str:
        p = self.params
        if self.kind == "testset":
            return f"{p['data']}, {p['num_clips']} clips"
        if self.kind == "train":
            s = f"epoch {p['epoch']} {p['objective']}"
            if p["objective"] == "lsa":
                s += f" variant={p.get('variant')}"
            return s + f" adapter={p.get('adapter')}"
        if self.kind == "generate":
            if p.get("ctrlv"):
                return f"Ctrl-V {p['ctrlv']['variant']} backbone={p['ctrlv']['backbone']}"
            return "base model (no fine-tuning)" if p.get("checkpoint") is None else f"from train {p['checkpoint']}"
        if self.kind == "ctrlv_bbox":
            return f"Ctrl-V BBox generator {p['variant']}, {p['epochs']} epochs"
        if self.kind == "ctrlv_box2video":
            return f"Ctrl-V Box2Video on {p['backbone']}, {p['epochs']} epochs"
        if self.kind == "evaluate":
            return f"detector={p['detector']}"
        return p.get("outputs", "")


@dataclass
class RowPlan:
    row: Row
    cfg: dict | None = None  # resolved config
    testset: str | None = None
    train: list[str] = field(default_factory=list)  # the epoch chain, epoch 1 first
    generate: str | None = None
    evaluate: dict[str, str] = field(default_factory=dict)  # detector -> stage hash
    seed: int | None = None  # benchmark.seeds: this plan's seed (None: one run)
    first_seed: bool = True  # the plan figures draw (one per row)

    @property
    def label(self) -> str:
        """The row's name in stage records: `hybrid`, or `hybrid (seed 1)` when the table runs seeds."""
        return self.row.name if self.seed is None else f"{self.row.name} (seed {self.seed})"


@dataclass
class StageGraph:
    table: TableSpec
    stages: dict[str, Stage]  # insertion order is a topological order
    rows: list[RowPlan]
    render: Stage
    profile: str
    add_order: list[str] = field(default_factory=list)  # the stage of every add, in order (benchmark/rehash.py)
    unknown_content: list[str] = field(default_factory=list)  # inputs whose content is unknown (identity.py)

    def order(self) -> list[Stage]:
        return list(self.stages.values())

    def pending(self, is_done: Callable[[str], bool]) -> list[Stage]:
        return [s for s in self.order() if not is_done(s.hash)]

    @property
    def seeds(self) -> list[int | None]:
        """benchmark.seeds of the table ([None]: one run with the config's own seeds)."""
        return list(dict.fromkeys(p.seed for p in self.rows))

    def first_rows(self) -> list[RowPlan]:
        """One plan per row (its first seed's): what figures draw."""
        return [p for p in self.rows if p.first_seed]

    def format(
        self, is_done: Callable[[str], bool], store_root: str | Path = "runs", notes: dict[str, list[str]] | None = None
    ) -> str:
        """The dry-run view: every stage, cached or pending, with its dependencies and rows; `notes`
        flag cached stages (made by other code: benchmark/provenance.py)."""
        notes = notes or {}
        stages = self.order()
        n_done = sum(is_done(s.hash) for s in stages)
        lines = [
            f"Table {self.table.name} (profile {self.profile}): {len(stages)} stages in {store_root}/, "
            f"{n_done} cached, {len(stages) - n_done} pending; render always runs"
        ]
        lines.append(f"  {'status':<8} {'kind':<15} {'hash':<{HASH_LEN}}  {'what':<40} {'deps':<27} rows")
        for s in stages + [self.render]:
            status = "always" if s.kind == "render" else ("cached" if is_done(s.hash) else "pending")
            deps = ",".join(d[:6] for d in s.deps) if s.kind != "render" else f"{len(s.deps)} stages"
            rows = ", ".join(s.rows) if s.kind != "render" else ""
            lines.append(
                f"  {status:<8} {s.kind:<15} {s.hash:<{HASH_LEN}}  {s.describe():<40} {deps or '-':<27} {rows}"
            )
            if s.hash in notes:
                lines.append(f"  {'':<8} other code made it: {'; '.join(notes[s.hash])}")
        return "\n".join(lines)


FULL_UNET_ADAPTER = {"name": "unet"}  # configs/adapter/unet.yaml


def epoch_adapter(cfg: dict, objective: str) -> dict:
    """The config one epoch trains with: a LoRA row with adapter.lora_epochs=lsa trains its
    diffusion-only epochs as the full U-Net (the paper adds LoRA "when adding our feature loss"), so
    that epoch's stage is the one "SVD fine-tuned" and the other staged rows train."""
    adapter = cfg.get("adapter") or {}
    if objective != "diffusion" or adapter.get("name") != "lora":
        return cfg
    when = adapter.get("lora_epochs", "all")
    if when not in ("lsa", "all"):
        raise ValueError(f"adapter.lora_epochs={when!r}: valid are 'lsa', 'all'")
    if when == "all":
        return cfg
    return {**cfg, "adapter": dict(FULL_UNET_ADAPTER)}


def with_lr_horizon(cfg: dict, epochs: int) -> dict:
    """A decaying learning-rate schedule spans the row's `epochs`, also in its per-epoch stages (each
    trains with train.epochs = its own epoch): `train.lr_schedule_epochs` is set to them when null.
    The constant schedules have no horizon and keep it null, so their rows share stages as before."""
    if select(cfg, "train.lr_schedule_epochs", None) is not None or select(cfg, "train.lr_scheduler", "constant") in (
        "constant",
        "constant_with_warmup",
    ):
        return cfg
    return with_value(cfg, "train.lr_schedule_epochs", epochs)


def epoch_objectives(cfg: dict, row: Row, baseline: str | None = None) -> list[str]:
    """'diffusion' or 'lsa' for each epoch 1..train.epochs, from schedule.feat_from_epoch (the same
    rule as trainers.objective.objective_weights)."""
    baseline = row.baseline if baseline is None else baseline
    epochs = int(select(cfg, "train.epochs"))
    if epochs < 1:
        raise InputError(f"row {row.name}: train.epochs={epochs}; a trained row needs at least one epoch")
    feat_from = select(cfg, "schedule.feat_from_epoch", None)
    objs = ["lsa" if feat_from is not None and e >= int(feat_from) else "diffusion" for e in range(1, epochs + 1)]
    if baseline == "svd_finetuned" and "lsa" in objs:
        raise InputError(
            f"row {row.name} is 'SVD fine-tuned' (diffusion loss only) but its schedule "
            f"{select(cfg, 'schedule.name', '?')} turns the feature loss on from epoch {feat_from}"
        )
    return objs


def _ctrlv_stages(spec, row, resolver, cfg, bench, policy, testset, train_chain, add, model, label):
    """Ctrl-V (Tables I, II): the backbone's own train stages, the BBox generator, Box2Video on that
    backbone, and a generate stage that runs the two-stage pipeline. Returns (train chain, generate).

    Both Ctrl-V stages train `train.epochs` epochs in one stage each, with the LSA rows' model, data
    and loop (trainers/ctrlv), so "same backbone, data and number of epochs" holds by construction.
    """
    variant, backbone = row.ctrlv["variant"], row.ctrlv["backbone"]
    always = list(policy.get("ignore_always") or [])
    not_train = always + list(policy.get("ignore_train") or []) + list(policy.get("ignore_diffusion_only") or [])
    base_over = row_overrides(spec, row, resolver.base, resolver.user_overrides)
    chain = []
    if backbone != BASE_MODEL_BACKBONE:
        chain = train_chain(resolver.resolve(base_over + backbone_overrides(row, backbone)), backbone)
    # the profile's Ctrl-V settings (benchmark.ctrlv_overrides) come after configs/ctrlv/base.yaml
    # (a key the command line sets keeps the command line's value)
    user_keys = {split_override(o)[0] for o in resolver.user_overrides}
    profile_over = [str(o) for o in (bench.get("ctrlv_overrides") or []) if split_override(str(o))[0] not in user_keys]
    cv = resolver.resolve(base_over + ["+ctrlv=base", f"ctrlv.variant={variant}"] + profile_over)
    hcv = add.identify(cv)  # what is hashed: inputs by content (benchmark/identity.py)
    epochs = int(select(cv, "train.epochs"))

    bbox_cfg = with_value(cv, "ctrlv.stage", "bbox")
    bbox = add(
        "ctrlv_bbox",
        {"epochs": epochs, "cfg": drop_keys(hcv, not_train + list(policy.get("ignore_ctrlv_bbox") or []))},
        bbox_cfg,
        [],
        {"variant": variant, "epochs": epochs},
        label,
    )
    b2v_cfg = with_value(cv, "ctrlv.stage", "box2video")
    b2v = add(
        "ctrlv_box2video",
        {
            "epochs": epochs,
            "backbone": chain[-1] if chain else None,
            "cfg": drop_keys(hcv, not_train + list(policy.get("ignore_ctrlv_box2video") or [])),
        },
        b2v_cfg,
        chain[-1:],
        {"backbone": backbone, "epochs": epochs},
        label,
    )
    gen_cfg = {
        "ctrlv_bbox": bbox,
        "ctrlv_box2video": b2v,
        "testset": testset,
        "model": model,
        "ctrlv": {
            k: select(hcv, f"ctrlv.{k}")
            for k in ("variant", "variants", "inference", "readback", "render", "controlnet")
        },
        "generate": bench["generate"],
    }
    gen = add(
        "generate",
        gen_cfg,
        cv,
        [bbox, b2v, testset],
        {"ctrlv": {"variant": variant, "backbone": backbone, "bbox": bbox, "box2video": b2v}},
        label,
    )
    return chain, gen


def backbone_overrides(row: Row, backbone: str) -> list[str]:
    """The overrides (all but `data`, which the Ctrl-V row sets itself) of the BACKBONE_TABLE row
    that trains `backbone` on the Ctrl-V row's dataset."""
    from ablations.registry import load_table

    dataset = row.overrides.get("data")
    spec = load_table(BACKBONE_TABLE)
    name = f"{dataset}_{backbone}"
    try:
        source = spec.row(name)
    except KeyError as e:
        raise InputError(
            f"row {row.name}: ctrlv.backbone={backbone} on data={dataset} needs the row {name} of "
            f"table {BACKBONE_TABLE} (ablations/table_{BACKBONE_TABLE}.yaml)"
        ) from e
    return [format_override(k, v) for k, v in source.overrides.items() if k != "data"]


def table_seeds(base: dict) -> list[int | None]:
    """benchmark.seeds: null -> [None] (one run, the config's seeds); a list of distinct integers >= 0."""
    seeds = select(base, "benchmark.seeds", None)
    if seeds is None:
        return [None]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, (list, tuple))
        or not seeds
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise InputError(
            f"benchmark.seeds={seeds!r}: expected null or a list of distinct integers >= 0, "
            f"e.g. benchmark.seeds=[0,1,2]"
        )
    return list(seeds)


def seeded(cfg: dict, seed: int | None) -> dict:
    """The row's config for seed s: train.seed + s and benchmark.generate.seed + s * benchmark.seed_stride
    (clip k then adds k, so no (seed, clip) pair shares its noise while seed_stride > the clip count).
    Seed 0 (and None) leaves the config as it is: its stages are those of the one-seed run."""
    if not seed:
        return cfg
    stride = int(select(cfg, "benchmark.seed_stride", 1_000_000))
    cfg = with_value(cfg, "train.seed", int(select(cfg, "train.seed")) + seed)
    return with_value(cfg, "benchmark.generate.seed", int(select(cfg, "benchmark.generate.seed")) + seed * stride)


class SeededResolver:
    """A resolver whose every config is `seeded(..., seed)` (Ctrl-V's backbone rows resolve their own)."""

    def __init__(self, inner: Resolver, seed: int | None):
        self.inner, self.seed = inner, seed
        self.base, self.user_overrides = inner.base, inner.user_overrides

    def resolve(self, overrides: list[str]) -> dict:
        return seeded(self.inner.resolve(overrides), self.seed)


def expand(spec: TableSpec, resolver: Resolver, content=None) -> StageGraph:
    """The stage graph of a table: rows -> resolved configs -> shared, hashed stages; with
    benchmark.seeds, every row once per seed (each seed its own stages, shared as usual within it).
    `content` (benchmark.identity.ContentIdentity) names the inputs by content in the hashed configs;
    `ContentIdentity(legacy=True)` gives the location-based hashes of older stores."""
    from benchmark.identity import ContentIdentity

    stages: dict[str, Stage] = {}
    plans: list[RowPlan] = []
    seeds = table_seeds(resolver.base)
    content = content if content is not None else ContentIdentity()
    order: list[str] = []

    def add(kind, config, run_cfg, deps, params, row_name) -> str:
        h = stage_hash(kind, config)
        order.append(h)
        if h not in stages:
            stages[h] = Stage(kind, h, canonical(config), run_cfg, tuple(deps), params, [])
        if row_name not in stages[h].rows:
            stages[h].rows.append(row_name)
        return h

    def identify(cfg: dict) -> dict:
        """The copy of a resolved config that is hashed: inputs by content (foundation parts, named
        by their own content hash already, stay as they are)."""
        policy = select(cfg, "benchmark.stage_hash.content_identity", None)
        keep = [str(p.path) for p in (getattr(resolver, "foundation", None) or {}).values()]
        return content.apply(cfg, policy, keep)

    add.identify = identify

    base = resolver.base
    for row, seed in ((r, sd) for r in spec.rows for sd in seeds):
        plan = RowPlan(row, seed=seed, first_seed=seed == seeds[0])
        plans.append(plan)
        _expand_row(spec, plan, SeededResolver(resolver, seed), add)

    profile = str(select(base, "benchmark.profile", "custom"))
    render_cfg = {
        "table": spec.name,
        "profile": profile,
        "rows": {p.label: {"generate": p.generate, "evaluate": p.evaluate} for p in plans},
    }
    deps = [h for p in plans for h in ([p.generate] if p.generate else []) + list(p.evaluate.values())]
    render = Stage(
        "render",
        stage_hash("render", render_cfg),
        canonical(render_cfg),
        base,
        tuple(deps),
        {"outputs": f"results/{profile}/table_{spec.name}.md/.tex/.json"},
        [],
    )
    return StageGraph(spec, stages, plans, render, profile, order, content.problem_lines())


def _expand_row(spec: TableSpec, plan: RowPlan, resolver: Resolver, add) -> None:
    """The stages of one row (of one seed), added to the graph through `add`."""
    row, base = plan.row, resolver.base
    cfg = resolver.resolve(row_overrides(spec, row, base, resolver.user_overrides))
    plan.cfg = cfg
    bench = _bench(cfg, row)
    policy = bench.get("stage_hash") or {}
    always = list(policy.get("ignore_always") or [])
    identify = add.identify
    hcfg = identify(cfg)  # what is hashed: inputs by content (benchmark/identity.py)

    # the real test clips
    ts_cfg = drop_keys(hcfg, always + list(policy.get("ignore_testset") or []))
    n_clips = int(bench["num_test_clips"])
    plan.testset = add(
        "testset",
        {"data": ts_cfg.get("data"), "num_clips": n_clips},
        cfg,
        [],
        {"data": select(cfg, "data.name", "?"), "num_clips": n_clips},
        plan.label,
    )

    def train_chain(tcfg: dict, baseline: str, row=row, always=always, policy=policy) -> list[str]:
        """One train stage per epoch, chained (epoch e starts from epoch e-1's stage); the loop's
        row, always and policy bound here."""
        chain, parent = [], None
        objectives = epoch_objectives(tcfg, row, baseline)
        tcfg = with_lr_horizon(tcfg, len(objectives))
        htcfg = identify(tcfg)
        for epoch, objective in enumerate(objectives, start=1):
            ignore = always + list(policy.get("ignore_train") or [])
            if objective == "diffusion":
                ignore += list(policy.get("ignore_diffusion_only") or [])
            elif is_alignment(select(tcfg, "loss.variant", None)):  # repa | trd (trainers/alignment.py)
                ignore += list(policy.get("ignore_alignment") or [])
            else:  # LSA's own feature loss
                ignore += list(policy.get("ignore_lsa_feature") or [])
            ecfg = epoch_adapter(tcfg, objective)
            run_cfg = with_value(ecfg, "train.epochs", epoch)  # the trainer's "last epoch to train"
            params = {
                "epoch": epoch,
                "objective": objective,
                "adapter": select(ecfg, "adapter.name", None),
                "variant": select(tcfg, "loss.variant", None) if objective == "lsa" else None,
            }
            hashed = drop_keys(epoch_adapter(htcfg, objective), ignore)
            parent = add(
                "train",
                {"init_from": parent, "epoch": epoch, "objective": objective, "cfg": hashed},
                run_cfg,
                [parent] if parent else [],
                params,
                plan.label,
            )
            chain.append(parent)
        return chain

    model = drop_keys(hcfg, always + list(policy.get("ignore_diffusion_only") or [])).get("model")
    if row.baseline == "ctrlv":
        plan.train, plan.generate = _ctrlv_stages(
            spec, row, resolver, cfg, bench, policy, plan.testset, train_chain, add, model, plan.label
        )
    else:
        # training: one stage per epoch, chained; generation from the last epoch (or the base model)
        plan.train = train_chain(cfg, row.baseline) if row.baseline != "svd" else []
        parent = plan.train[-1] if plan.train else None
        gen_cfg = {"checkpoint": parent, "testset": plan.testset, "model": model, "generate": bench["generate"]}
        plan.generate = add(
            "generate", gen_cfg, cfg, [d for d in (parent, plan.testset) if d], {"checkpoint": parent}, plan.label
        )

    # one evaluation per detector the row's columns need: the `metrics` node (what
    # metrics.evaluate reads) with metrics.det.detector set from benchmark.eval.detectors[name]
    detectors = select(bench, "eval.detectors", {}) or {}
    if "metrics" not in cfg:
        raise ConfigKeyError(
            f"row {row.name}: the resolved config has no `metrics` node; the benchmark "
            f"profile selects one (defaults: /metrics: smoke|paper)"
        )
    for det in spec.detectors_for(row):
        if det not in detectors:
            raise ConfigKeyError(
                f"table {spec.name} row {row.name} needs detector {det!r}, but the profile "
                f"has no benchmark.eval.detectors.{det}; defined: {sorted(detectors)}"
            )
        run_cfg = copy.deepcopy(cfg)
        node = run_cfg["metrics"].setdefault("det", {}).setdefault("detector", {})
        node.update(copy.deepcopy(detectors[det]))
        metrics = drop_keys(identify(run_cfg), list(policy.get("ignore_evaluate") or []))["metrics"]
        ev = {"generate": plan.generate, "testset": plan.testset, "detector": det, "metrics": metrics}
        plan.evaluate[det] = add("evaluate", ev, run_cfg, [plan.generate, plan.testset], {"detector": det}, plan.label)


def _bench(cfg: dict, row: Row) -> dict:
    bench = cfg.get("benchmark")
    if not isinstance(bench, dict):
        raise ConfigKeyError(
            f"row {row.name}: the resolved config has no `benchmark` node; compose it with a "
            f"profile (+benchmark=smoke|paper, configs/benchmark/)"
        )
    for k in ("num_test_clips", "generate"):
        if k not in bench:
            raise ConfigKeyError(f"row {row.name}: benchmark.{k} is missing from the profile")
    return bench
