"""The epoch loop: train steps, validation, best bundle, last/ checkpoint, early stopping, preemption.

No per-step host sync: losses and hit counts accumulate on the device and are read every
`train.log_every` steps and at epoch end. The global torch RNG is reseeded from (seed, rank, epoch,
step) before every step, so dropout draws are the same in a resumed run as in an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import gather_object

from core.bundle import BundleRecord, save_bundle
from core.config import Config
from core.errors import UserError
from core.evaluation import write_metrics_csv
from core.figures import plot_curves
from core.fsio import write_text_atomic
from core.images import TOO_ELONGATED
from core.models import HeadSpec, backbone_frozen_eval, set_backbone_trainable
from core.progress import Progress
from train.checkpoint import TrainerState, save_last
from train.data import TrainData
from train.ema import WeightEma
from train.evaluate import EvalResult, evaluate
from train.feed import Feed
from train.signals import StopFlag
from train.targets import BatchMixer, dominant_label
from train.tracking import Tracking

BEST_DIR = "best"


def step_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch, step, 1]).generate_state(1)[0])


def bare_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under the compile and DDP wrappers, leaving the wrappers intact.

    accelerate's unwrap_model(compiled) (keep_torch_compile=True) rewires `compiled._orig_mod` to the bare
    module in place, so the compiled model the loop trains through loses DDP: no `no_sync`, and gradient
    accumulation all-reduces on every micro-step. Unwrapping what is under the compiled wrapper avoids that
    on every accelerate version.
    """
    return accelerator.unwrap_model(getattr(model, "_orig_mod", model))


LOWER_IS_BETTER = {"valid_loss"}


def better(new: dict[str, Any], best: dict[str, Any] | None, metric: str = "valid_acc") -> bool:
    """train.best_metric: strictly better wins (loss: lower; acc, macro F1: higher); a tie keeps the earlier
    epoch. A best recorded before its metric existed (an older last/) is beaten by any value."""
    if best is None or metric not in best:
        return True
    if metric in LOWER_IS_BETTER:
        return new[metric] < best[metric]
    return new[metric] > best[metric]


def backbone_trainable(freeze: str | int, epoch: int) -> bool:
    if isinstance(freeze, int):
        return epoch >= freeze
    return freeze == "none"


@dataclasses.dataclass
class Parts:
    """The prepared training objects."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    valid_loader: Any
    prepare: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch → normalized float on the device
    criterion: torch.nn.Module
    feed: Feed  # data.decode's path: turns the prepared loaders' batches into (uint8 images, labels, notes)
    ema: WeightEma | None = None  # train.ema_decay > 0: validated, selected and saved instead of the model
    mixer: BatchMixer | None = None  # augment.mixup_alpha / cutmix_alpha > 0


class Trainer:
    def __init__(
        self,
        cfg: Config,
        data: TrainData,
        run_dir: Path,
        accelerator: Accelerator,
        parts: Parts,
        stop: StopFlag,
        lineage: dict[str, Any],
        tracking: Tracking | None = None,
    ):
        self.cfg, self.data, self.run_dir, self.acc, self.p = cfg, data, run_dir, accelerator, parts
        self.stop, self.lineage = stop, lineage
        self.tracking = tracking or Tracking(accelerator, [])
        self.unwrapped = bare_model(accelerator, parts.model)
        self._rows: list[dict[str, Any]] = []  # finished epochs, for the run ETA
        self._window = (0.0, 0)  # (loss sum, images) at the last report: the trackers' per-step loss

    # ------------------------------------------------------------------ helpers

    def log(self, text: str) -> None:
        if self.acc.is_main_process:
            print(text, flush=True)  # flushed: a batch system's log file shows it now, not at exit

    def _agree(self, epoch_bad: list[str]) -> tuple[bool, int]:
        """(stop requested anywhere, bad images this epoch everywhere); one tiny all-reduce when distributed."""
        if self.acc.num_processes == 1:
            return self.stop.received is not None, len(_undecodable(epoch_bad))
        flags = torch.tensor(
            [float(self.stop.received is not None), float(len(_undecodable(epoch_bad)))],
            device=self.acc.device,
        )
        stop, bad = self.acc.reduce(flags, reduction="sum").tolist()
        return stop > 0, int(bad)

    def _check_bad(self, bad_count: int, epoch_bad: list[str], epoch_done: bool = False) -> None:
        """Abort past data.max_bad_fraction undecodable images (a few panoramas too elongated to resize
        never abort a run). Mid-epoch only the images read so far are known, so the count and list are a
        lower bound there and the message says so; at epoch end they are complete."""
        limit = self.cfg.data.max_bad_fraction * len(self.data.train)
        if bad_count <= limit:
            return
        notes = sorted(set(_undecodable(gather_object(epoch_bad))))
        shown = "; ".join(n.replace("\t", ": ") for n in notes[:20])
        more = f" (and {len(notes) - 20} more)" if len(notes) > 20 else ""
        count = f"{len(notes)}" if epoch_done else f"at least {len(notes)}"
        so_far = "" if epoch_done else " (counted so far; the rest of the epoch was not read)"
        raise UserError(
            f"{count} of {len(self.data.train)} training images cannot be decoded{so_far}, more than "
            f"data.max_bad_fraction={self.cfg.data.max_bad_fraction}: {shown}{more}; fix or remove them"
        )

    def _set_mode(self, epoch: int) -> None:
        trainable = backbone_trainable(self.cfg.model.freeze, epoch)
        if isinstance(self.cfg.model.freeze, int):
            set_backbone_trainable(self.unwrapped, trainable)
        self.p.model.train()
        if not trainable:
            backbone_frozen_eval(self.unwrapped)

    # ------------------------------------------------------------------ one epoch of training

    def train_epoch(self, epoch: int, state: TrainerState) -> dict[str, float] | None:
        """Train one epoch from `state.step`; return train metrics, or None when stopped by a signal."""
        acc, p, cfg = self.acc, self.p, self.cfg
        self._set_mode(epoch)
        # Through the prepared loader: its __iter__ re-applies its own epoch counter to our sampler.
        p.train_loader.set_epoch(epoch)
        skip = state.step
        loader = p.train_loader if not skip else skip_first_batches(p.train_loader, skip)
        part = state.partial or {}
        loss_sum = torch.tensor(part.get("loss_sum", 0.0), device=acc.device)
        hits = torch.tensor(part.get("hits", 0.0), device=acc.device)
        seen, seconds = int(part.get("seen", 0)), float(part.get("seconds", 0.0))
        epoch_bad: list[str] = list(part.get("epoch_bad", []))
        since_check, start, total = 0, time.perf_counter(), len(p.train_loader)
        self._rows, self._window = state.rows, (loss_sum.item(), seen)
        bar = Progress(
            total, f"epoch {epoch + 1}/{cfg.train.epochs}", initial=skip, enabled=acc.is_main_process
        )
        for step, (images, labels, bad) in enumerate(p.feed.train_batches(loader), start=skip):
            epoch_bad.extend(bad)
            valid = (
                len(labels) - len(bad) if len(labels) else 0
            )  # bad files keep a masked slot (IGNORE_LABEL)
            if valid:
                loss, logits, target = self._step(images, labels, epoch, step, masked=bool(bad))
                loss_sum += loss.detach().float() * valid
                hits += (logits.detach().argmax(dim=1) == dominant_label(target)).sum()
                seen += valid
            elif acc.num_processes > 1:
                raise UserError(f"a whole training batch could not be decoded: {'; '.join(bad)}")
            bar.update(1)
            self.stop.test_hook(epoch * len(p.train_loader) + step + 1)
            if acc.is_main_process and ((step + 1) % cfg.train.log_every == 0 or step + 1 == total):
                self._report(
                    bar,
                    epoch * total + step + 1,
                    (loss_sum.item(), hits.item(), seen),
                    seconds + time.perf_counter() - start,
                )
            since_check += 1
            if not acc.sync_gradients or (acc.num_processes > 1 and since_check < cfg.train.log_every):
                continue
            since_check = 0
            stop, bad_count = self._agree(epoch_bad)
            self._check_bad(bad_count, epoch_bad)
            if stop and step + 1 < len(p.train_loader):
                bar.close()
                state.epoch, state.step = epoch, step + 1
                state.partial = {
                    "loss_sum": loss_sum.item(),
                    "hits": hits.item(),
                    "seen": seen,
                    "seconds": seconds + time.perf_counter() - start,
                    "epoch_bad": epoch_bad,
                }
                return None
        bar.close()
        seconds += time.perf_counter() - start
        return self._train_summary(loss_sum, hits, seen, seconds, epoch_bad, state)

    def _report(
        self, bar: Progress, global_step: int, sums: tuple[float, float, int], elapsed: float
    ) -> None:
        """Every log_every steps and at the epoch's end (main process): the epoch's running numbers on the
        console, and the loss since the last report plus the learning rate to the trackers."""
        loss_sum, hits, seen = sums
        lr = self.p.optimizer.param_groups[0]["lr"]
        left = self.cfg.train.epochs - len(self._rows) - 1  # epochs after this one
        done = [r["epoch_seconds"] for r in self._rows]
        bar.later_seconds = left * (sum(done) / len(done) if done else bar.per_unit() * (bar.total or 0))
        bar.report(
            {
                "loss": f"{loss_sum / max(seen, 1):.4f}",
                "acc": f"{hits / max(seen, 1):.3f}",
                "img/s": f"{seen * self.acc.num_processes / max(elapsed, 1e-9):.0f}",
                "lr": f"{lr:.2e}",
            }
        )
        last_loss, last_seen = self._window
        if seen > last_seen:
            self.tracking.log(
                {"train/loss": (loss_sum - last_loss) / (seen - last_seen), "train/lr": lr}, step=global_step
            )
        self._window = (loss_sum, seen)

    def _step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int, masked: bool):
        """One micro-step; returns (loss, logits, target): target is `labels`, or the mixed soft labels."""
        acc, p = self.acc, self.p
        with acc.accumulate(p.model):
            torch.manual_seed(step_seed(self.cfg.run.seed, acc.process_index, epoch, step))
            inputs, target = p.prepare(images), labels
            if p.mixer is not None:  # after the reseed: its draws are exact on resume
                inputs, target = p.mixer(inputs, labels, masked)
            logits = p.model(inputs)
            loss = p.criterion(logits, target)
            acc.backward(loss)
            if acc.sync_gradients and self.cfg.train.max_grad_norm > 0:
                acc.clip_grad_norm_(p.model.parameters(), self.cfg.train.max_grad_norm)
            p.optimizer.step()
            p.scheduler.step()
            p.optimizer.zero_grad(set_to_none=True)
            if p.ema is not None and acc.sync_gradients:
                p.ema.update(self.unwrapped)
        return loss, logits, target

    def _train_summary(self, loss_sum, hits, seen, seconds, epoch_bad, state) -> dict[str, float]:
        acc = self.acc
        totals = acc.reduce(
            torch.stack(
                [
                    loss_sum.double(),
                    hits.double(),
                    torch.tensor(float(seen), device=acc.device, dtype=torch.float64),
                ]
            ),
            reduction="sum",
        )
        loss_total, hit_total, n = totals.tolist()
        all_bad = gather_object(epoch_bad) if acc.num_processes > 1 else epoch_bad
        self._check_bad(len(set(_undecodable(all_bad))), epoch_bad, epoch_done=True)
        state.bad_files = sorted(set(state.bad_files) | set(all_bad))
        if all_bad:  # skipped, not fatal: still said once per epoch, on the console and not only in a file
            self.log(_bad_images_warning(sorted(set(all_bad)), self.run_dir / "bad_files.txt"))
        return {
            "train_loss": loss_total / max(n, 1),
            "train_acc": hit_total / max(n, 1),
            "images_per_s": n / max(seconds, 1e-9),
            "train_seconds": seconds,
        }

    # ------------------------------------------------------------------ epoch end

    def validate(self) -> EvalResult:
        model = self.p.ema.module if self.p.ema is not None else self.p.model
        return evaluate(self.acc, model, self.p.feed.eval_batches(self.p.valid_loader), self.p.prepare)

    def end_epoch(
        self, epoch: int, train: dict[str, float], valid: EvalResult, seconds: float, state: TrainerState
    ) -> bool:
        """Record the epoch, keep the best bundle; return True when early stopping says stop."""
        row = {
            "epoch": epoch + 1,
            "train_loss": train["train_loss"],
            "train_acc": train["train_acc"],
            "valid_loss": valid.loss,
            "valid_acc": valid.acc,
            "valid_macro_f1": valid.macro_f1,
            **valid.top5_metric("valid"),
            "lr": self.p.optimizer.param_groups[0]["lr"],
            "images_per_s": train["images_per_s"],
            "epoch_seconds": seconds,
        }
        state.rows.append(row)
        metrics = {**row, "valid_n": valid.n}
        is_best = better(metrics, state.best, self.cfg.train.best_metric)
        if is_best:
            state.best, state.epochs_since_best = metrics, 0
        else:
            state.epochs_since_best += 1
        state.epoch, state.step, state.partial = epoch + 1, 0, {}
        if self.acc.is_main_process:
            if is_best:
                self.save_best(metrics)
            self.write_reports(state)
            step = (epoch + 1) * len(self.p.train_loader)
            self.tracking.log({f"epoch/{k}": v for k, v in row.items()}, step=step)
            self.tracking.images({"curves": self.run_dir / "curves.png"}, step=step)
        self.log(_summary(epoch, self.cfg.train.epochs, row, valid.n, is_best))
        patience = self.cfg.train.early_stopping_patience
        return bool(patience) and state.epochs_since_best >= patience

    def save_best(self, metrics: dict[str, Any]) -> None:
        cfg = self.cfg
        record = BundleRecord(
            arch=cfg.model.arch,
            classes=list(self.data.classes),
            display_names=list(self.data.display_names),
            preprocess=cfg.preprocess.spec(),
            head=_head_spec(cfg),
            metrics=dict(metrics),
            lineage={**self.lineage, **self._ema_lineage()},
        )
        model = self.p.ema.module if self.p.ema is not None else self.unwrapped
        save_bundle(self.run_dir / BEST_DIR, model, record)

    def _ema_lineage(self) -> dict[str, Any]:
        return {"ema": self.p.ema.facts()} if self.p.ema is not None else {}

    def write_reports(self, state: TrainerState) -> None:
        write_metrics_csv(state.rows, self.run_dir / "metrics.csv")
        plot_curves(state.rows, self.run_dir / "curves.png", best_epoch=(state.best or {}).get("epoch"))
        if state.bad_files:
            write_text_atomic(self.run_dir / "bad_files.txt", "\n".join(state.bad_files) + "\n")

    # ------------------------------------------------------------------ the loop

    def fit(self, state: TrainerState) -> TrainerState:
        """Run epochs from `state` to the end, an early stop, or a signal (then last/ is saved and we return)."""
        while state.epoch < self.cfg.train.epochs and not state.finished:
            epoch, start = state.epoch, time.perf_counter()
            prior = float((state.partial or {}).get("seconds", 0.0))
            train = self.train_epoch(epoch, state)
            if train is None:
                self.log(
                    f"stop requested ({self.stop.received.name if self.stop.received else 'signal'}): "
                    f"saving {self.run_dir / 'last'} at epoch {epoch + 1}, step {state.step}"
                )
                save_last(self.acc, self.run_dir, state)
                return state
            valid = self.validate()
            self.p.feed.report_once(
                self.log
            )  # how many images the CPU decoded instead of the device, and why
            seconds = prior + time.perf_counter() - start
            state.finished = self.end_epoch(epoch, train, valid, seconds, state)
            if state.finished:
                self.log(f"early stopping: no better validation score for {state.epochs_since_best} epochs")
            save_last(self.acc, self.run_dir, state)
            if self._agree([])[0]:
                self.log(f"stop requested: {self.run_dir / 'last'} saved after epoch {epoch + 1}")
                return state
        state.finished = True
        return state


def _undecodable(notes: list[str]) -> list[str]:
    """The notes of images that could not be decoded, not of those too elongated to resize (M1)."""
    return [n for n in notes if TOO_ELONGATED not in n]


def _bad_images_warning(notes: list[str], listed_in: Path) -> str:
    first = notes[0].replace("\t", ": ")
    first = first if len(first) <= 160 else first[:159] + "…"
    bad = len(_undecodable(notes))
    thin = len(notes) - bad
    counts = " and ".join(
        [f"{bad} training image(s) could not be decoded"] * bool(bad)
        + [f"{thin} training image(s) were too elongated to resize"] * bool(thin)
    )
    return f"warning: {counts} this epoch and were skipped (first: {first}); all are listed in {listed_in}"


def _head_spec(cfg: Config) -> HeadSpec:
    return HeadSpec(hidden=list(cfg.model.head.hidden), dropout=cfg.model.head.dropout)


def _summary(epoch: int, epochs: int, row: dict[str, Any], n_valid: int, is_best: bool) -> str:
    return (
        f"epoch {epoch + 1}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}  "
        f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.3f}"
        + (f" macro F1 {row['valid_macro_f1']:.3f}" if "valid_macro_f1" in row else "")  # older last/ rows
        + (f" top5 {row['valid_top5']:.3f}" if "valid_top5" in row else "")
        + " "
        f"(n={n_valid})  lr {row['lr']:.2e}  {row['images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f}s"
        + ("  *best" if is_best else "")
    )
