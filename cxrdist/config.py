"""Config schemas (dataclasses in Hydra's ConfigStore), composition, checks and the saved resolved config.

Groups: ``data``, ``loader`` (torch, dali), ``engine`` (ddp, deepspeed), ``eval``, ``cluster`` (local, slurm),
``logger`` (wandb, none) and ``method`` (one file per method). The YAML files live in ``cxrdist/conf``; each
group's schema is registered as ``<group>/schema_<group>`` and every option file extends it in its defaults
list, so a mistyped key fails at composition with the key's name. A method's recipe is typed here
(:class:`StageRecipe`); its architecture options are checked by the method's own ``Config`` dataclass.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

GROUPS = ("data", "loader", "engine", "eval", "cluster", "logger", "method")


@dataclass
class DataConfig:
    """Where the shards are (written by launch/write_shards.py)."""

    root: str = MISSING
    expected_config_hash: str | None = None  # set at run start; a resumed run refuses different shards


@dataclass
class LoaderConfig:
    """Which loader backend and how many decoding workers/threads."""

    backend: str = "torch"  # torch | dali
    workers: int = 2  # torch DataLoader workers
    dali_threads: int = 2
    eval_batch_per_rank: int = 32
    # float (default, exact): resample the crop in float32; uint8: resample in 8 bit (PIL / DALI), faster, up to
    # ~1 grey level from float, and batches leave the loader as uint8 (normalised on the device). Changes results.
    resample: str = "float"


@dataclass
class EngineConfig:
    """Distributed strategy, precision, checkpoint cadence."""

    strategy: str = "ddp"  # ddp | deepspeed
    zero_stage: int = 0  # deepspeed only: 0, 1, 2
    precision: str = "auto"  # auto: bf16 autocast on a CUDA device with bf16 units, else fp32 | fp32 | bf16
    # auto: NHWC for a convolutional model on CUDA | true | false (engine/accel.py)
    channels_last: str = "auto"
    # torch.compile: false until measured on the target GPU | auto (CUDA with Triton) | true | a torch.compile mode
    compile: str = "false"
    max_batch_per_rank: int = 64  # memory cap per rank; gradient accumulation makes up the global batch
    grad_clip: float | None = None
    # BatchNorm over every rank's micro-batch (SyncBatchNorm on CUDA, an all-reduce BatchNorm on CPU/gloo) when more
    # than one rank trains: the papers normalised over their whole batch on one GPU. Accumulation is not covered: a
    # BatchNorm sees ranks × micro-batch images (recorded in DONE.json, warned when below the recipe's batch).
    sync_bn: bool = True
    ckpt_every_steps: int = 500
    ckpt_every_minutes: float = 15.0
    keep_last: int = 2
    # A stage with DONE.json never resumes, so its resume checkpoints (model + optimizer + loader state, ~3x the
    # weights under Adam) are deleted once DONE.json is written; best.pt / last.pt stay. true keeps them.
    keep_resume_ckpt: bool = False
    log_every_steps: int = 20
    progress: bool = True  # tqdm bar on rank 0 when attached to a terminal
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)


@dataclass
class EvalConfig:
    """What the final evaluation computes (localization protocol choices are recorded in metrics.json)."""

    splits: list[str] = field(default_factory=lambda: ["test", "bbox"])
    compare_size: int = 224
    thresholds: list[int] = field(default_factory=lambda: [60, 180])
    connectivity: int = 8
    heatmap_examples: int = 2  # overlay PNGs per box class


@dataclass
class ClusterConfig:
    """Where jobs run (used by launch/submit.py)."""

    name: str = "local"  # local | slurm | debug
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    timeout_min: int = 60
    max_requeues: int = 3
    signal_delay_s: int = 120


@dataclass
class LoggerConfig:
    """Experiment tracking."""

    backend: str = "wandb"  # wandb | none
    project: str = "cxrdist"
    # The consolidated W&B run (launch/wandb_sync.py) carries each finished stage's best.pt as a model artifact.
    # Off by default: a DenseNet-121 is ~30 MB per stage to upload, and a CPU/phantom run's models are not worth it.
    log_model: bool = False
    entity: str | None = None


@dataclass
class OptimConfig:
    """Optimizer of a training stage."""

    name: str = "adam"  # adam | sgd
    lr: float = MISSING
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (stepped per epoch)."""

    name: str = "none"  # none | step | plateau
    milestones: list[int] = field(default_factory=list)  # step: epochs after which lr *= gamma
    gamma: float = 0.1
    metric: str = "val_loss"  # plateau: val_loss | val_auroc | train_loss
    patience: int = 1


@dataclass
class TransformConfig:
    """Declarative transforms (see cxrdist/data/transforms.py)."""

    train: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    normalize: str = "imagenet"
    channels: int = 3


@dataclass
class StageRecipe:
    """A training stage's paper recipe."""

    epochs: int = MISSING
    global_batch: int = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    transforms: TransformConfig = field(default_factory=TransformConfig)
    loss: str = "bce"  # bce | weighted_bce | focal
    loss_args: dict[str, Any] = field(default_factory=dict)
    select_metric: str = "val_auroc"  # best-by-val checkpoint: val_auroc (max) | val_loss (min)
    max_steps_per_epoch: int | None = None  # cap for smoke runs; None = the whole epoch


@dataclass
class MethodConfig:
    """A method: its name (= registry key), architecture options, per-stage recipes, published numbers."""

    name: str = MISSING
    paper: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageRecipe] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """The root config."""

    data: DataConfig = field(default_factory=DataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    run_dir: str = MISSING
    seed: int = 0


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="schema_train", node=TrainConfig)
    for group, node in (
        ("data", DataConfig),
        ("loader", LoaderConfig),
        ("engine", EngineConfig),
        ("eval", EvalConfig),
        ("cluster", ClusterConfig),
        ("logger", LoggerConfig),
        ("method", MethodConfig),
    ):
        cs.store(group=group, name=f"schema_{group}", node=node)


def list_options(group: str) -> list[str]:
    """The option names of a config group (the YAML files in cxrdist/conf/<group>/)."""
    conf = Path(__file__).parent / "conf" / group
    return sorted(p.stem for p in conf.glob("*.yaml"))


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose the root config with Hydra overrides; errors name the bad key or list the valid options."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    register_schemas()
    overrides = list(overrides or [])
    for o in overrides:
        if "=" not in o and not o.startswith("~"):
            raise ValueError(f"{o!r} is not a config override: write key=value (method=chexnet, data.root=DIR)")
        group = o.split("=", 1)[0].lstrip("+~")
        if group in GROUPS and "=" in o and o.split("=", 1)[1] not in list_options(group):
            value, options = o.split("=", 1)[1], list_options(group)
            close = difflib.get_close_matches(value, options, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"unknown {group} option {value!r}; {hint}choose one of {', '.join(options)}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("cxrdist.conf", version_base="1.3"):
            cfg = hydra_compose("train", overrides=overrides)
    except OverrideParseException as e:
        raise ValueError(f"cannot parse the overrides {overrides}: {str(e).splitlines()[0]}") from None
    except (ConfigCompositionException, MissingConfigException) as e:
        raise ValueError(_explain(e.__cause__ or e, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _explain(cause: BaseException, overrides: list[str]) -> str:
    """One line for a failed composition: the key, and for a typo the closest existing key."""
    text = str(cause)
    first = text.splitlines()[0] if text else type(cause).__name__
    found = re.search(r"full_key: (\S+)", text)
    if found is None:
        return f"bad config override: {first}"
    key = found.group(1)
    if " not in " not in first and "is not in struct" not in first:
        value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == key), "?")
        return f"bad value for {key}={value}: {first}"
    parent, _, name = key.rpartition(".")
    groups = [o for o in overrides if o.split("=", 1)[0] in GROUPS]  # choose the same method, engine ...
    node = OmegaConf.select(compose(groups), parent) if parent else compose(groups)
    close = difflib.get_close_matches(name, [str(k) for k in node] if isinstance(node, DictConfig) else [], n=1)
    if close:
        return f"unknown config key {key}; did you mean {parent + '.' if parent else ''}{close[0]}?"
    keys = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""
    return f"unknown config key {key}" + (f" ({parent or 'the root'} has: {keys})" if keys else "")


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolved plain-dict form (what is saved and what jobs receive)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def from_container(d: dict[str, Any]) -> DictConfig:
    """Rebuild a typed config from a saved dict (checked against the schema)."""
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), d)


def config_hash(d: dict[str, Any]) -> str:
    """A short stable hash of a config dict."""
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_config(cfg: DictConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))))
    os.replace(tmp, path)


def load_config(path: Path) -> DictConfig:
    """Read a saved resolved config back (typed)."""
    return from_container(OmegaConf.to_container(OmegaConf.load(path)))


def diff_configs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two config dicts (``key: old → new``)."""
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, key + ".")
        elif va != vb:
            out.append(f"{key}: {va!r} → {vb!r}")
    return out


RESAMPLE = ("float", "uint8")  # loader.resample (see LoaderConfig)
# (key, lowest allowed value, whether the bound itself is allowed): values no run can use.
_BOUNDS = (
    ("loader.workers", 0, True),
    ("loader.dali_threads", 1, True),
    ("loader.eval_batch_per_rank", 1, True),
    ("engine.max_batch_per_rank", 1, True),
    ("engine.ckpt_every_steps", 1, True),
    ("engine.ckpt_every_minutes", 0, False),
    ("engine.keep_last", 0, True),
    ("engine.log_every_steps", 1, True),
    ("eval.compare_size", 1, True),
    ("eval.heatmap_examples", 0, True),
    ("cluster.timeout_min", 1, True),
    ("cluster.max_requeues", 0, True),
    ("cluster.signal_delay_s", 0, True),
)
_RECIPE_BOUNDS = (
    ("epochs", 1, True),
    ("global_batch", 1, True),
    ("optim.lr", 0, False),
    ("optim.momentum", 0, True),
    ("optim.weight_decay", 0, True),
    ("schedule.gamma", 0, False),
    ("schedule.patience", 0, True),
    ("max_steps_per_epoch", 1, True),
)


def validate_config(cfg: DictConfig) -> None:
    """Refuse values no run can use (epochs, batch or lr ≤ 0, ...) with one line naming the key.

    Called before anything is created or submitted (an ``epochs=0`` run would otherwise mark training DONE with
    no model).
    """
    checks = [(key, lo, inclusive) for key, lo, inclusive in _BOUNDS]
    for name in cfg.method.stages:
        checks += [(f"method.stages.{name}.{key}", lo, inclusive) for key, lo, inclusive in _RECIPE_BOUNDS]
    if cfg.loader.resample not in RESAMPLE:
        raise ValueError(f"loader.resample={cfg.loader.resample!r}: choose one of {', '.join(RESAMPLE)}")
    for key, lo, inclusive in checks:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None or value == MISSING:  # optional (max_steps_per_epoch) or unset (reported elsewhere)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}={value!r}: expected a number")
        if value < lo or (value == lo and not inclusive):
            bound = f"≥ {lo}" if inclusive else f"> {lo}"
            raise ValueError(f"{key}={value}: must be {bound}")
