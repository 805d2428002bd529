"""Typed config: every key declared once (default, type, what is valid, one-line help) in the dataclasses
below, and `load_config`: YAML recipe + `key=value` overrides → a checked Config. Unknown keys, wrong types
and out-of-range values fail clearly, before anything heavy (torch) is imported.

How a key is declared and checked: core/config_fields.py; how text becomes these dataclasses:
core/config_parse.py. `python -m core.config` prints the reference (`--markdown`: the table the README
carries).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config_fields import GE0, GE1, GT0, PIXELS, UNIT, Range, opt, section
from core.config_parse import YAML_ERRORS, build, load_yaml, parse_override, set_dotted
from core.errors import UserError
from core.specs import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION_NAMES, AugmentSpec, EvalSpec
from core.workers import AUTO, resolve_num_workers

# Accelerate's tracker names accepted by run.log_with (checked here; whether installed: at train start).
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class RunConfig:
    name: str | None = opt(
        None, "run folder name under output_dir; default: <config file stem>-<YYYYmmdd-HHMMSS>"
    )
    output_dir: str = opt("runs", "where run folders are created")
    seed: int = opt(
        0, "random seed (made device-specific per process)", range=Range(0, 2**31 - 1)
    )  # + process index must stay below numpy's 2**32
    log_with: str | list[str] = opt(
        "none",
        "experiment trackers (Accelerate's), one or a list: none, "
        + ", ".join(TRACKERS)
        + "; tensorboard writes runs/<name>/tensorboard/",
    )

    def trackers(self) -> list[str]:
        names = [self.log_with] if isinstance(self.log_with, str) else list(self.log_with)
        return [n for n in names if n != "none"]


@dataclass
class DataConfig:
    source: str = opt(
        "folder",
        "`folder`: root/train|valid|test/<class>/*; `cifar10`: torchvision CIFAR-10",
        ("folder", "cifar10"),
    )
    root: str = opt("data", "data set folder (for cifar10: where it is, or is downloaded to)")
    num_workers: int | str = opt(
        AUTO,
        "DataLoader worker processes per training process; `auto` = "
        "min(8, CPUs usable by this process / processes on this node)",
        (AUTO,),
        range=GE0,
    )
    max_bad_fraction: float = opt(
        0.01, "abort when more than this fraction of training images cannot be decoded", range=UNIT
    )
    download: bool = opt(True, "cifar10 only: download when missing (needs network)")
    decode: str = opt(
        "cpu",
        "folder data: `cpu` = decode + augment in DataLoader workers; `gpu` = workers read "
        "bytes, nvJPEG decode + batched augmentation on the training device (runs, slower, without "
        "CUDA); `auto` = gpu on CUDA, else cpu. data.source cifar10: cpu only",
        ("cpu", "gpu", "auto"),
    )
    balance: str = opt(
        "none",
        "class imbalance: `none`; `sampler` = each epoch draws classes evenly (with replacement); "
        "`loss` = cross-entropy weighted by inverse training class counts",
        ("none", "sampler", "loss"),
    )
    leakage: str = opt(
        "warn",
        "copies of an image across train/valid/test (data_audit.json, data_audit_pairs.csv): "
        "`warn` = say so and train, `error` = stop before training, `off` = no audit",
        ("warn", "error", "off"),
    )


@dataclass
class HeadConfig:
    hidden: list[int] = opt(
        [], "hidden layer sizes of the new classifier head; [] = one Linear layer", range=GE1
    )
    dropout: float = opt(
        0.0,
        "dropout after each hidden layer (and before the output layer if no hidden)",
        range=Range(0, 1, hi_open=True),
    )


@dataclass
class ModelConfig:
    arch: str = opt("resnet50", "torchvision model name, `timm:<name>` (needs timm), or `cifar_cnn`")
    pretrained: str = opt(
        "imagenet", "`imagenet` (default weights, cached), `none`, or a path to a state dict"
    )
    head: HeadConfig = section(HeadConfig, "classifier head that replaces the model's own")
    freeze: str | int = opt(
        "backbone",
        "`backbone` (train the head only), `none` (fine-tune all), "
        "or N: train the head only for N epochs, then everything",
        ("backbone", "none"),
        range=GE0,
    )


@dataclass
class PreprocessConfig:
    resize: int = opt(256, "eval: resize the shorter side to this (>= crop)", range=PIXELS)
    crop: int = opt(224, "eval: center crop to this square; also the training crop size", range=PIXELS)
    interpolation: str = opt("bilinear", "resize interpolation", INTERPOLATION_NAMES)
    mean: list[float] = opt(
        list(IMAGENET_MEAN), "per-channel normalization mean (0..1 scale), [R, G, B]", range=UNIT, length=3
    )
    std: list[float] = opt(
        list(IMAGENET_STD),
        "per-channel normalization std (0..1 scale), [R, G, B]",
        range=Range(0, 1, lo_open=True),
        length=3,
    )

    def spec(self) -> EvalSpec:
        return EvalSpec(self.resize, self.crop, self.interpolation, tuple(self.mean), tuple(self.std))


@dataclass
class AugmentConfig:
    enabled: bool = opt(True, "false: train on the eval transform (no augmentation)")
    rotation: float = opt(
        0.0, "RandomRotation degrees: uniform in [-rotation, rotation] (0 = off)", range=Range(0, 180)
    )
    scale: list[float] = opt(
        [0.08, 1.0],
        "RandomResizedCrop area scale range [min, max]",
        range=Range(0, 1, lo_open=True),
        length=2,
        ordered=True,
    )
    ratio: list[float] = opt(
        [0.75, 1.3333333],
        "RandomResizedCrop aspect ratio range [min, max]",
        range=GT0,
        length=2,
        ordered=True,
    )
    size: int | None = opt(
        None,
        "RandomResizedCrop output size (>= preprocess.crop); default = preprocess.crop; "
        "larger → center crop after",
        range=PIXELS,
    )
    hflip: float = opt(0.5, "horizontal flip probability", range=UNIT)
    color_jitter: float = opt(0.0, "brightness/contrast/saturation jitter strength (0 = off)", range=UNIT)
    mixup_alpha: float = opt(
        0.0,
        "MixUp Beta(alpha, alpha) on training batches (0 = off); with cutmix_alpha too, one of the two "
        "per batch; train acc then counts the dominant label",
        range=GE0,
    )
    cutmix_alpha: float = opt(0.0, "CutMix Beta(alpha, alpha) on training batches (0 = off)", range=GE0)

    def spec(self) -> AugmentSpec:
        return AugmentSpec(
            self.enabled,
            self.rotation,
            (self.scale[0], self.scale[1]),
            (self.ratio[0], self.ratio[1]),
            self.size,
            self.hflip,
            self.color_jitter,
        )


@dataclass
class OptimizerConfig:
    name: str = opt("adam", "optimizer", ("sgd", "adam", "adamw", "adadelta"))
    lr: float = opt(
        1e-3, "learning rate (for the global batch; not rescaled automatically; 0 = weights stay)", range=GE0
    )
    momentum: float = opt(0.9, "sgd momentum", range=Range(0, 1, hi_open=True))
    weight_decay: float = opt(0.0, "weight decay", range=GE0)
    nesterov: bool = opt(False, "sgd Nesterov momentum")


@dataclass
class SchedulerConfig:
    name: str = opt("none", "learning-rate schedule", ("none", "step", "cosine", "onecycle"))
    step_size: int = opt(4, "step: epochs between decays", range=GE1)
    gamma: float = opt(0.1, "step: decay factor", range=Range(0, 1, lo_open=True))
    warmup_epochs: float = opt(0.0, "cosine: linear warmup length in epochs", range=GE0)
    min_lr: float = opt(0.0, "cosine: final learning rate (<= train.optimizer.lr)", range=GE0)


@dataclass
class TrainConfig:
    epochs: int = opt(10, "number of epochs", range=GE1)
    batch_size: int = opt(
        64, "images per step per process (global batch = this × processes × grad_accum_steps)", range=GE1
    )
    eval_batch_size: int | None = opt(
        None, "validation/test batch size per process; default = 2 × batch_size", range=GE1
    )
    grad_accum_steps: int = opt(1, "gradient accumulation steps", range=GE1)
    mixed_precision: str = opt(
        "auto",
        "`auto`: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU",
        ("auto", "bf16", "fp16", "no"),
    )
    channels_last: bool = opt(True, "use channels_last memory format (GPU only)")
    compile: bool = opt(False, "torch.compile the model")
    sync_bn: bool = opt(False, "convert BatchNorm to SyncBatchNorm (multi-GPU)")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing", range=UNIT)
    max_grad_norm: float = opt(0.0, "gradient clipping norm (0 = off)", range=GE0)
    best_metric: str = opt(
        "valid_acc",
        "what picks the best epoch (best/): higher acc or macro F1, lower loss; a tie keeps the earlier epoch",
        ("valid_acc", "valid_macro_f1", "valid_loss"),
    )
    ema_decay: float = opt(
        0.0,
        "EMA of the weights, updated each optimizer step (0 = off); validated each epoch and saved as best/",
        range=Range(0, 1, hi_open=True),
    )
    early_stopping_patience: int = opt(
        0, "stop after this many epochs without a better validation score (0 = off)", range=GE0
    )
    resume: str | None = opt(None, "`auto` (this run's last/ if present) or a path to a last/ folder")
    log_every: int = opt(
        20,
        "steps between progress reports: the bar's numbers on a terminal, a log line "
        "otherwise, loss/lr to the trackers (device sync points)",
        range=GE1,
    )
    optimizer: OptimizerConfig = section(OptimizerConfig, "optimizer")
    scheduler: SchedulerConfig = section(SchedulerConfig, "learning-rate schedule")


@dataclass
class CalibrationConfig:
    target_precision: float = opt(
        0.95,
        "after training: the lowest threshold on the calibrated top-1 probability at which accepted "
        "validation answers are this precise goes into the bundle (serve's `accepted` column)",
        range=Range(0, 1, lo_open=True),
    )


@dataclass
class Config:
    run: RunConfig = section(RunConfig, "run naming and seed")
    data: DataConfig = section(DataConfig, "where the images come from")
    model: ModelConfig = section(ModelConfig, "backbone, head and freezing")
    preprocess: PreprocessConfig = section(PreprocessConfig, "eval preprocessing (saved in the bundle)")
    augment: AugmentConfig = section(AugmentConfig, "train augmentation")
    train: TrainConfig = section(TrainConfig, "optimization")
    calibration: CalibrationConfig = section(
        CalibrationConfig, "calibrated confidence, fitted after training"
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """sha256 of the resolved config, ignoring keys that do not change the result (HASH_EXEMPT)."""
        d = self.to_dict()
        for key in HASH_EXEMPT:
            section, name = key.split(".")
            d[section].pop(name, None)
        d.pop("calibration", None)  # fitted after training: a checkpoint resumes whatever the target
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# Keys that name, place or log a run but do not change what it learns: Config.hash leaves them out, and a
# resumed run may change them without the "config differs" warning.
HASH_EXEMPT = (
    "run.name",
    "run.output_dir",
    "run.log_with",
    "train.resume",
    "train.log_every",
    "data.num_workers",
    "data.root",
    "data.leakage",  # the audit policy stops or warns; it never changes the weights
)


# ---------------------------------------------------------------------------------------------- loading


def _validate(cfg: Config) -> None:
    """Checks across keys, which a single key's range cannot express."""
    for name in cfg.run.trackers():
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, TRACKERS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(
                f"config key 'run.log_with': unknown tracker {name!r}{hint}; valid: none, "
                + ", ".join(TRACKERS)
            )
    pre, aug, sched = cfg.preprocess, cfg.augment, cfg.train.scheduler
    if pre.crop > pre.resize:  # the center crop would pad the resized image with black
        raise UserError(
            f"config key 'preprocess.crop' ({pre.crop}) must be <= 'preprocess.resize' ({pre.resize})"
        )
    if aug.size is not None and aug.size < pre.crop:  # the center crop after it would pad with black
        raise UserError(
            f"config key 'augment.size' ({aug.size}) must be >= 'preprocess.crop' ({pre.crop}), "
            "or null for the crop size"
        )
    if sched.name == "cosine" and sched.min_lr > cfg.train.optimizer.lr:  # the "decay" would climb
        raise UserError(
            f"config key 'train.scheduler.min_lr' ({sched.min_lr:g}) must be <= "
            f"'train.optimizer.lr' ({cfg.train.optimizer.lr:g})"
        )


def _finish(cfg: Config) -> Config:
    _validate(cfg)
    cfg.data.num_workers = resolve_num_workers(cfg.data.num_workers)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (optional), apply `key=value` overrides, validate, return a Config."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            tree = load_yaml(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise UserError(
                f"config file {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
            ) from None
        except YAML_ERRORS as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise UserError(f"config file {p} is not valid YAML: {reason}") from None
        if not isinstance(tree, dict):
            raise UserError(f"config file {p} must be a mapping of sections (run, data, model, ...)")
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value, Config)
    return _finish(build(Config, tree))


# `python -m core.config` prints the reference. The printer is core/config_reference.py's job and imports
# this module, so it is reached only from this script entry: importing core.config never imports it.
if __name__ == "__main__":
    from core.config_reference import main

    raise SystemExit(main())
