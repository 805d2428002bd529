"""Typed config: YAML recipe + `key=value` overrides → dataclasses. Unknown keys and wrong types fail clearly.

Every key is declared once below with its default, type, allowed values and a one-line help text;
`python -m core.config` prints the reference table that the README carries.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from core.errors import UserError
from core.preprocess import IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, EvalSpec


# Accelerate's tracker names accepted by run.log_with (checked here; whether installed: at train start).
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


def opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A config field: default, one-line help, optional allowed values."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "choices": None})


@dataclass
class RunConfig:
    name: str | None = opt(None, "run folder name under output_dir; default: <config file stem>-<YYYYmmdd-HHMMSS>")
    output_dir: str = opt("runs", "where run folders are created")
    seed: int = opt(0, "random seed (made device-specific per process)")
    log_with: Union[str, list[str]] = opt("none", "experiment trackers (Accelerate's), one or a list: none, "
                                          + ", ".join(TRACKERS) + "; tensorboard writes runs/<name>/tensorboard/")

    def trackers(self) -> list[str]:
        names = [self.log_with] if isinstance(self.log_with, str) else list(self.log_with)
        return [n for n in names if n != "none"]


@dataclass
class DataConfig:
    source: str = opt("folder", "`folder`: root/train|valid|test/<class>/*; `cifar10`: torchvision CIFAR-10",
                      ("folder", "cifar10"))
    root: str = opt("data", "data set folder (for cifar10: where it is, or is downloaded to)")
    num_workers: int = opt(4, "DataLoader worker processes per GPU process")
    max_bad_fraction: float = opt(0.01, "abort when more than this fraction of training images cannot be decoded")
    download: bool = opt(True, "cifar10 only: download when missing (needs network)")
    decode: str = opt("cpu", "folder data: `cpu` = decode + augment in DataLoader workers; `gpu` = workers read "
                      "bytes, nvJPEG decode + batched augmentation on the training device (runs, slower, without "
                      "CUDA); `auto` = gpu on CUDA, else cpu. data.source cifar10: cpu only", ("cpu", "gpu", "auto"))


@dataclass
class HeadConfig:
    hidden: list[int] = opt([], "hidden layer sizes of the new classifier head; [] = one Linear layer")
    dropout: float = opt(0.0, "dropout after each hidden layer (and before the output layer if no hidden)")


@dataclass
class ModelConfig:
    arch: str = opt("resnet50", "torchvision model name, `timm:<name>` (needs timm), or `cifar_cnn`")
    pretrained: str = opt("imagenet", "`imagenet` (default weights, cached), `none`, or a path to a state dict")
    head: HeadConfig = section(HeadConfig, "classifier head that replaces the model's own")
    freeze: Union[str, int] = opt("backbone", "`backbone` (train the head only), `none` (fine-tune all), "
                                  "or N: train the head only for N epochs, then everything")


@dataclass
class PreprocessConfig:
    resize: int = opt(256, "eval: resize the shorter side to this")
    crop: int = opt(224, "eval: center crop to this square; also the training crop size")
    interpolation: str = opt("bilinear", "resize interpolation", ("nearest", "bilinear", "bicubic"))
    mean: list[float] = opt(list(IMAGENET_MEAN), "per-channel normalization mean (0..1 scale)")
    std: list[float] = opt(list(IMAGENET_STD), "per-channel normalization std (0..1 scale)")

    def spec(self) -> EvalSpec:
        return EvalSpec(self.resize, self.crop, self.interpolation, tuple(self.mean), tuple(self.std))


@dataclass
class AugmentConfig:
    enabled: bool = opt(True, "false: train on the eval transform (no augmentation)")
    rotation: float = opt(0.0, "RandomRotation degrees (0 = off)")
    scale: list[float] = opt([0.08, 1.0], "RandomResizedCrop area scale range")
    ratio: list[float] = opt([0.75, 1.3333333], "RandomResizedCrop aspect ratio range")
    size: int | None = opt(None, "RandomResizedCrop output size; default = preprocess.crop; larger → center crop after")
    hflip: float = opt(0.5, "horizontal flip probability")
    color_jitter: float = opt(0.0, "brightness/contrast/saturation jitter strength (0 = off)")

    def spec(self) -> AugmentSpec:
        return AugmentSpec(self.enabled, self.rotation, (self.scale[0], self.scale[1]),
                           (self.ratio[0], self.ratio[1]), self.size, self.hflip, self.color_jitter)


@dataclass
class OptimizerConfig:
    name: str = opt("adam", "optimizer", ("sgd", "adam", "adamw", "adadelta"))
    lr: float = opt(1e-3, "learning rate (for the global batch; not rescaled automatically)")
    momentum: float = opt(0.9, "sgd momentum")
    weight_decay: float = opt(0.0, "weight decay")
    nesterov: bool = opt(False, "sgd Nesterov momentum")


@dataclass
class SchedulerConfig:
    name: str = opt("none", "learning-rate schedule", ("none", "step", "cosine", "onecycle"))
    step_size: int = opt(4, "step: epochs between decays")
    gamma: float = opt(0.1, "step: decay factor")
    warmup_epochs: float = opt(0.0, "cosine: linear warmup length in epochs")
    min_lr: float = opt(0.0, "cosine: final learning rate")


@dataclass
class TrainConfig:
    epochs: int = opt(10, "number of epochs")
    batch_size: int = opt(64, "images per step per process (global batch = this × processes × grad_accum_steps)")
    eval_batch_size: int | None = opt(None, "validation/test batch size per process; default = 2 × batch_size")
    grad_accum_steps: int = opt(1, "gradient accumulation steps")
    mixed_precision: str = opt("auto", "`auto`: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU",
                               ("auto", "bf16", "fp16", "no"))
    channels_last: bool = opt(True, "use channels_last memory format (GPU only)")
    compile: bool = opt(False, "torch.compile the model")
    sync_bn: bool = opt(False, "convert BatchNorm to SyncBatchNorm (multi-GPU)")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing")
    max_grad_norm: float = opt(0.0, "gradient clipping norm (0 = off)")
    early_stopping_patience: int = opt(0, "stop after this many epochs without a better validation score (0 = off)")
    resume: str | None = opt(None, "`auto` (this run's last/ if present) or a path to a last/ folder")
    log_every: int = opt(20, "steps between progress-bar metric updates (device sync points)")
    optimizer: OptimizerConfig = section(OptimizerConfig, "optimizer")
    scheduler: SchedulerConfig = section(SchedulerConfig, "learning-rate schedule")


@dataclass
class Config:
    run: RunConfig = section(RunConfig, "run naming and seed")
    data: DataConfig = section(DataConfig, "where the images come from")
    model: ModelConfig = section(ModelConfig, "backbone, head and freezing")
    preprocess: PreprocessConfig = section(PreprocessConfig, "eval preprocessing (saved in the bundle)")
    augment: AugmentConfig = section(AugmentConfig, "train augmentation")
    train: TrainConfig = section(TrainConfig, "optimization")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """sha256 of the resolved config, ignoring keys that do not change the result."""
        d = self.to_dict()
        d["run"].pop("name", None)
        d["run"].pop("output_dir", None)
        d["run"].pop("log_with", None)
        d["train"].pop("resume", None)
        d["train"].pop("log_every", None)
        d["data"].pop("num_workers", None)
        d["data"].pop("root", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- loading


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        full = f"{prefix}{f.name}"
        keys.append(full)
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, full + "."))
    return keys


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        raise UserError(f"config key '{key}': expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(key: str) -> UserError:
    valid = _all_keys(Config)
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k for k in valid if k.startswith(parent) and "." not in k[len(parent):]]
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, valid, n=1, cutoff=0.6)
    if close:
        hint = f"; did you mean '{close[0]}'?"
    else:
        hint = f"; valid keys here: {', '.join(siblings) or ', '.join(f.name for f in dataclasses.fields(Config))}"
    return UserError(f"unknown config key '{key}'{hint}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise UserError(f"config key '{prefix.rstrip('.')}': expected a mapping of keys, got {data!r}")
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise _unknown_key(key)
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, key + ".")
            continue
        kwargs[name] = _coerce(value, tp, key)
        choices = fields[name].metadata.get("choices")
        if choices and kwargs[name] not in choices and not isinstance(kwargs[name], int):
            close = difflib.get_close_matches(str(kwargs[name]), choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"config key '{key}': invalid value {kwargs[name]!r}{hint}; valid: {', '.join(choices)}")
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _unknown_key(key)
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` → ('train.epochs', 3); the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _validate(cfg: Config) -> None:
    """Cross-field checks a type cannot express."""
    for name in cfg.run.trackers():
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, TRACKERS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"config key 'run.log_with': unknown tracker {name!r}{hint}; valid: none, "
                            + ", ".join(TRACKERS))
    f = cfg.model.freeze
    if isinstance(f, str) and f not in ("backbone", "none"):
        raise UserError(f"config key 'model.freeze': invalid value {f!r}; valid: backbone, none, or a number of epochs")
    if cfg.train.epochs < 1 or cfg.train.batch_size < 1 or cfg.train.grad_accum_steps < 1:
        raise UserError("config keys 'train.epochs', 'train.batch_size', 'train.grad_accum_steps' must be >= 1")
    if len(cfg.preprocess.mean) != 3 or len(cfg.preprocess.std) != 3:
        raise UserError("config keys 'preprocess.mean' and 'preprocess.std' need 3 values (RGB)")
    if cfg.preprocess.crop > cfg.preprocess.resize:
        raise UserError(f"config key 'preprocess.crop' ({cfg.preprocess.crop}) must be <= 'preprocess.resize' "
                        f"({cfg.preprocess.resize})")
    if len(cfg.augment.scale) != 2 or len(cfg.augment.ratio) != 2:
        raise UserError("config keys 'augment.scale' and 'augment.ratio' need 2 values [min, max]")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (optional), apply `key=value` overrides, validate, return a Config."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {p} is not valid YAML: {exc}".replace("\n", " ")) from None
        if not isinstance(tree, dict):
            raise UserError(f"config file {p} must be a mapping of sections (run, data, model, ...)")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree)
    _validate(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    cfg = _build(Config, tree)
    _validate(cfg)
    return cfg


def reference_markdown() -> str:
    """The config reference table (every key, default, meaning) for the README."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        hints = _field_types(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            default = json.dumps(getattr(inst, f.name))
            choices = f.metadata.get("choices")
            sep = " \\| "
            meaning = f.metadata["help"].replace("|", "\\|") + (f" ({sep.join(choices)})" if choices else "")
            rows.append(f"| `{prefix}{f.name}` | `{default}` | {meaning} |")

    walk(Config, "")
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_markdown())
