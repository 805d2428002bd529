"""Model registry and factory: torchvision names, `timm:<name>`, and the CIFAR tutorial's small CNN.

Every built model carries `imgclf_head` (the attribute path of its new classifier head) so the
trainer can freeze everything else and the bundle can say what was replaced.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from core.errors import UserError

HEAD_ATTR = "imgclf_head"


@dataclass
class HeadSpec:
    hidden: list[int] = field(default_factory=list)
    dropout: float = 0.0


class CifarCNN(nn.Module):
    """The CIFAR-10 tutorial's network; adaptive pooling lets it take crops other than 32 px."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fit = nn.AdaptiveAvgPool2d((5, 5))  # identity at 32 px, as in the tutorial
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.fit(self.pool(F.relu(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


LOCAL_MODELS: dict[str, Callable[[], nn.Module]] = {"cifar_cnn": CifarCNN}


def torchvision_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_archs() -> list[str]:
    return sorted(LOCAL_MODELS) + torchvision_names()


def build_head(in_features: int, num_classes: int, spec: HeadSpec) -> nn.Sequential:
    """The DenseNet tutorial's build_classifier: [Linear → ReLU → Dropout] per hidden size, then Linear."""
    head = nn.Sequential()
    width = in_features
    for i, h in enumerate(spec.hidden):
        head.add_module(f"fc{i}", nn.Linear(width, h))
        head.add_module(f"relu{i}", nn.ReLU(inplace=True))
        if spec.dropout:
            head.add_module(f"drop{i}", nn.Dropout(spec.dropout))
        width = h
    if spec.dropout and not spec.hidden:
        head.add_module("drop", nn.Dropout(spec.dropout))
    head.add_module("output", nn.Linear(width, num_classes))
    return head


_MLP_PARTS = (nn.Linear, nn.Dropout, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.Identity)


def _head_slot(model: nn.Module) -> tuple[str, int]:
    """(attribute path of the classifier to replace, its input features) for a torchvision model.

    A classifier made only of Linear/Dropout/activation layers (VGG, AlexNet, MobileNet,
    EfficientNet) is replaced whole, as the VGG tutorial does; one with pooling or norms inside
    (ConvNeXt, MaxViT) keeps them and only its last Linear is replaced.
    """
    for name in ("fc", "classifier", "heads", "head"):
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Linear):
            return name, mod.in_features
        if isinstance(mod, nn.Sequential):
            linears = [(i, m) for i, m in enumerate(mod) if isinstance(m, nn.Linear)]
            if linears and all(isinstance(m, _MLP_PARTS) for m in mod):
                return name, linears[0][1].in_features
            if linears:
                i, last = linears[-1]
                return f"{name}.{i}", last.in_features
    # Fallback: the last Linear anywhere (covers models with unusual attribute names).
    last_name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last_name, last = n, m
    if last is None:
        raise UserError(
            f"cannot find a Linear classifier to replace in {type(model).__name__}; "
            "use a model with a fully connected head"
        )
    return last_name, last.in_features


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


def _unknown_arch(arch: str) -> UserError:
    close = difflib.get_close_matches(arch, available_archs(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else "; see torchvision.models.list_models()"
    return UserError(f"unknown model.arch '{arch}'{hint}")


def _load_state_file(path: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(
            f"model.pretrained: file not found: {p} (use 'imagenet', 'none' or a state-dict path)"
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decode failure is the user's file
        raise UserError(f"model.pretrained: cannot read {p} as a state dict: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"model.pretrained: {p} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _torchvision_base(arch: str, pretrained: str) -> nn.Module:
    kwargs = {}
    if arch in ("inception_v3", "googlenet"):
        kwargs["aux_logits"] = True  # pretrained weights include them; removed below
    if pretrained == "imagenet":
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = torchvision.models.get_model(arch, weights=weights, **kwargs)
        except Exception as exc:  # noqa: BLE001 - download/network failures
            cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
            raise UserError(
                f"could not load imagenet weights for {arch} ({type(exc).__name__}: {exc}); "
                f"when offline, place {os.path.basename(weights.url)} at {cache}, or set "
                "model.pretrained to a local file or none"
            ) from None
    else:
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
        if pretrained != "none":
            state = _load_state_file(pretrained)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise UserError(
                    f"model.pretrained: {pretrained} does not fit {arch}: "
                    f"{str(exc).splitlines()[0]} {str(exc).splitlines()[1:2]}"
                ) from None
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    return model


def _timm_model(name: str, num_classes: int, head: HeadSpec, pretrained: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError(f"model.arch 'timm:{name}' needs timm: pip install '.[timm]'") from None
    if name not in timm.list_models(pretrained=False):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise UserError(
            f"unknown timm model '{name}'" + (f"; close matches: {', '.join(close)}" if close else "")
        )
    try:
        model = timm.create_model(name, pretrained=pretrained == "imagenet", num_classes=0)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"could not create timm:{name} with pretrained={pretrained}: {exc}") from None
    if pretrained not in ("imagenet", "none"):
        model.load_state_dict(_load_state_file(pretrained), strict=False)
    wrapped = nn.Sequential()
    wrapped.add_module("backbone", model)
    wrapped.add_module("head", build_head(model.num_features, num_classes, head))
    setattr(wrapped, HEAD_ATTR, "head")
    return wrapped


def build_model(
    arch: str, num_classes: int, head: HeadSpec | None = None, pretrained: str = "none"
) -> nn.Module:
    """Build `arch` with a fresh `num_classes` head. `pretrained`: 'imagenet', 'none' or a file path."""
    head = head or HeadSpec()
    if num_classes < 1:
        raise UserError(f"need at least 1 class, got {num_classes}")
    if arch.startswith("timm:"):
        return _timm_model(arch[5:], num_classes, head, pretrained)
    if arch in LOCAL_MODELS:
        model = LOCAL_MODELS[arch]()
        if pretrained == "imagenet":
            raise UserError(f"model.arch '{arch}' has no imagenet weights; set model.pretrained: none")
        if pretrained != "none":
            model.load_state_dict(_load_state_file(pretrained), strict=False)
    elif arch in torchvision_names():
        model = _torchvision_base(arch, pretrained)
    else:
        raise _unknown_arch(arch)
    slot, in_features = _head_slot(model)
    _set_submodule(model, slot, build_head(in_features, num_classes, head))
    setattr(model, HEAD_ATTR, slot)
    return model


def head_module(model: nn.Module) -> nn.Module:
    return model.get_submodule(getattr(model, HEAD_ATTR))


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) every parameter outside the head; the head always trains."""
    head_params = {id(p) for p in head_module(model).parameters()}
    for p in model.parameters():
        p.requires_grad_(trainable or id(p) in head_params)


def backbone_frozen_eval(model: nn.Module) -> None:
    """Put frozen backbone modules in eval mode so BatchNorm statistics stay those of the pretrained net."""
    head = head_module(model)
    head_ids = {id(m) for m in head.modules()}
    for m in model.modules():
        frozen_bn = isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in m.parameters(recurse=False)
        )
        if id(m) not in head_ids and frozen_bn:
            m.eval()
