"""EMA of the weights (train.ema_decay): a shadow copy updated after every optimizer step.

Parameters and floating-point buffers (BatchNorm's running mean and variance) move toward the model's by
(1 - decay) each step, as timm's ModelEmaV2 does; integer buffers (num_batches_tracked) are copied. The decay
warms up as min(decay, (1 + t) / (10 + t)) after t updates (timm's ModelEmaV3 warmup, TensorFlow's
num_updates): without it a short run's average stays close to the random initial weights (0.999^500 = 0.61). The
shadow is registered with Accelerate's checkpointing, so last/ holds it and a resume continues it exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEma:
    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """After an optimizer step: shadow ← d·shadow + (1 - d)·model, d the warmed-up decay."""
        d = self.current_decay()
        self.updates += 1
        ours = self.module.state_dict()
        for name, value in model.state_dict().items():
            mine = ours[name]
            if mine.is_floating_point():
                mine.lerp_(value.to(mine.dtype), 1.0 - d)
            else:
                mine.copy_(value)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def facts(self) -> dict[str, Any]:
        """What the bundle lineage records: the weights it holds are this average."""
        return {
            "decay": self.decay,
            "warmup": "min(decay, (1 + t) / (10 + t))",
            "updates": self.updates,
            "buffers": "averaged (BatchNorm statistics)",
        }

    # Accelerate's register_for_checkpointing: saved in last/ as custom_checkpoint_<k>.pkl
    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])
