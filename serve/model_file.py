"""Which model file the user named, torch-free: a bundle (its folder, bundle.json or model.safetensors),
a model.onnx or a model.engine. An export folder is refused with a pointer to the file inside it."""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError

BUNDLE_FILES = ("bundle.json", "model.safetensors")  # core.bundle's RECORD_FILE, WEIGHTS_FILE (tested)
SUFFIXES = {".onnx": "onnx", ".engine": "tensorrt", ".plan": "tensorrt"}


def model_kind(path: str | Path) -> str:
    """torch (a bundle), onnx or tensorrt, from the path alone; a path that names none is a UserError."""
    p = Path(path)
    if p.is_dir() or p.name in BUNDLE_FILES:
        return "torch"
    if p.suffix.lower() in SUFFIXES:
        if not p.is_file():
            raise UserError(f"model file not found: {p}")
        return SUFFIXES[p.suffix.lower()]
    if not p.exists():
        raise UserError(f"model not found: {p} (give a bundle folder, model.onnx or model.engine)")
    raise UserError(
        f"cannot tell what model {p} is; give a bundle folder (runs/<name>/best), "
        "a .onnx file or a .engine file"
    )


def resolve_model(path: str | Path) -> Path:
    """The path serve opens: a bundle's bundle.json or model.safetensors means its folder (as export takes
    it), so a job names the same model however it was given. A folder that is not a bundle but holds
    exported files gets one line naming them: which of model.onnx / model.int8.onnx / model.engine to
    serve is the user's choice (speed against agreement), not something to guess."""
    p = Path(path)
    if p.is_file() and p.name in BUNDLE_FILES:
        p = p.parent
    model_kind(p)
    if p.is_dir() and not (p / BUNDLE_FILES[0]).is_file():
        exported = sorted(f.name for f in p.iterdir() if f.suffix.lower() in SUFFIXES and f.is_file())
        if exported:
            first = "model.onnx" if "model.onnx" in exported else exported[0]
            others = [name for name in exported if name != first]
            also = f" (also here: {', '.join(others)})" if others else ""
            raise UserError(f"{p} is an export folder, not a bundle; use {p / first}{also}")
    return p
