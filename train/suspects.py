"""Images whose folder label the shipped model doubts: suspects.csv and suspects.png in the run folder.

After the test evaluation, the best/ bundle (the one that ships) scores every training and validation
image with the eval transform; images are ranked by the probability it gives their folder's label,
lowest first. A wrong label (a rose filed under tulips) sits near the top: look, move the file, retrain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.bundle import read_record
from core.fsio import atomic_path, write_csv_atomic
from core.pathnames import escape_path
from core.preprocess import eval_transform
from train.data import ImageDataset, TrainData
from train.engine import BEST_DIR
from train.evaluate import EvalResult, evaluate_bundle

SUSPECTS_CSV = "suspects.csv"
SUSPECTS_PNG = "suspects.png"
GRID = 16
COLUMNS = ("path", "split", "given_label", "predicted_label", "prob_given", "prob_predicted")


@dataclass(frozen=True)
class Suspect:
    path: str
    split: str
    given: str
    predicted: str
    prob_given: float
    prob_predicted: float
    index: int  # into the split's data set, to draw the image


def rank(
    probs: np.ndarray,
    targets: np.ndarray,
    indices: np.ndarray,
    names: list[str],
    split: str,
    paths: list[str],
) -> list[Suspect]:
    """One Suspect per scored image, labels as class folder names (any order; `order` sorts them)."""
    pred = probs.argmax(axis=1)
    rows = np.arange(len(targets))
    p_given, p_pred = probs[rows, targets], probs[rows, pred]
    return [
        Suspect(paths[i], split, names[t], names[k], float(pg), float(pp), int(i))
        for i, t, k, pg, pp in zip(indices, targets, pred, p_given, p_pred)
    ]


def order(suspects: list[Suspect]) -> list[Suspect]:
    """Strongest disagreement first: lowest probability of the given label, then most confident other class."""
    return sorted(suspects, key=lambda s: (s.prob_given, -s.prob_predicted, s.path))


def write_csv(suspects: list[Suspect], path: Path) -> None:
    write_csv_atomic(
        path,
        COLUMNS,
        (
            [s.path, s.split, s.given, s.predicted, f"{s.prob_given:.6f}", f"{s.prob_predicted:.6f}"]
            for s in suspects
        ),
    )


def write_grid(
    images: list[torch.Tensor], suspects: list[Suspect], path: Path, display: dict[str, str], cols: int = 4
) -> Figure:
    """Top suspects: each image titled with its folder label and the model's prediction (display names)."""
    rows = max(1, -(-len(images) // cols))
    fig = Figure(figsize=(2.6 * cols, 3.1 * rows), layout="constrained")
    for i, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        ax.set_axis_off()
        if i >= len(images):
            continue
        s = suspects[i]
        # escaped: a non-UTF-8 folder name has no glyphs (matplotlib refuses lone surrogates)
        given = escape_path(display.get(s.given, s.given))[:18]
        pred = escape_path(display.get(s.predicted, s.predicted))[:18]
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.set_title(
            f"#{i + 1} {escape_path(Path(s.path).name)[:24]}\nlabel: {given} ({s.prob_given:.2f})\n"
            f"model: {pred} ({s.prob_predicted:.2f})",
            fontsize=8,
            color="#cf222e" if s.given != s.predicted else "#24292f",
        )
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return fig


def write_suspects(
    cfg, data: TrainData, run_dir: Path, accelerator: Accelerator, valid: EvalResult | None = None
) -> Path | None:
    """Collective (every process calls it): score train + valid with best/, write the files on the main
    process. `valid`: best/ already scored on data.valid (train.calibrate.score_valid), the same view
    when the bundle's preprocessing is the config's, so that pass is not run twice."""
    if not (run_dir / BEST_DIR).is_dir() or not hasattr(data.train.source, "paths"):
        return None  # no bundle, or CIFAR-10 (no files to move)
    record = read_record(run_dir / BEST_DIR)
    transform = eval_transform(record.preprocess)
    same_view = record.preprocess.to_dict() == cfg.preprocess.spec().to_dict()
    found, sets = [], {}
    for split, ds in (("train", data.train), ("valid", data.valid)):
        sets[split] = ImageDataset(ds.source, transform, ds.seed)  # the eval view: no augmentation
        if split == "valid" and valid is not None and same_view:
            result = valid
        else:
            result, _ = evaluate_bundle(cfg, sets[split], run_dir / BEST_DIR, accelerator)
        if accelerator.is_main_process and result.probs is not None:
            found += rank(
                result.probs, result.targets, result.indices, record.classes, split, ds.source.paths
            )
    if not accelerator.is_main_process:
        return None
    ranked = order(found)
    write_csv(ranked, run_dir / SUSPECTS_CSV)
    top = ranked[:GRID]
    display = dict(zip(record.classes, record.display_names))
    write_grid([sets[s.split][s.index][0] for s in top], top, run_dir / SUSPECTS_PNG, display)
    return run_dir / SUSPECTS_CSV
