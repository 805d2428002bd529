"""What a stopped or resumed run tells the user: the command that resumes it, and which config keys
differ from the ones its checkpoint was trained with."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from core.config import HASH_EXEMPT

VALUE_CHARS = 100  # a list-valued key (mean, hidden sizes) can be long: each value is cut to this
RUN_CONFIG = "config.yaml"  # the resolved config every run folder holds (train/run_folder.py writes it)


def resume_line(args: tuple[str, ...], last: Path, processes: int = 1) -> str:
    """How to resume from `last`: the command given, with train.resume set to its path. Several processes
    came from a launcher whose flags this process never saw, so there the line names the override only."""
    resume = f"train.resume={last}"
    if processes > 1:
        return f"to resume, rerun the same accelerate launch line with {shlex.quote(resume)} added"
    kept = [a for a in args if not a.startswith("train.resume=")]
    return f"to resume: {shlex.join(['imgclf-train', *kept, resume])}"


def read_run_config(last: Path | None) -> dict[str, Any] | None:
    """The config a checkpoint's run was trained with (its run folder's config.yaml), or None if unreadable."""
    if last is None:
        return None
    try:
        tree = yaml.safe_load((last.parent / RUN_CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return tree if isinstance(tree, dict) else None


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").strip()
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


_ABSENT = object()


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key old → new` for every key that differs and counts (Config.hash's keys), in config order."""
    a, b = _flat(old), _flat(new)
    keys = list(b) + [k for k in a if k not in b]
    return [
        f"{k} {_short(a.get(k, _ABSENT))} → {_short(b.get(k, _ABSENT))}"
        for k in keys
        if k not in HASH_EXEMPT
        and not k.startswith("calibration.")  # fitted after training: Config.hash leaves it out too
        and a.get(k, _ABSENT) != b.get(k, _ABSENT)
    ]


def config_differs_warning(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    head = "warning: the config differs from the one this checkpoint was trained with"
    changes = config_changes(old, new) if old is not None else []
    return f"{head}: {'; '.join(changes)}" if changes else head
