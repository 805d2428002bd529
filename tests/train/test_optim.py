"""Optimizers and schedules by name; schedules are counted in optimizer steps."""

from __future__ import annotations

import itertools

import pytest
import torch

from core.config import OptimizerConfig, SchedulerConfig
from core.errors import UserError
from train.optim import build_optimizer, build_scheduler


def _lrs(sched_cfg: SchedulerConfig, steps_per_epoch: int, epochs: int, lr: float = 1.0) -> list[float]:
    opt = build_optimizer(
        [torch.nn.Parameter(torch.zeros(1))], OptimizerConfig(name="sgd", lr=lr, momentum=0.0)
    )
    sched = build_scheduler(opt, sched_cfg, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_decays_every_step_size_epochs():
    lrs = _lrs(SchedulerConfig(name="step", step_size=2, gamma=0.1), steps_per_epoch=3, epochs=5)
    assert lrs[:6] == [1.0] * 6 and lrs[6:12] == pytest.approx([0.1] * 6) and lrs[12] == pytest.approx(0.01)


def test_cosine_warms_up_linearly_then_decays_to_min_lr():
    lrs = _lrs(SchedulerConfig(name="cosine", warmup_epochs=1, min_lr=0.1), steps_per_epoch=4, epochs=5)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:])) and lrs[-1] == pytest.approx(0.1, abs=0.02)


def test_onecycle_peaks_at_the_configured_lr():
    lrs = _lrs(SchedulerConfig(name="onecycle"), steps_per_epoch=10, epochs=2, lr=0.5)
    assert max(lrs) == pytest.approx(0.5) and lrs[0] < 0.05 and lrs[-1] < 0.01


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adadelta"])
def test_every_optimizer_name_builds(name):
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimizerConfig(name=name, lr=0.1))
    assert type(opt).__name__.lower() == name


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError, match="valid: sgd, adam, adamw, adadelta"):
        build_optimizer([], OptimizerConfig(name="rmsprop"))
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimizerConfig())
    with pytest.raises(UserError, match="valid: none, step, cosine, onecycle"):
        build_scheduler(opt, SchedulerConfig(name="poly"), 1, 1)
