"""One training run end to end: accelerator, run folder (train/run_folder.py), data, model, the epoch loop,
the test evaluation."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import (
    DistributedDataParallelKwargs,
    broadcast_object_list,
    parse_flag_from_env,
    set_seed,
)

from core.config import Config
from core.errors import UserError
from core.evaluation import evaluation_source, write_evaluation
from core.models import HeadSpec, build_model, set_backbone_trainable
from core.preprocess import Normalize
from train.audit import audit_data
from train.balance import class_weights, drop_last_batch, imbalance_note
from train.calibrate import Calibrated, calibrate_best, calibration_report, score_valid
from train.checkpoint import LAST_DIR, TrainerState, load_last, read_state
from train.cli import TrainJob
from train.data import TrainData, load_data
from train.ema import WeightEma
from train.engine import BEST_DIR, Parts, Trainer, bare_model
from train.evaluate import evaluate_bundle
from train.feed import FEEDS, Feed, decode_mode
from train.optim import build_optimizer, build_scheduler
from train.resume_notes import config_differs_warning, read_run_config, resume_line
from train.run_folder import PREVIEW_IMAGES, finished_note, git_commit, resolve_run, write_run_files
from train.signals import StopFlag
from train.suspects import write_suspects
from train.targets import BatchMixer, TrainLoss
from train.tracking import Tracking, check_installed

# ---------------------------------------------------------------------------------------- accelerator


def resolve_mixed_precision(setting: str, cpu: bool, env: str | None = None) -> str:
    """`auto`: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU. An accelerate config's
    explicit fp16 (ACCELERATE_MIXED_PRECISION) is honoured; its bf16 is what `auto` picks anyway."""
    if setting != "auto":
        return setting
    if cpu:
        return "no"
    bf16 = torch.cuda.is_bf16_supported()
    if env == "fp16" or not bf16:
        return "fp16"
    return "bf16"


def make_accelerator(cfg: Config) -> Accelerator:
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    mp = resolve_mixed_precision(cfg.train.mixed_precision, cpu, os.environ.get("ACCELERATE_MIXED_PRECISION"))
    # Unfreezing after N epochs changes which parameters get gradients; DDP must then look each step.
    ddp = DistributedDataParallelKwargs(
        find_unused_parameters=isinstance(cfg.model.freeze, int) and cfg.model.freeze > 0
    )
    if not cpu:
        torch.backends.cudnn.benchmark = (
            True  # fixed input shapes: autotuned convolutions, as train/bench measures
        )
    return Accelerator(
        cpu=cpu,
        mixed_precision=mp,
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        kwargs_handlers=[ddp],
        dataloader_config=DataLoaderConfiguration(non_blocking=not cpu),
    )


def on_main(accelerator: Accelerator, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the main process and hand its result (or its UserError) to every process."""
    box: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            box[0] = ("ok", fn())
        except UserError as exc:
            box[0] = ("error", str(exc))
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


# ---------------------------------------------------------------------------------------- model


def _input_prep(
    cfg: Config, device: torch.device, channels_last: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    normalize = Normalize(tuple(cfg.preprocess.mean), tuple(cfg.preprocess.std)).to(device)
    if not channels_last:
        return normalize
    return lambda x: normalize(x).contiguous(memory_format=torch.channels_last)


def make_model(cfg: Config, data: TrainData) -> torch.nn.Module:
    """The model before Accelerate sees it; building it may download pretrained weights."""
    head = HeadSpec(list(cfg.model.head.hidden), cfg.model.head.dropout)
    model = build_model(cfg.model.arch, len(data.classes), head, cfg.model.pretrained)
    if cfg.model.freeze == "backbone":
        set_backbone_trainable(model, False)  # before DDP wraps it, so DDP only syncs the head
    return model


def make_criterion(label_smoothing: float, weight: torch.Tensor | None = None) -> torch.nn.Module:
    """Cross-entropy that masks the slots of unreadable images (IGNORE_LABEL): batches keep their shape.
    Reads mixed soft labels too; `weight`: data.balance=loss (train.targets says how it meets smoothing)."""
    return TrainLoss(label_smoothing, weight)


def _recipe_parts(cfg: Config, data: TrainData, model: torch.nn.Module, accelerator: Accelerator) -> dict:
    """The loss (class weights), MixUp/CutMix and the EMA shadow (registered with last/'s checkpointing)."""
    weight = (
        class_weights(data.train.source.labels, len(data.classes)) if cfg.data.balance == "loss" else None
    )
    criterion = make_criterion(cfg.train.label_smoothing, weight).to(accelerator.device)
    mixer = BatchMixer(len(data.classes), cfg.augment.mixup_alpha, cfg.augment.cutmix_alpha)
    ema = None
    if cfg.train.ema_decay > 0:
        ema = WeightEma(bare_model(accelerator, model), cfg.train.ema_decay)
        accelerator.register_for_checkpointing(ema)
    return {"criterion": criterion, "mixer": mixer if mixer.enabled else None, "ema": ema}


def build_parts(
    cfg: Config, feed: Feed, data: TrainData, model: torch.nn.Module, accelerator: Accelerator
) -> Parts:
    """Collective (DDP wraps the model): every process calls it, outside main_process_first."""
    t = cfg.train
    on_gpu = accelerator.device.type == "cuda"
    if t.sync_bn and accelerator.num_processes > 1 and on_gpu:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    channels_last = t.channels_last and on_gpu
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), t.optimizer)
    # Compiled: drop the partial last batch (a new shape would recompile, and past recompile_limit dynamo
    # falls back to eager silently). Bad images keep masked slots, so they change no shape either. And a
    # last batch of one image never reaches BatchNorm (train.balance.drop_last_batch).
    drop_last = drop_last_batch(len(data.train), t.batch_size, accelerator.num_processes, t.compile)
    batches = len(data.train) // t.batch_size if drop_last else math.ceil(len(data.train) / t.batch_size)
    steps_per_epoch = math.ceil(batches / t.grad_accum_steps)
    scheduler = build_scheduler(optimizer, t.scheduler, steps_per_epoch, t.epochs)
    tl, vl = feed.loaders(
        t.batch_size, t.eval_batch_size or 2 * t.batch_size, pin=on_gpu, drop_last=drop_last
    )
    model, optimizer, scheduler, tl, vl = accelerator.prepare(model, optimizer, scheduler, tl, vl)
    recipe = _recipe_parts(cfg, data, model, accelerator)
    if t.compile:
        model = torch.compile(model)
    return Parts(
        model,
        optimizer,
        scheduler,
        tl,
        vl,
        _input_prep(cfg, accelerator.device, channels_last),
        feed=feed,
        **recipe,
    )


# ---------------------------------------------------------------------------------------- test evaluation


def evaluate_test(
    cfg: Config,
    data: TrainData,
    run_dir: Path,
    accelerator: Accelerator,
    calibrated: Calibrated | None = None,
) -> dict | None:
    """Evaluate the saved best bundle (what ships, not the in-memory model) on the test split."""
    if data.test is None or not (run_dir / BEST_DIR).is_dir():
        return None
    result, record = evaluate_bundle(cfg, data.test, run_dir / BEST_DIR, accelerator)
    if not accelerator.is_main_process:
        return None
    # Sample the predictions grid evenly over the test set (it is listed class by class), not its first rows.
    rows = (
        np.unique(np.linspace(0, len(result.targets) - 1, PREVIEW_IMAGES).round().astype(int))
        if result.targets is not None and len(result.targets)
        else np.array([], dtype=int)
    )
    images = [data.test[int(result.indices[r])][0] for r in rows]
    keep = [r for r, x in zip(rows, images) if x is not None]
    images = [x for x in images if x is not None]
    folder = data.lineage.get("test_dir") or data.lineage.get("source", "test")  # CIFAR-10 has no folder
    source = evaluation_source(run_dir / BEST_DIR, folder, len(data.test))
    metrics = write_evaluation(
        run_dir,
        result.probs,
        result.targets,
        record.classes,
        record.display_names,
        torch.stack(images) if images else None,
        image_rows=keep,
        source=source,
    )
    return calibration_report(run_dir, calibrated, metrics, result)


# ---------------------------------------------------------------------------------------- the run


def _restore(
    accelerator: Accelerator, cfg: Config, last: Path | None, old_config: dict | None
) -> TrainerState:
    """The checkpoint's state (or a fresh one); `old_config` is the config it was trained with, if known."""
    if last is None:
        return TrainerState(config_hash=cfg.hash())
    state = load_last(accelerator, last)
    if state.finished or state.epoch >= cfg.train.epochs:
        accelerator.print(
            f"resuming {last.parent}: its final evaluation on test/ did not finish; running it now"
        )
    else:
        accelerator.print(f"resuming from {last}: epoch {state.epoch + 1}, step {state.step}")
    if state.config_hash and state.config_hash != cfg.hash():
        accelerator.print(config_differs_warning(old_config, cfg.to_dict()))
    return state


@dataclass
class RunResult:
    exit_code: int  # 0, or 128 + signal number when preempted (last/ saved)
    run_dir: Path
    state: TrainerState
    model: (
        torch.nn.Module | None
    )  # the trained model as it ended (unwrapped, on its device); None: nothing to do
    test_metrics: dict | None = None


def _device_text(accelerator: Accelerator) -> str:
    """'cuda', or 'cpu (N threads)': accelerate launch gives a CPU process 1 thread unless OMP_NUM_THREADS is set."""
    kind = accelerator.device.type
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n != 1 else ''})" if kind == "cpu" else kind


def train(job: TrainJob) -> RunResult:
    """Train as configured: the epoch loop, then the best bundle's evaluation on test/ when present."""
    cfg = job.config
    check_installed(cfg.run.trackers())
    accelerator = make_accelerator(cfg)
    try:
        with contextlib.ExitStack() as held:  # the run folder's lock, taken once the folder is known
            return _train(accelerator, job, held)
    finally:
        # On every way out (done, preempted, user error, crash): a gloo group left for interpreter exit
        # aborts the process ("terminate called without an active exception"), and then the launcher
        # of a healthy node waits out torchrun's 300 s exit barrier for it.
        accelerator.end_training()


def _train(accelerator: Accelerator, job: TrainJob, held: contextlib.ExitStack) -> RunResult:
    cfg, stem = job.config, job.stem
    set_seed(cfg.run.seed, device_specific=True)
    decode = decode_mode(cfg, accelerator.device)
    if decode == "gpu" and accelerator.device.type != "cuda":
        accelerator.print(
            "warning: data.decode: gpu runs its batched decode + augmentation on the CPU here (no "
            "CUDA device); data.decode: cpu (parallel workers) is faster on this machine"
        )
    run_dir, last = on_main(accelerator, lambda: resolve_run(cfg, stem, held))
    note = on_main(accelerator, lambda: finished_note(cfg, run_dir, last))
    if note:  # a rerun of a finished run (the README's newcomer command twice) succeeds and says so
        accelerator.print(note)
        return RunResult(0, run_dir, read_state(last), None)
    # Read before write_run_files replaces it: what the checkpoint was trained with, for the resume warning.
    old_config = read_run_config(last) if accelerator.is_main_process else None
    with accelerator.main_process_first():  # a download (CIFAR-10, pretrained weights) happens once
        data = load_data(cfg)
        model = make_model(cfg, data)
    audit = on_main(accelerator, lambda: audit_data(cfg, data, run_dir))  # before any training step
    feed = FEEDS[decode](cfg, data, accelerator.device)
    if decode == "gpu" and not getattr(feed, "device_decode", True):
        accelerator.print(
            f"warning: the device JPEG decoder does not work on {accelerator.device} (torchvision "
            "without nvJPEG, or a GPU slice without a JPEG engine): PIL decodes every image in the "
            "DataLoader workers; data.decode: cpu does the same with CPU augmentation"
        )
    parts = build_parts(cfg, feed, data, model, accelerator)
    if accelerator.is_main_process:
        write_run_files(cfg, data, feed, run_dir)
    lineage = {"config_hash": cfg.hash(), "git_commit": git_commit(), "dataset": data.lineage}
    lineage["data_audit"] = audit
    accelerator.print(
        f"run folder {run_dir} | {len(data.classes)} classes, {len(data.train)} train / "
        f"{len(data.valid)} valid images | {accelerator.num_processes} process(es) on "
        f"{_device_text(accelerator)}, mixed precision {accelerator.mixed_precision}, data.decode {decode}"
    )
    imbalance = imbalance_note(data.train.source.labels, data.display_names, cfg.data.balance)
    if imbalance:
        accelerator.print(imbalance)
    state = _restore(accelerator, cfg, last, old_config)
    tracking = Tracking.start(accelerator, cfg, run_dir)
    try:
        result = _fit_and_test(cfg, data, run_dir, accelerator, parts, lineage, state, tracking)
    finally:
        tracking.finish()
    if not result.state.finished:  # stopped by a signal: last/ is saved, say how to go on from it
        accelerator.print(resume_line(job.args, run_dir / LAST_DIR, accelerator.num_processes))
    return result


def _fit_and_test(
    cfg: Config,
    data: TrainData,
    run_dir: Path,
    accelerator: Accelerator,
    parts,
    lineage: dict,
    state: TrainerState,
    tracking: Tracking,
) -> RunResult:
    with StopFlag() as stop:
        trainer = Trainer(cfg, data, run_dir, accelerator, parts, stop, lineage, tracking)
        state = trainer.fit(state)
    result = RunResult(0 if state.finished else stop.exit_code, run_dir, state, trainer.unwrapped)
    if not state.finished:
        return result
    accelerator.wait_for_everyone()
    valid = score_valid(cfg, data, run_dir, accelerator)  # collective; calibration and suspects share it
    calibrated = calibrate_best(cfg, run_dir, accelerator, valid)
    accelerator.wait_for_everyone()
    result.test_metrics = evaluate_test(cfg, data, run_dir, accelerator, calibrated)
    if result.test_metrics is None:  # no test split: the reliability diagram shows validation alone
        calibration_report(run_dir, calibrated, None, None)
    write_suspects(cfg, data, run_dir, accelerator, valid)  # collective: every process scores its share
    best, test = state.best or {}, result.test_metrics
    accelerator.print(
        f"best epoch {best.get('epoch')}: valid acc {best.get('valid_acc', 0):.3f} → "
        f"{run_dir / BEST_DIR}" + (f" | test acc {test['accuracy']:.3f}" if test else "")
    )
    if test:
        step = len(state.rows) * len(parts.train_loader)
        tracking.log(
            {
                f"test/{k}": v
                for k, v in test.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
            step=step,
        )
        tracking.images(
            {n: run_dir / f"{n}.png" for n in ("confusion_matrix", "predictions", "calibration")}, step=step
        )
    return result
