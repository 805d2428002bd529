"""Typed config: YAML recipe + `key=value` overrides → dataclasses. Unknown keys, wrong types and
out-of-range values fail clearly, before anything heavy (torch) is imported.

Every key is declared once below with its default, type, valid range or allowed values and a one-line
help text; `python -m core.config` prints the reference (`--markdown`: the table the README carries).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from core.errors import CLIP_CHARS, UserError, clip
from core.specs import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION_NAMES, AugmentSpec, EvalSpec
from core.workers import AUTO, resolve_num_workers

# Accelerate's tracker names accepted by run.log_with (checked here; whether installed: at train start).
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass(frozen=True)
class Range:
    """The valid interval of a number (or of each element of a list of numbers); None = unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False
        above = self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)
        below = self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        return above and below

    def __str__(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {num(self.lo)}"
        return f"{'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"


GE0, GE1, GT0 = Range(0), Range(1), Range(0, lo_open=True)
UNIT = Range(0, 1)  # probabilities and fractions
# An image side: past 4096 one crop is 50 MB and a batch of them exhausts memory (a model record read
# by serve/export is held to the same range: core.record_checks).
PIXELS = Range(1, 4096)


def opt(
    default: Any,
    help: str,
    choices: tuple | None = None,
    range: Range | None = None,
    length: int | None = None,
    ordered: bool = False,
) -> Any:
    """A config field: default, one-line help, and what is valid.

    choices: allowed strings; range: the interval a number (each number of a list) must lie in;
    length: exact list length; ordered: a [min, max] list must have min <= max.
    """
    meta = {"help": help, "choices": choices, "range": range, "length": length, "ordered": ordered}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "choices": None})


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
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {clip(value)}")
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        raise UserError(f"config key '{key}': expected null, got {clip(value)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {clip(value)}")
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
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string; it means the number
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, str):
        return value
    elif tp is str and value is False:
        return "off"  # YAML 1.1 reads a bare `off` as false (data.leakage: off)
    raise UserError(
        f"config key '{key}': expected {_type_name(tp)}, got {clip(value)} ({type(value).__name__})"
    )


def _unknown_key(key: str) -> UserError:
    if len(key) > 100:  # no key is this long: not worth a suggestion (difflib is quadratic)
        return UserError(f"unknown config key {clip(key)}")
    valid = _all_keys(Config)
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k for k in valid if k.startswith(parent) and "." not in k[len(parent) :]]
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, valid, n=1, cutoff=0.6
    )
    if close:
        hint = f"; did you mean '{close[0]}'?"
    else:
        hint = f"; valid keys here: {', '.join(siblings) or ', '.join(f.name for f in dataclasses.fields(Config))}"
    return UserError(f"unknown config key '{key}'{hint}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise UserError(f"config key '{prefix.rstrip('.')}': expected a mapping of keys, got {clip(data)}")
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        if not isinstance(name, str):  # YAML keys may be numbers, lists, null
            raise UserError(
                f"config key {clip(name)} under '{prefix.rstrip('.') or 'top level'}' is not a name"
            )
        key = f"{prefix}{name}"
        if name not in fields:
            raise _unknown_key(key)
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, key + ".")
            continue
        kwargs[name] = _coerce(value, tp, key)
        _check_value(key, kwargs[name], fields[name].metadata)
    return cls(**kwargs)


def _valid_text(meta: typing.Mapping[str, Any]) -> str:
    """What a key accepts, e.g. `[0, 1)`, `auto or >= 0`, `2 values in (0, 1], min <= max`."""
    options = [", ".join(meta.get("choices") or ()), str(meta["range"]) if meta.get("range") else ""]
    text = " or ".join(o for o in options if o)
    if meta.get("length"):
        text = f"{meta['length']} values" + (f" in {text}" if text else "")
    if meta.get("ordered"):
        text += ", min <= max"
    return text


def _check_value(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    """Choices, range, list length and order as declared by opt(); one line naming key, value and what is valid."""
    problem = value_problem(value, meta)
    if problem:
        raise UserError(f"config key '{key}': {problem}")


def value_problem(value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    """What is wrong with `value` for a field declared with opt() (`meta`), or None: shared by the config
    and the model-record validator (core.record_checks), so a range is written once."""
    choices, rng = meta.get("choices"), meta.get("range")
    numbers = value if isinstance(value, list) else [value]
    numeric = [v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool)]
    bad = (
        (isinstance(value, str) and choices and value not in choices)
        or (rng is not None and any(v not in rng for v in numeric))
        or (meta.get("length") is not None and len(numbers) != meta["length"])
        or (meta.get("ordered") and len(numeric) == 2 and numeric[0] > numeric[1])
    )
    if not bad:
        return None
    hint = ""
    if isinstance(value, str) and choices:
        close = difflib.get_close_matches(value[:CLIP_CHARS], choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
    shown = clip(value) if isinstance(value, str) else json.dumps(value)
    shown = shown if len(shown) <= CLIP_CHARS else shown[: CLIP_CHARS - 1] + "…"
    return f"invalid value {shown}{hint}; valid: {_valid_text(meta)}"


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
        raise UserError(f"override {clip(text)} must look like key=value (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except YAML_ERRORS:  # not YAML (or a number past Python's digit limit): the text itself
        value = raw
    return key.strip(), value


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without aliases: `*name` repeats a node by reference, so a few lines can expand to
    gigabytes (the "billion laughs"); a config never needs one."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed in a config; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


# What parsing YAML text can raise: syntax errors, an int past Python's 4300-digit limit (ValueError),
# nesting deeper than the recursive composer can follow (RecursionError).
YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


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
        _set_dotted(tree, key, value)
    return _finish(_build(Config, tree))


# `python -m core.config` prints the reference. The printer is core/config_reference.py's job and imports
# this module, so it is reached only from this script entry: importing core.config never imports it.
if __name__ == "__main__":
    from core.config_reference import main

    raise SystemExit(main())
